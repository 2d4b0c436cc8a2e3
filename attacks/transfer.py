"""Transfer (black-box) attack: adversarial examples crafted with a white-box attack on a
surrogate model, then evaluated on the target (Papernot, McDaniel and Goodfellow,
arXiv:1605.07277, 2016; Madry et al., ICLR 2018, arXiv:1706.06083, Table 1's black-box rows,
which transfer PGD and FGSM examples from an independently trained copy of the network).
Bashivan et al. 2021 (AFD) report white-box and black-box robust accuracy side by side in their
Table 1.

Threat model: black-box. Crafting never touches the target: neither its gradients, nor its
scores, nor its labels. The only contact is the runner's verification, as for every attack
(inside the ball, inside [0, 1], misclassified by the target, a majority vote for a randomized
target). The attack declares ``access = "none"``: it needs less from the target than a
decision-based attack (no query at all), so none of gradient, score or decision fits; the target
may be non-differentiable or randomized (verification takes the cell's majority vote).

Parameters:

* ``surrogate`` (``none``): the model the examples are crafted on. A defense name or variant
  (``madry``, ``none[epochs=2]``), trained or loaded like any checkpoint with the sweep's dataset,
  profile, seed and output folder, in the sweep's training step (so ``--dry-run`` lists it);
  naming one of the sweep's own defenses uses that very model (its ``--set`` overrides, its
  ``--checkpoint``), so the target may be its own surrogate. Or a checkpoint folder (a path with a
  ``/``), which must hold a registered defense trained on the sweep's dataset; it keeps its own
  seed. The cell's identity holds the surrogate's model identity.
* ``attack`` (``pgd``): the white-box attack run on the surrogate: any registered fixed-epsilon
  gradient attack (``pgd``, ``fgsm``, ``mim``, ...), in the sweep's norm.
* every other parameter is the inner attack's (``transfer(surrogate=madry,attack=pgd,steps=100)``).
* ``eot``: EOT passes of the inner attack on a randomized surrogate (1 on a deterministic one).

The sweep attaches the surrogate (``Attack.use_models``). Called directly with none attached,
``run`` crafts on the model it is given, which is then its own surrogate (the inner attack's
white-box examples).

Choices and deviations:

* The surrogate is trained on the target's training data (the "independently trained copy"
  setting of Madry et al.), not by Papernot et al.'s Jacobian-based augmentation on labels
  queried from the target: no query budget is spent.
* The inner attack's early stop (PGD's ``early_stop``) is off unless given: an example that
  only just crosses the surrogate's decision boundary rarely transfers, so every point gets
  all the inner steps.
* Examples are crafted at each epsilon the sweep's search asks for (per sample), like any
  fixed-epsilon attack; an example verified at a smaller epsilon counts at every larger one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from robustbench_er.plugin import (
    Attack,
    AttackParams,
    DefendedModel,
    FixedEpsilonAttack,
    UserInputError,
    check_dataclass_values,
    device_of,
    get_attack,
    register_attack,
)


@dataclass
class TransferParams(AttackParams):
    #: a defense name or variant, or a checkpoint folder
    surrogate: str = "none"
    #: the white-box fixed-epsilon gradient attack run on the surrogate
    attack: str = "pgd"


_OWN = {f.name for f in dataclasses.fields(TransferParams)}


@register_attack("transfer")
class Transfer(FixedEpsilonAttack):
    """Transfer attack (ours): a white-box attack on a surrogate, its examples verified on the target."""

    norms = ("Linf", "L2", "L1")
    access = "none"
    Params = TransferParams
    needs_models = ("surrogate",)

    def __init__(self, norm: str = "Linf", **params: Any) -> None:
        # parameters transfer does not have belong to the inner attack (checked in validate)
        self.inner_params = {k: v for k, v in params.items() if k not in _OWN}
        self.inner: Attack
        super().__init__(norm, **{k: v for k, v in params.items() if k in _OWN})

    def validate(self) -> None:
        p = self.params
        if not isinstance(p.attack, str) or not p.attack.strip():
            raise UserInputError(f"Transfer's inner attack must be an attack name, got {p.attack!r}.")
        try:
            cls = get_attack(p.attack)
        except UserInputError:
            raise UserInputError(f"Transfer's inner attack {p.attack!r} is not a registered attack; use a"
                                 " fixed-epsilon gradient attack such as pgd, fgsm or mim.") from None
        if cls.kind != "fixed" or cls.access != "gradient":
            what = "minimization" if cls.kind == "min" else "fixed-epsilon"
            raise UserInputError(f"Transfer's inner attack must be a fixed-epsilon gradient attack (pgd, fgsm,"
                                 f" mim, ...); {cls.name!r} is a {what} {cls.access} attack.")
        fields = sorted(f.name for f in dataclasses.fields(cls.Params))
        unknown = sorted(set(self.inner_params) - set(fields))
        if unknown:
            raise UserInputError(f"Attack 'transfer' has no parameter {unknown[0]!r}, nor has its inner attack"
                                 f" {cls.name!r}; transfer has {', '.join(sorted(_OWN))} and {cls.name} has"
                                 f" {', '.join(fields)}.")
        check_dataclass_values(cls.Params, self.inner_params, "parameter", cls.name)
        self._inner_cls = cls
        self._build_inner(p.eot)

    def _build_inner(self, eot: int) -> None:
        params = dict(self.inner_params)
        if "early_stop" in {f.name for f in dataclasses.fields(self._inner_cls.Params)}:
            params.setdefault("early_stop", False)
        params["eot"] = eot
        self.inner = self._inner_cls(norm=self.norm, **params)

    def use_models(self, models: dict[str, Any]) -> None:
        super().use_models(models)
        # EOT passes only help on a randomized surrogate
        self._build_inner(self.params.eot if getattr(self.model("surrogate"), "randomized", False) else 1)

    def check_model(self, model: DefendedModel) -> None:
        """The target is never attacked directly (no gradients, no queries), so any target is fine;
        the inner attack checks the surrogate (gradients, or a BPDA approximation)."""
        self.bpda = False
        try:
            self.inner.check_model(self.model("surrogate") if self.models else model)
        except UserInputError as exc:
            raise UserInputError(f"Transfer's surrogate cannot be attacked: {str(exc)[0].lower()}{str(exc)[1:]}") from None

    def evaluations_per_point(self) -> int:
        """The inner attack's passes, all on the surrogate (the target sees only the verification)."""
        return self.inner.evaluations_per_point()

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["inner"] = self.inner.describe()
        return out

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, *,
            generator: torch.Generator | None = None, x_init: torch.Tensor | None = None) -> torch.Tensor:
        surrogate = self.model("surrogate") if self.models else model
        dev = device_of(surrogate)
        x_adv = self.inner.run(self.inner.target(surrogate), x.to(dev), y.to(dev), eps.to(dev), generator=generator)
        return x_adv.to(x.device)
