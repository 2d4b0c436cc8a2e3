"""PGD: projected gradient descent with random start (Madry et al., ICLR 2018, arXiv:1706.06083).

Threat model: white-box, gradient access; Linf and L2 balls (L1 comes from Foolbox's L1PGD).
Parameters (paper values for MNIST: eps 0.3, 40 steps, step 0.01 = eps/30, uniform random start):

* ``steps`` (40), ``rel_stepsize`` (step = rel_stepsize * eps; default 2.5/steps, the rule from
  Madry et al.'s appendix that lets the iterate cross the ball in 40% of the steps),
  ``random_start`` (True), ``loss`` (``ce`` or ``margin``, the CW margin loss), ``eot`` (gradient
  averaged over n passes for randomized defenses).

Written here rather than taken from Foolbox or torchattacks because the sweep needs what they
lack: a per-sample epsilon tensor, per-sample early stop (a point leaves the batch once it is
misclassified, so the work shrinks as points break) and a warm start from the example found at
the previous epsilon of the grid. Early stop is off for randomized defenses (a single stochastic
pass is not a verdict; the runner's majority vote is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustbench_er.attack import Attack, AttackParams, clip_to_ball
from robustbench_er.defense import DefendedModel
from robustbench_er.errors import UserInputError
from robustbench_er.registry import register_attack


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CW margin: max other logit minus the true logit (higher = more adversarial)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.amax(1) - true


def _random_start(x: torch.Tensor, eps: torch.Tensor, norm: str, gen: torch.Generator | None) -> torch.Tensor:
    e = eps.view(-1, *([1] * (x.ndim - 1)))
    if norm == "Linf":
        noise = (torch.rand(x.shape, generator=gen, device="cpu").to(x) * 2 - 1) * e
    else:
        d = torch.randn(x.shape, generator=gen, device="cpu").to(x)
        d = d / d.reshape(len(x), -1).norm(dim=1).clamp_min(1e-12).view_as(e)
        r = torch.rand(len(x), generator=gen, device="cpu").to(x).view_as(e)
        noise = d * e * r
    return (x + noise).clamp(0, 1)


def pgd(model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor | float, *,
        norm: str = "Linf", steps: int = 40, rel_stepsize: float | None = None,
        random_start: bool = True, early_stop: bool = True, loss: str = "ce", eot: int = 1,
        x_init: torch.Tensor | None = None, generator: torch.Generator | None = None,
        targeted: bool = False) -> torch.Tensor:
    """Untargeted PGD on a batch; returns the adversarial batch (same shape as ``x``).

    ``eps`` is a float or a per-sample tensor. With ``early_stop`` a point leaves the active set
    as soon as a forward pass misclassifies it, and that iterate is returned for it.
    """
    if norm not in ("Linf", "L2"):
        raise UserInputError(f"Our PGD supports Linf and L2, not {norm}; use 'pgd-l1' (Foolbox) for L1.")
    n = len(x)
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(n).clone() if not torch.is_tensor(eps) or eps.ndim == 0 else eps.to(x)
    alpha = eps_t * (rel_stepsize if rel_stepsize is not None else 2.5 / max(steps, 1))
    if x_init is not None:
        x_adv = clip_to_ball(x, x_init.to(x), eps_t, norm)
    elif random_start:
        x_adv = clip_to_ball(x, _random_start(x, eps_t, norm, generator), eps_t, norm)
    else:
        x_adv = x.clone()
    randomized = bool(getattr(model, "randomized", False))
    early = early_stop and not randomized
    active = torch.arange(n, device=x.device)
    sign = -1.0 if targeted else 1.0
    view = (-1,) + (1,) * (x.ndim - 1)
    for _ in range(steps):
        if len(active) == 0:
            break
        xa = x_adv[active].detach().requires_grad_(True)
        ya = y[active]
        grad = torch.zeros_like(xa)
        for _k in range(max(1, eot)):
            logits = model.predict(xa)
            per = F.cross_entropy(logits, ya, reduction="none") if loss == "ce" else margin_loss(logits, ya)
            g, = torch.autograd.grad(per.sum() * sign, xa)
            grad += g
        if early:
            broken = (logits.argmax(1) != ya) if not targeted else (logits.argmax(1) == ya)
            if bool(broken.any()):
                keep = ~broken
                active, xa, grad = active[keep], xa[keep], grad[keep]
                if len(active) == 0:
                    break
        a = alpha[active].view(view)
        if norm == "Linf":
            step = a * grad.sign()
        else:
            gn = grad.reshape(len(grad), -1).norm(dim=1).clamp_min(1e-12).view(view)
            step = a * grad / gn
        x_adv[active] = clip_to_ball(x[active], xa.detach() + step, eps_t[active], norm)
    return x_adv.detach()


@dataclass
class PGDParams(AttackParams):
    steps: int = 40
    rel_stepsize: float = 0.0  # 0 = 2.5 / steps
    random_start: bool = True
    early_stop: bool = True
    loss: str = "ce"


@register_attack("pgd")
class PGD(Attack):
    """PGD (ours): per-sample epsilon, early stop, warm start. Linf and L2."""

    norms = ("Linf", "L2")
    kind = "fixed"
    access = "gradient"
    Params = PGDParams
    warm_start = True

    def validate(self) -> None:
        p = self.params
        if p.steps < 1:
            raise UserInputError(f"PGD needs at least one step; got {p.steps}.")
        if p.rel_stepsize < 0:
            raise UserInputError("PGD rel_stepsize must be >= 0 (0 = 2.5/steps).")
        if p.loss not in ("ce", "margin"):
            raise UserInputError(f"PGD loss must be 'ce' or 'margin', not {p.loss!r}.")

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
            x_init: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.params
        return pgd(model, x, y, eps, norm=self.norm, steps=p.steps, rel_stepsize=p.rel_stepsize or None,
                   random_start=p.random_start, early_stop=p.early_stop, loss=p.loss, eot=p.eot,
                   x_init=x_init, generator=generator)
