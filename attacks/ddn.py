"""DDN: decoupled direction and norm (Rony et al., CVPR 2019, arXiv:1811.09600).

Threat model: white-box, gradient access; a minimization attack in the L2 norm.
Source library: Foolbox 3 (``foolbox.attacks.DDNAttack``), run unbounded (``epsilons=None``);
the runner measures and verifies the returned norms.

Parameters (paper values in brackets): ``steps`` (100 for MNIST/CIFAR-10 in the paper's main
tables; 1,000 for its strongest runs), ``init_epsilon`` starting norm (1.0), ``gamma`` the
factor by which the norm grows or shrinks each step (0.05), ``eot`` (mean logits over ``eot``
passes for randomized defenses).

Differences from the reference code: none in the algorithm; points the attack never made
adversarial come back as the clean input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustbench_er.plugin import (
    AttackParams,
    DefendedModel,
    MinimizationAttack,
    UserInputError,
    register_attack,
    run_foolbox_minimization,
)


@dataclass
class DDNParams(AttackParams):
    steps: int = 100
    init_epsilon: float = 1.0
    gamma: float = 0.05


@register_attack("ddn")
class DDN(MinimizationAttack):
    """DDN (Foolbox): L2 minimization attack."""

    norms = ("L2",)
    access = "gradient"
    effort_params = ("steps",)
    Params = DDNParams

    def validate(self) -> None:
        p = self.params
        if p.steps < 1:
            raise UserInputError(f"DDN needs at least one step; got {p.steps}.")
        if p.init_epsilon <= 0 or not 0 < p.gamma < 1:
            raise UserInputError("DDN init_epsilon must be > 0 and gamma in (0, 1).")

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, *,
            generator: torch.Generator | None = None) -> torch.Tensor:
        import foolbox as fb

        p = self.params
        attack = fb.attacks.DDNAttack(init_epsilon=p.init_epsilon, steps=p.steps, gamma=p.gamma)
        return run_foolbox_minimization(attack, model, x, y, eot=p.eot, generator=generator)
