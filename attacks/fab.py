"""FAB: the fast adaptive boundary attack (Croce & Hein, ICML 2020, arXiv:1907.02044).

Threat model: white-box, gradient access, fixed epsilon (FAB minimises the norm and the
point counts when the found example lies within eps); Linf, L2 and L1.
Source library: torchattacks (``torchattacks.FAB``) for Linf and L2; for L1 the official code in
pyautoattack (``pyautoattack.fab_pt.FABAttack_PT``), because torchattacks 3.5.1 fails on L1
(its restart loop never measures the L1 norm and raises ``UnboundLocalError``). The two share
the same algorithm and parameters.

Parameters (paper values in brackets): ``steps`` (100), ``n_restarts`` (1 in AutoAttack; the
paper reports up to 100), ``alpha_max`` (0.1), ``eta`` overshoot (1.05), ``beta`` backward step
(0.9), ``targeted`` run FAB-T over every other class as in AutoAttack (False = untargeted FAB),
``eot`` (for randomized defenses the gradient is taken through the mean logits over ``eot``
passes).

Differences from the reference code: torchattacks takes one scalar epsilon; a per-sample
epsilon tensor is split into groups of equal epsilon (a sweep step has one group). The number
of classes comes from the model; its seed is drawn from the runner's generator.
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
class FABParams(AttackParams):
    steps: int = 100
    n_restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    targeted: bool = False


@register_attack("fab")
class FAB(FixedEpsilonAttack):
    """FAB / FAB-T (torchattacks): Linf, L2, L1 at a fixed epsilon."""

    norms = ("Linf", "L2", "L1")
    access = "gradient"
    Params = FABParams

    def validate(self) -> None:
        p = self.params
        if p.steps < 1 or p.n_restarts < 1:
            raise UserInputError("FAB steps and n_restarts must be at least 1.")
        if not 0 < p.alpha_max <= 1 or p.eta < 1 or not 0 < p.beta <= 1:
            raise UserInputError("FAB needs alpha_max in (0, 1], eta >= 1 and beta in (0, 1].")

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, *,
            generator: torch.Generator | None = None, x_init: torch.Tensor | None = None) -> torch.Tensor:
        import torchattacks

        p = self.params
        classes = int(getattr(model, "classes", 10))

        def make(lm: LibraryModel, e: float, seed: int) -> Any:
            if self.norm == "L1":
                from pyautoattack.fab_pt import FABAttack_PT

                fab = FABAttack_PT(lm, norm="L1", n_restarts=p.n_restarts, n_iter=p.steps, eps=e,
                                   alpha_max=p.alpha_max, eta=p.eta, beta=p.beta, verbose=False, seed=seed,
                                   targeted=p.targeted, device=x.device, n_target_classes=classes - 1)
                return fab.perturb
            return torchattacks.FAB(lm, norm=self.norm, eps=e, steps=p.steps, n_restarts=p.n_restarts,
                                    alpha_max=p.alpha_max, eta=p.eta, beta=p.beta, verbose=False, seed=seed,
                                    multi_targeted=p.targeted, n_classes=classes)

        x_adv, _ = run_torchattacks(make, model, x, y, eps, self.norm, eot=p.eot, generator=generator)
        return x_adv
