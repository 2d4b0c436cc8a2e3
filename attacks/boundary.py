"""Boundary attack (Brendel, Rauber & Bethge, ICLR 2018, arXiv:1712.04248).

Threat model: black-box, decision-based (labels only; no gradients, no scores); a minimization
attack in the L2 norm. It starts from an adversarial point (uniform noise blended towards the
input by a line search) and walks along the decision boundary towards the input.
Source library: Foolbox 3 (``foolbox.attacks.BoundaryAttack``, initialised with
``LinearSearchBlendedUniformNoiseAttack``), run unbounded; the runner verifies the norms.

Parameters (paper values in brackets): ``steps`` (the paper runs until convergence, up to
hundreds of thousands of queries; Foolbox's default is 25,000; our default 5,000 is a CPU-sized
budget: the curve is an upper bound on robustness that tightens with more steps),
``spherical_step`` (0.01), ``source_step`` (0.01), ``step_adaptation`` (1.5),
``init_directions`` random noise draws tried for the start (1,000), ``eot``: for randomized
defenses each query is a majority vote over ``eot`` passes (the base class requires eot >= 2).

``queries`` counts images sent to the defended model (each EOT pass counted).

Differences from the reference code: Foolbox raises when the noise initialisation fails for
any point of the batch; here such points are left out of the walk and come back unchanged
(not adversarial), and the others are attacked as usual.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch

from robustbench_er.plugin import (
    AttackParams,
    DefendedModel,
    LibraryModel,
    MinimizationAttack,
    UserInputError,
    draw_seed,
    register_attack,
    run_foolbox_minimization,
    seeded,
)

log = logging.getLogger(__name__)


@dataclass
class BoundaryParams(AttackParams):
    steps: int = 5000
    spherical_step: float = 1e-2
    source_step: float = 1e-2
    step_adaptation: float = 1.5
    init_directions: int = 1000


@register_attack("boundary")
class Boundary(MinimizationAttack):
    """Boundary attack (Foolbox): decision-based L2 minimization attack."""

    norms = ("L2",)
    access = "decision"
    Params = BoundaryParams

    def validate(self) -> None:
        p = self.params
        if p.steps < 1:
            raise UserInputError(f"The Boundary attack's query budget (steps) must be at least 1; got {p.steps}.")
        if p.init_directions < 1:
            raise UserInputError(f"Boundary init_directions must be at least 1; got {p.init_directions}.")
        if p.spherical_step <= 0 or p.source_step <= 0 or p.step_adaptation <= 1:
            raise UserInputError("Boundary spherical_step and source_step must be > 0 and step_adaptation > 1.")

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, *,
            generator: torch.Generator | None = None) -> torch.Tensor:
        import foolbox as fb

        p = self.params
        lm = LibraryModel(model, p.eot, mode="vote").eval()
        fmodel = fb.PyTorchModel(lm, bounds=(0, 1), device=x.device)
        init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(directions=p.init_directions, steps=100)
        with seeded(draw_seed(generator), x.device), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "failed to draw sufficient random inputs": handled below
            starts = init.run(fmodel, x, fb.criteria.Misclassification(y))
        out = x.clone()
        attack = fb.attacks.BoundaryAttack(steps=p.steps, spherical_step=p.spherical_step,
                                           source_step=p.source_step, step_adaptation=p.step_adaptation)
        # a randomized model may change its vote on a start between two checks: re-check and retry
        for _attempt in range(3):
            with torch.no_grad():
                idx = torch.nonzero(lm(starts).argmax(1) != y).flatten()
            if len(idx) == 0:
                break
            try:
                out[idx] = run_foolbox_minimization(attack, model, x[idx], y[idx], generator=generator,
                                                    lib_model=lm, starting_points=starts[idx])
                break
            except ValueError as exc:
                log.debug("Boundary start rejected on re-check (%s); retrying", exc)
        else:
            log.warning("Boundary attack: the starting points kept changing class; returning the inputs unchanged.")
        self.queries += lm.queries
        return out.detach()
