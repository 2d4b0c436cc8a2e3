"""MIM: the momentum iterative method, MI-FGSM (Dong et al., CVPR 2018, arXiv:1710.06081).

Threat model: white-box, gradient access, fixed epsilon, Linf (torchattacks implements MI-FGSM
for Linf only). Iterative sign steps on an accumulated, L1-normalised gradient momentum.
Source library: torchattacks (``torchattacks.MIFGSM``).

Parameters (paper values in brackets): ``steps`` (10), ``decay`` momentum factor mu (1.0),
``rel_stepsize`` step alpha as a fraction of eps (1/steps: the paper's alpha = eps / T; 0 here
means 1/steps), ``eot`` (for randomized defenses the gradient is taken through the mean logits
over ``eot`` passes, the usual EOT approximation).

Differences from the reference code: torchattacks takes one scalar epsilon; a per-sample
epsilon tensor is split into groups of equal epsilon (a sweep step has one group). The
result is projected onto the ball and [0, 1] once more to remove float drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robustbench_er.plugin import (
    AttackParams,
    DefendedModel,
    FixedEpsilonAttack,
    LibraryModel,
    UserInputError,
    register_attack,
    run_torchattacks,
)


@dataclass
class MIMParams(AttackParams):
    steps: int = 10
    decay: float = 1.0
    rel_stepsize: float = 0.0  # 0 = 1 / steps


@register_attack("mim")
class MIM(FixedEpsilonAttack):
    """MI-FGSM (torchattacks): momentum iterative Linf attack at a fixed epsilon."""

    norms = ("Linf",)
    access = "gradient"
    effort_params = ("steps",)
    Params = MIMParams

    def validate(self) -> None:
        p = self.params
        if p.steps < 1:
            raise UserInputError(f"MIM needs at least one step; got {p.steps}.")
        if p.decay < 0 or p.rel_stepsize < 0:
            raise UserInputError("MIM decay and rel_stepsize must be >= 0.")

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, *,
            generator: torch.Generator | None = None, x_init: torch.Tensor | None = None) -> torch.Tensor:
        import torchattacks

        p = self.params
        rel = p.rel_stepsize or 1.0 / p.steps

        def make(lm: LibraryModel, e: float, seed: int) -> Any:
            return torchattacks.MIFGSM(lm, eps=e, alpha=rel * e, steps=p.steps, decay=p.decay)

        x_adv, _ = run_torchattacks(make, model, x, y, eps, self.norm, eot=p.eot, generator=generator)
        return x_adv
