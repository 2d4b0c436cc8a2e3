"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, arXiv:1912.00049).

Threat model: black-box, score-based (logits only, no gradients), fixed epsilon; Linf and L2
(torchattacks implements these two). Random square-shaped updates accepted when they lower the
margin loss.
Source library: torchattacks (``torchattacks.Square``).

Parameters (paper values in brackets): ``n_queries`` query budget per point (10,000 in the
paper's tables; 5,000 in AutoAttack's standard version and here), ``p_init`` initial fraction of
pixels changed (0.05 for Linf and 0.1 for L2 on ImageNet in the paper; AutoAttack uses 0.8,
which is our default), ``n_restarts`` (1), ``loss`` ``margin`` (paper) or ``ce``, ``eot`` (for
randomized defenses each query returns the mean logits over ``eot`` passes).

``queries`` counts images sent to the defended model (each EOT pass counted).

Differences from the reference code: torchattacks takes one scalar epsilon; a per-sample
epsilon tensor is split into groups of equal epsilon (a sweep step has one group). Its seed is
drawn from the runner's generator.
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
class SquareParams(AttackParams):
    n_queries: int = 5000
    p_init: float = 0.8
    n_restarts: int = 1
    loss: str = "margin"


@register_attack("square")
class Square(FixedEpsilonAttack):
    """Square Attack (torchattacks): score-based, Linf and L2, fixed epsilon."""

    norms = ("Linf", "L2")
    access = "score"
    #: a score-based attack needs no gradient: it is the remedy wherever gradients mislead, and
    #: with twice the queries and restarts where AutoAttack's own checks advise it
    remedies = {"zero-gradients": {}, "no-break-at-large-eps": {}, "single-step-stronger": {},
                "noise-stronger": {}, "attack-warnings": {"n_queries": 10000, "n_restarts": 2}}
    effort_params = ("n_queries", "n_restarts")
    Params = SquareParams

    def validate(self) -> None:
        p = self.params
        if p.n_queries < 1:
            raise UserInputError(f"Square's query budget n_queries must be at least 1; got {p.n_queries}.")
        if not 0 < p.p_init <= 1:
            raise UserInputError(f"Square's p_init must be in (0, 1]; got {p.p_init}.")
        if p.n_restarts < 1:
            raise UserInputError(f"Square's n_restarts must be at least 1; got {p.n_restarts}.")
        if p.loss not in ("margin", "ce"):
            raise UserInputError(f"Square's loss must be 'margin' or 'ce', not {p.loss!r}.")

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, *,
            generator: torch.Generator | None = None, x_init: torch.Tensor | None = None) -> torch.Tensor:
        import torchattacks

        p = self.params

        def make(lm: LibraryModel, e: float, seed: int) -> Any:
            return torchattacks.Square(lm, norm=self.norm, eps=e, n_queries=p.n_queries, n_restarts=p.n_restarts,
                                       p_init=p.p_init, loss=p.loss, resc_schedule=True, seed=seed, verbose=False)

        x_adv, queries = run_torchattacks(make, model, x, y, eps, self.norm, eot=p.eot, generator=generator)
        self.queries += queries
        return x_adv
