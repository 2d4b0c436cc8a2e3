"""PGD: projected gradient descent with random start (Madry et al., ICLR 2018, arXiv:1706.06083).

Threat model: white-box, gradient access; Linf, L2 and L1 balls.
Parameters (paper values for MNIST: eps 0.3, 40 steps, step 0.01 = eps/30, uniform random start):

* ``steps`` (40), ``rel_stepsize`` (step = rel_stepsize * eps; default 2.5/steps, the rule from
  Madry et al.'s appendix that lets the iterate cross the ball in 40% of the steps),
  ``random_start`` (True), ``loss`` (``ce``; ``margin``, the CW margin loss; ``log_margin``, the
  margin of the logarithms of outputs that are probabilities), ``eot`` (gradient averaged over n
  passes for randomized defenses).

Remedies (``robustbench_er.engine.escalate``): PGD with the margin loss on log-probabilities is
the remedy for the ``probabilities`` flag (a softmax output saturates the cross-entropy); an
escalation that asks for more effort doubles ``steps``.

L1 (not in Madry et al.): sparse L1 steps and the L1-ball projection; see :mod:`robustbench_er.models.pgd`,
where the routine lives (adversarial training and ``fgsm`` call it too).

Written here rather than taken from Foolbox or torchattacks because the sweep needs what they
lack: a per-sample epsilon tensor, per-sample early stop (a point leaves the batch once it is
misclassified, so the work shrinks as points break) and a warm start from the example found at
the previous epsilon of the grid. Early stop is off for randomized defenses (a single stochastic
pass is not a verdict; the runner's majority vote is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustbench_er.plugin import (
    AttackParams,
    DefendedModel,
    FixedEpsilonAttack,
    UserInputError,
    pgd,
    register_attack,
)

#: the losses PGD ascends
LOSSES = ("ce", "margin", "log_margin")


@dataclass
class PGDParams(AttackParams):
    steps: int = 40
    rel_stepsize: float = 0.0  # 0 = 2.5 / steps
    random_start: bool = True
    early_stop: bool = True
    loss: str = "ce"


@register_attack("pgd")
class PGD(FixedEpsilonAttack):
    """PGD (ours): per-sample epsilon, early stop, warm start. Linf, L2 and L1 (sparse L1 steps)."""

    norms = ("Linf", "L2", "L1")
    access = "gradient"
    Params = PGDParams
    warm_start = True
    remedies = {"probabilities": {"loss": "log_margin"}}
    effort_params = ("steps",)

    def validate(self) -> None:
        p = self.params
        if p.steps < 1:
            raise UserInputError(f"PGD needs at least one step; got {p.steps}.")
        if p.rel_stepsize < 0:
            raise UserInputError("PGD rel_stepsize must be >= 0 (0 = 2.5/steps).")
        if p.loss not in LOSSES:
            raise UserInputError(f"PGD loss must be one of {', '.join(repr(v) for v in LOSSES)}, not {p.loss!r}.")

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, *,
            generator: torch.Generator | None = None, x_init: torch.Tensor | None = None) -> torch.Tensor:
        p = self.params
        return pgd(model, x, y, eps, norm=self.norm, steps=p.steps, rel_stepsize=p.rel_stepsize or None,
                   random_start=p.random_start, early_stop=p.early_stop, loss=p.loss, eot=p.eot,
                   x_init=x_init, generator=generator)
