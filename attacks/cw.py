"""C&W L2: the Carlini-Wagner attack (Carlini & Wagner, IEEE S&P 2017, arXiv:1608.04644).

Threat model: white-box, gradient access; a minimization attack in the L2 norm (the smallest
adversarial example it finds; one run gives the whole accuracy-vs-epsilon curve).
Source library: Foolbox 3 (``foolbox.attacks.L2CarliniWagnerAttack``), run with
``epsilons=None`` so the raw, unbounded adversarial examples come back; the runner measures
and verifies their norms.

Parameters (paper values in brackets):

* ``confidence`` kappa, the logit margin the example must reach (0; must be >= 0),
* ``steps`` Adam steps per constant (paper up to 10,000; default 1,000 with early abort, which
  on small models reaches the same optimum far sooner),
* ``binary_search_steps`` on the trade-off constant c (9), ``initial_const`` (1e-3),
  ``stepsize`` Adam learning rate (1e-2),
* ``eot``: for randomized defenses the model is seen through mean logits over ``eot`` passes.

Differences from the reference code: Foolbox returns an all-zero image for a point it never
made adversarial; this adapter returns the clean input there instead (so a failure is simply
not an adversarial example, rather than a perturbation nobody searched for).
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
class CWParams(AttackParams):
    confidence: float = 0.0
    steps: int = 1000
    binary_search_steps: int = 9
    initial_const: float = 1e-3
    stepsize: float = 1e-2


@register_attack("cw")
class CarliniWagnerL2(MinimizationAttack):
    """C&W L2 (Foolbox): minimization attack; returns the smallest adversarial example found."""

    norms = ("L2",)
    access = "gradient"
    effort_params = ("steps",)
    Params = CWParams

    def validate(self) -> None:
        p = self.params
        if p.confidence < 0:
            raise UserInputError(f"C&W confidence (kappa) must be >= 0; got {p.confidence}.")
        if p.steps < 1 or p.binary_search_steps < 1:
            raise UserInputError("C&W steps and binary_search_steps must be at least 1.")
        if p.initial_const <= 0 or p.stepsize <= 0:
            raise UserInputError("C&W initial_const and stepsize must be > 0.")

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, *,
            generator: torch.Generator | None = None) -> torch.Tensor:
        import foolbox as fb

        p = self.params
        attack = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=p.binary_search_steps, steps=p.steps,
                                                  stepsize=p.stepsize, confidence=p.confidence,
                                                  initial_const=p.initial_const, abort_early=True)
        return run_foolbox_minimization(attack, model, x, y, eot=p.eot, generator=generator)
