"""FGSM: the fast gradient sign method (Goodfellow et al., ICLR 2015, arXiv:1412.6572).

Threat model: white-box, one gradient step; Linf (sign step of size eps) and L2 (a step of
length eps along the normalised gradient, the "fast gradient method"). No random start.
Parameters: ``eot`` for randomized defenses. Ours: it is the one-step case of :func:`robustbench_er.models.pgd.pgd`
(no random start, relative step 1.0), so it shares PGD's per-sample epsilon.
"""

from __future__ import annotations

import torch

from robustbench_er.plugin import (
    AttackParams,
    DefendedModel,
    FixedEpsilonAttack,
    pgd,
    register_attack,
)


@register_attack("fgsm")
class FGSM(FixedEpsilonAttack):
    """FGSM / FGM (ours): one step of size eps, per-sample epsilon."""

    norms = ("Linf", "L2")
    access = "gradient"
    single_step = True
    Params = AttackParams

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, *,
            generator: torch.Generator | None = None, x_init: torch.Tensor | None = None) -> torch.Tensor:
        return pgd(model, x, y, eps, norm=self.norm, steps=1, rel_stepsize=1.0, random_start=False,
                   early_stop=False, eot=self.params.eot)
