"""The PGD routine: one implementation shared by the ``pgd`` and ``fgsm`` attack plugins and by
adversarial training (:func:`robustbench_er.models.training.adversarial_batch`).

Projected gradient descent with random start (Madry et al., ICLR 2018, arXiv:1706.06083) on
Linf, L2 and L1 balls, with a per-sample epsilon tensor, per-sample early stop and a warm start.

L1 (not in Madry et al.): each step is a sparse L1 descent step in the style of SLIDE (Tramer &
Boneh, NeurIPS 2019, arXiv:1904.13000) and Foolbox's L1 attacks: the sign of the gradient on the
coordinates whose |gradient| is in the top ``1 - L1_QUANTILE`` share (at least one coordinate;
coordinates already at a box face the gradient pushes outwards are skipped), scaled to L1 length
``rel_stepsize * eps``; then the Euclidean projection onto the L1 ball (the sort-based simplex
projection of Duchi et al., ICML 2008) and a clamp to [0, 1] (which keeps the point inside the
ball). The random start draws a direction uniformly on the L1 sphere scaled by a uniform radius.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.norms import clip_to_ball
from robustbench_er.models.defended import DefendedModel


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CW margin: max other logit minus the true logit (higher = more adversarial)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.amax(1) - true


#: sparse L1 steps move the coordinates above this quantile of |gradient| (SLIDE's default 99%)
L1_QUANTILE = 0.99


def project_l1(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each sample of ``delta`` onto the L1 ball of radius ``eps`` (per sample).

    Sort-based simplex projection (Duchi et al., 2008): points already inside are unchanged.
    """
    n = len(delta)
    flat = delta.reshape(n, -1)
    e = eps.reshape(n).to(flat)
    a = flat.abs()
    inside = a.sum(1) <= e
    u, _ = a.sort(dim=1, descending=True)
    css = u.cumsum(1) - e[:, None]
    k = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cond = u - css / k > 0
    rho = (cond.sum(1, keepdim=True) - 1).clamp_min(0)  # cond holds on a prefix: its last index
    theta = (css.gather(1, rho) / (rho + 1).to(flat.dtype)).clamp_min(0)
    proj = flat.sign() * (a - theta).clamp_min(0)
    out = torch.where(inside[:, None], flat, proj)
    return out.view_as(delta)


def _project(x: torch.Tensor, x_adv: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "L1":
        return (x + project_l1(x_adv - x, eps)).clamp(0, 1)
    return clip_to_ball(x, x_adv, eps, norm)


def _l1_step(grad: torch.Tensor, xa: torch.Tensor, alpha: torch.Tensor, quantile: float) -> torch.Tensor:
    """A sparse L1 step of L1 length ``alpha`` along the largest gradient coordinates."""
    n = len(grad)
    g = grad.reshape(n, -1).clone()
    xf = xa.reshape(n, -1)
    g[((xf <= 0) & (g < 0)) | ((xf >= 1) & (g > 0))] = 0  # would only push out of [0, 1]
    d = g.shape[1]
    k = max(1, int(round((1 - quantile) * d)))
    top = g.abs().topk(k, dim=1)
    e = torch.zeros_like(g).scatter_(1, top.indices, 1.0) * g.sign()
    e = e / e.abs().sum(1, keepdim=True).clamp_min(1e-12)
    return (e * alpha.reshape(n, 1)).view_as(grad)


def _random_start(x: torch.Tensor, eps: torch.Tensor, norm: str, gen: torch.Generator | None) -> torch.Tensor:
    e = eps.view(-1, *([1] * (x.ndim - 1)))
    if norm == "L1":
        d = -torch.log(torch.rand(x.shape, generator=gen, device="cpu").clamp_min(1e-12)).to(x)  # Exp(1)
        d = d * (torch.randint(0, 2, x.shape, generator=gen, device="cpu").to(x) * 2 - 1)  # Laplace
        d = d / d.reshape(len(x), -1).abs().sum(1).clamp_min(1e-12).view_as(e)
        r = torch.rand(len(x), generator=gen, device="cpu").to(x).view_as(e)
        return (x + d * e * r).clamp(0, 1)
    if norm == "Linf":
        noise = (torch.rand(x.shape, generator=gen, device="cpu").to(x) * 2 - 1) * e
    else:
        d = torch.randn(x.shape, generator=gen, device="cpu").to(x)
        d = d / d.reshape(len(x), -1).norm(dim=1).clamp_min(1e-12).view_as(e)
        r = torch.rand(len(x), generator=gen, device="cpu").to(x).view_as(e)
        noise = d * e * r
    return (x + noise).clamp(0, 1)


def _first_iterate(x: torch.Tensor, eps_t: torch.Tensor, norm: str, x_init: torch.Tensor | None,
                   random_start: bool, generator: torch.Generator | None) -> torch.Tensor:
    """PGD's starting point: the warm start projected, a random start, or ``x`` itself."""
    if x_init is not None:
        return _project(x, x_init.to(x), eps_t, norm)
    if random_start:
        return _project(x, _random_start(x, eps_t, norm, generator), eps_t, norm)
    return x.clone()


def _pgd_step(xa: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor, ec: torch.Tensor, ac: torch.Tensor,
              lo: torch.Tensor, hi: torch.Tensor, norm: str, view: tuple[int, ...]) -> torch.Tensor:
    """One PGD step of size ``ac`` along ``grad`` in ``norm``, back into the ball and the box."""
    if norm == "Linf":
        return torch.clamp(xa + ac * grad.sign(), lo, hi)
    if norm == "L2":
        gn = grad.reshape(len(grad), -1).norm(dim=1).clamp_min(1e-12).view(view)
        return _project(x0, xa + ac * grad / gn, ec, norm)
    return _project(x0, xa + _l1_step(grad, xa, ac, L1_QUANTILE), ec, norm)


def pgd(model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor | float, *,
        norm: str = "Linf", steps: int = 40, rel_stepsize: float | None = None,
        random_start: bool = True, early_stop: bool = True, loss: str = "ce", eot: int = 1,
        x_init: torch.Tensor | None = None, generator: torch.Generator | None = None,
        targeted: bool = False) -> torch.Tensor:
    """Untargeted PGD on a batch; returns the adversarial batch (same shape as ``x``).

    ``eps`` is a float or a per-sample tensor. With ``early_stop`` a point leaves the active set
    as soon as a forward pass misclassifies it, and that iterate is returned for it.
    """
    if norm not in ("Linf", "L2", "L1"):
        raise UserInputError(f"PGD supports the Linf, L2 and L1 norms, not {norm}.")
    n = len(x)
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(n).clone() if not torch.is_tensor(eps) or eps.ndim == 0 else eps.to(x)
    alpha = eps_t * (rel_stepsize if rel_stepsize is not None else 2.5 / max(steps, 1))
    x_adv = _first_iterate(x, eps_t, norm, x_init, random_start, generator)
    randomized = bool(getattr(model, "randomized", False))
    early = early_stop and not randomized
    sign = -1.0 if targeted else 1.0
    view = (-1,) + (1,) * (x.ndim - 1)
    # Compacted state of the points still attacked: gathered once, and again only when points
    # break, so a step costs what a plain PGD step costs (no per-step gather/scatter).
    out = x_adv.detach().clone()
    idx = torch.arange(n, device=x.device)
    xc, x0, yc, ec, ac = x_adv.detach(), x, y, eps_t, alpha.view(view)
    lo, hi = x0, x0
    if norm == "Linf":  # the ball and the box intersected once: one clamp per step
        lo, hi = (x0 - ec.view(view)).clamp_min(0), (x0 + ec.view(view)).clamp_max(1)

    def loss_grad(xa: torch.Tensor, yc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model.predict(xa)
        per = (F.cross_entropy(logits, yc, reduction="none") if loss == "ce" else
               margin_loss(torch.log(logits.clamp_min(1e-30)), yc) if loss == "log_margin" else margin_loss(logits, yc))
        (g,) = torch.autograd.grad(per.sum() * sign, xa)
        return logits, g

    for _ in range(steps):
        if len(idx) == 0:
            break
        xa = xc.requires_grad_(True)
        logits, grad = loss_grad(xa, yc)
        for _k in range(max(1, eot) - 1):  # EOT: sum of the gradients of eot passes
            logits, g = loss_grad(xa, yc)
            grad = grad + g
        xa = xa.detach()
        if early:
            pred = logits.detach().argmax(1)
            broken = (pred != yc) if not targeted else (pred == yc)
            if bool(broken.any()):
                out[idx[broken]] = xa[broken]
                keep = ~broken
                idx, xa, grad, x0, yc, ec, ac = idx[keep], xa[keep], grad[keep], x0[keep], yc[keep], ec[keep], ac[keep]
                if norm == "Linf":
                    lo, hi = lo[keep], hi[keep]
                if len(idx) == 0:
                    break
        xc = _pgd_step(xa, grad, x0, ec, ac, lo, hi, norm, view)
    if len(idx):
        out[idx] = xc.detach()
    return out
