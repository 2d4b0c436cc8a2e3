"""DeepFool (Moosavi-Dezfooli et al., CVPR 2016, arXiv:1511.04599).

Threat model: white-box, gradient access; a minimization attack in the Linf or L2 norm (it
linearises the classifier and steps to the nearest linearised decision boundary).
Source library: Foolbox 3 (``LinfDeepFoolAttack`` / ``L2DeepFoolAttack``), run unbounded
(``epsilons=None``); the runner measures and verifies the returned norms.

Parameters (paper values in brackets): ``steps`` maximum iterations (50; the paper's runs
converge in under 5), ``overshoot`` (0.02), ``candidates`` the number of top classes
considered (10 = all classes of MNIST/CIFAR-10; the paper uses all, Foolbox's default is 10),
``loss`` ``logits`` (paper) or ``crossentropy``, ``eot`` (mean logits over ``eot`` passes for
randomized defenses).

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
class DeepFoolParams(AttackParams):
    steps: int = 50
    overshoot: float = 0.02
    candidates: int = 10
    loss: str = "logits"


@register_attack("deepfool")
class DeepFool(MinimizationAttack):
    """DeepFool (Foolbox): Linf or L2 minimization attack."""

    norms = ("Linf", "L2")
    access = "gradient"
    Params = DeepFoolParams

    def validate(self) -> None:
        p = self.params
        if p.steps < 1:
            raise UserInputError(f"DeepFool needs at least one step; got {p.steps}.")
        if p.overshoot < 0:
            raise UserInputError(f"DeepFool overshoot must be >= 0; got {p.overshoot}.")
        if p.candidates < 2:
            raise UserInputError(f"DeepFool candidates must be at least 2 (the true class and one other); got {p.candidates}.")
        if p.loss not in ("logits", "crossentropy"):
            raise UserInputError(f"DeepFool loss must be 'logits' or 'crossentropy', not {p.loss!r}.")

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, *,
            generator: torch.Generator | None = None) -> torch.Tensor:
        import foolbox as fb

        p = self.params
        classes = int(getattr(model, "classes", p.candidates))
        cls = fb.attacks.LinfDeepFoolAttack if self.norm == "Linf" else fb.attacks.L2DeepFoolAttack
        attack = cls(steps=p.steps, candidates=min(p.candidates, classes), overshoot=p.overshoot, loss=p.loss)
        return run_foolbox_minimization(attack, model, x, y, eot=p.eot, generator=generator)
