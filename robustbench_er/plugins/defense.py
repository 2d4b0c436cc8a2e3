"""The defense contract, the defended-model wrapper and checkpoints.

A defense plugin is a class registered with ``@register_defense("name")``::

    @register_defense("mine")
    class Mine(Defense):
        HParams = MineHParams              # a dataclass subclassing defense.HParams
        presets = {"mnist5k": {"quick": {...}, "paper": {...}}}
        def build(self, spec, hp): ...     # -> nn.Module taking normalised images
        def train(self, model, data, hp, seed, progress): ...   # -> dict report

``build`` returns a network on normalised images, ``(x - spec.mean) / spec.std`` (x itself when
the dataset has no mean). The harness wraps it in a :class:`DefendedModel` (normalisation
inside, ``predict(x) -> logits`` for x in [0, 1], optional ``embed``) as the plugin's class
attributes declare (``output``, ``randomized``, ``differentiable``, ``bpda``), trains it, and saves it as a
checkpoint: weights in safetensors plus JSON metadata. A trained checkpoint's folder is named by
the hash of its spec (defense, dataset, profile, hyper-parameters, seed), so a sweep that asks
for the same spec reuses it instead of retraining. The results of a model are keyed on
:func:`model_identity`, a hash of the weights actually loaded and the architecture, never on
what the metadata claims. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar

from torch import nn

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.identity import added_field
from robustbench_er.core.text import check_dataclass_values
from robustbench_er.data.datasets import Dataset, DatasetSpec
from robustbench_er.models.defended import OUTPUTS, DefendedModel, check_model_output, device_of
from robustbench_er.models.hparams import PROFILES, AdversarialHParams, HParams
from robustbench_er.models.training import accuracy, fit, make_optimizer, training_batches

log = logging.getLogger(__name__)


class Defense:
    """Base class of defense plugins. Subclasses set ``HParams``, ``presets`` and implement
    ``build`` (a network on normalised images) and ``train``. Plain class attributes declare
    how the network behaves; :meth:`wrap` passes them to :class:`DefendedModel`."""

    name: ClassVar[str] = ""
    HParams: ClassVar[type[HParams]] = HParams
    #: {dataset: {profile: {field: value}}}
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    #: "logits", or "probs" for a network that returns probabilities (the wrapper takes their log)
    output: ClassVar[str] = "logits"
    #: a stochastic forward (attacks use EOT, predictions are majority votes)
    randomized: ClassVar[bool] = False
    #: False: gradients through the forward are meaningless (gradient attacks refused unless bpda)
    differentiable: ClassVar[bool] = True
    #: the network has ``forward_bpda``: gradient attacks use its gradients (BPDA)
    bpda: ClassVar[bool] = False
    #: a defense that only loads given weights (no training) sets this to False
    trainable: ClassVar[bool] = True
    #: behaviour version: bump it when a change alters the trained weights (checkpoints are then
    #: retrained); a new hyper-parameter whose default keeps the old behaviour is an
    #: ``added_field`` instead (see :mod:`robustbench_er.core.identity`)
    version: ClassVar[int] = 0
    #: this defense's own remedies: flag -> the attacks to run as further cascade stages when the
    #: flag fires on it, each ``{"attack": name, "params": {...}}`` (on top of the attacks that
    #: declare ``Attack.remedies`` for the flag; ``robustbench_er.engine.escalate``)
    remedies: ClassVar[dict[str, list[dict[str, Any]]]] = {}

    def build(self, spec: DatasetSpec, hp: Any) -> nn.Module:
        raise NotImplementedError

    def train(self, model: DefendedModel, data: Dataset, hp: Any, seed: int,
              progress: bool = True) -> dict[str, Any]:
        raise NotImplementedError

    def wrap(self, net: nn.Module, spec: DatasetSpec, hp: Any) -> DefendedModel:
        """Wrap the built network as the class attributes declare (``n_passes`` from ``hp``)."""
        return DefendedModel(net, spec.classes, mean=spec.mean, std=spec.std,
                             randomized=self.randomized, differentiable=self.differentiable,
                             output=self.output, n_passes=int(getattr(hp, "n_passes", 1)), bpda=self.bpda)

    # ---- hyper-parameters -------------------------------------------------------------------
    @classmethod
    def hparams(cls, dataset: str, profile: str = "quick", overrides: dict[str, Any] | None = None) -> Any:
        """The preset for ``dataset`` and ``profile``, with ``overrides`` applied and checked."""
        if profile not in PROFILES:
            raise UserInputError(f"Unknown profile {profile!r}; use one of {', '.join(PROFILES)}.")
        if dataset not in cls.presets:
            raise UserInputError(
                f"Defense {cls.name!r} has no preset for dataset {dataset!r}; presets exist for "
                f"{', '.join(sorted(cls.presets)) or 'no dataset'}."
            )
        per = cls.presets[dataset]
        if profile not in per:
            raise UserInputError(
                f"Defense {cls.name!r} has no {profile!r} preset for {dataset!r}; it has {', '.join(sorted(per))}."
            )

        values = dict(per[profile])
        fields = {f.name: f for f in dataclasses.fields(cls.HParams)}
        for k, v in (overrides or {}).items():
            if k not in fields:
                raise UserInputError(
                    f"Defense {cls.name!r} has no hyper-parameter {k!r}; it has {', '.join(sorted(fields))}."
                )
            values[k] = v
        # typed overrides: ints must be ints (epochs=1.5 is refused), floats accept ints, bools strict
        check_dataclass_values(cls.HParams, overrides or {}, "Hyper-parameter", cls.name)
        try:
            hp = cls.HParams(**values)
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"Bad hyper-parameters for defense {cls.name!r}: {exc}.") from exc
        HParams.check_common(hp)  # every defense, whatever its own validate() does
        hp.validate()
        return hp


def validate_defense_class(name: str, obj: Any) -> None:
    """Called at registration: the plugin must follow the contract."""
    if not (isinstance(obj, type) and issubclass(obj, Defense)):
        raise TypeError(f"Defense {name!r} must be a subclass of robustbench_er.plugins.defense.Defense.")
    if not (dataclasses.is_dataclass(obj.HParams) and issubclass(obj.HParams, HParams)):
        raise TypeError(f"Defense {name!r}: HParams must be a dataclass subclassing defense.HParams.")
    if obj.build is Defense.build:
        raise TypeError(f"Defense {name!r} must implement build(spec, hp).")
    if obj.output not in OUTPUTS:
        raise TypeError(f"Defense {name!r}: output must be one of {OUTPUTS}, not {obj.output!r}.")
    for flag in ("randomized", "differentiable", "bpda", "trainable"):
        if not isinstance(getattr(obj, flag), bool):
            raise TypeError(f"Defense {name!r}: {flag} must be True or False.")
    if obj.trainable and obj.train is Defense.train:
        raise TypeError(f"Defense {name!r} must implement train(model, data, hp, seed, progress).")
    fields = {f.name for f in dataclasses.fields(obj.HParams)}
    for ds, per in obj.presets.items():
        for prof, values in per.items():
            if prof not in PROFILES:
                raise TypeError(f"Defense {name!r}: preset {ds}/{prof} is not a known profile ({PROFILES}).")
            unknown = set(values) - fields
            if unknown:
                raise TypeError(f"Defense {name!r}: preset {ds}/{prof} sets unknown fields {sorted(unknown)}.")



__all__ = ["OUTPUTS", "PROFILES", "AdversarialHParams", "DefendedModel", "Defense", "HParams", "accuracy",
           "added_field",
           "check_model_output", "device_of", "fit", "make_optimizer", "training_batches", "validate_defense_class"]
