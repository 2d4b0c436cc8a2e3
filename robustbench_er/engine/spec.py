"""What a sweep is made of: attack and sweep configs, cells, model references, modes and searches."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.metrics import L2_UNITS, unit_scale
from robustbench_er.data.datasets import Dataset
from robustbench_er.engine.trained import Trained
from robustbench_er.models.batching import CPU_BATCH_SIZE, auto_batch_size
from robustbench_er.models.checkpoints import read_meta, spec_hash
from robustbench_er.plugins.attack import Attack
from robustbench_er.plugins.registry import (
    DEFENSES,
    defense_label,
    get_attack,
    get_defense,
    split_variant,
)

#: points per attack call on a CPU unless the sweep says otherwise. A random-start attack draws
#: its noise per batch (each batch from its own seed), so its per-sample outcomes depend on how a
#: step is cut: a cell run with another batch size is keyed on it and never mixed with these
DEFAULT_BATCH_SIZE = CPU_BATCH_SIZE


@dataclass
class AttackConfig:
    """One attack of a sweep: registry name, parameters, and optional own grid / sample count."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    #: epsilons for this attack only (e.g. AutoAttack at the headline eps); None = the sweep's grid
    eps: list[float] | None = None
    #: evaluate this attack on the first n sample ids only (e.g. C&W on 200); None = all
    samples: int | None = None
    label: str | None = None

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass
class SweepConfig:
    dataset: str
    defenses: list[str]
    attacks: list[AttackConfig]
    eps: list[float]
    norm: str = "Linf"
    samples: int | None = 500
    profile: str = "quick"
    seed: int = 0
    #: several seeds: the sweep runs once per seed (each trains its own checkpoints and has its own
    #: cells, the seed being part of both identities); ``seed`` is then ignored
    seeds: list[int] | None = None
    out: Path = Path("results")
    data_dir: str | None = None
    download: bool = False
    device: str = "auto"
    #: points per attack call; None (``auto``): 128 on a CPU, the largest that fits on a GPU
    #: (:func:`robustbench_er.models.batching.auto_batch_size`)
    batch_size: int | None = None
    #: forward passes for EOT gradients and majority votes on randomized defenses
    eot: int = 10
    headline: float | None = None
    #: epsilons of the leaderboard's per-eps table (None: no table)
    table_eps: list[float] | None = None
    #: attack labels that get a per-eps table of their own (None: the worst case only)
    table_attacks: list[str] | None = None
    defense_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: defense name -> a checkpoint folder to evaluate instead of training (safetensors + meta.json)
    checkpoints: dict[str, str] = field(default_factory=dict)
    progress: bool = True
    #: "cascade" (each attack only on the points every earlier one left standing, per eps) or
    #: "independent" (every attack on every point)
    mode: str = "cascade"
    #: how a fixed-epsilon attack walks the grid: "bisect" (per-sample search) or "ascending"
    search: str = "bisect"
    #: unit of L2 epsilons: "l2" (plain), "rms" (L2 / sqrt(number of pixels)) or "mse" (L2^2 /
    #: number of pixels, our reading of the C&W bounds of Li et al. 2021; docs/reproduction.md)
    l2_unit: str = "l2"
    #: where cells and training jobs run: {"kind": "local"} or {"kind": "ray", "address": ...,
    #: "gpus_per_cell": ..., "workers": ..., "threads_per_task": ...} (robustbench_er.engine.executor)
    executor: dict[str, Any] = field(default_factory=lambda: {"kind": "local"})
    #: after the checks, run each flag's remedy as further cascade stages on the points still
    #: standing (robustbench_er.engine.escalate)
    escalate: bool = True


def seed_configs(cfg: SweepConfig) -> list[SweepConfig]:
    """One config per seed of ``cfg.seeds`` (``seeds`` cleared), or ``[cfg]`` for one seed."""
    if not cfg.seeds:
        return [cfg]
    return [dataclasses.replace(cfg, seed=int(s), seeds=None) for s in cfg.seeds]


def check_seeds(seeds: Sequence[Any] | None) -> list[int] | None:
    """``seeds`` as distinct integers (None stays None); one sentence otherwise."""
    if seeds is None:
        return None
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise UserInputError(f"Seeds must be a non-empty list of integers, e.g. 0,1,2; got {list(seeds)!r}.")
    if len(set(seeds)) != len(seeds):
        raise UserInputError(f"Seeds must be distinct; got {list(seeds)!r}.")
    return [int(s) for s in seeds]


def validate_grid(grid: Sequence[float], norm: str, dim: int | None = None) -> list[float]:
    if not grid:
        raise UserInputError("The epsilon grid is empty.")
    g = [float(e) for e in grid]
    if any(not math.isfinite(e) for e in g):
        raise UserInputError("Epsilons must be finite numbers.")
    if any(e < 0 for e in g):
        raise UserInputError(f"Epsilons must be >= 0; got {min(g)}.")
    if any(b <= a for a, b in zip(g, g[1:])):
        raise UserInputError(f"The epsilon grid must be strictly ascending; got {g}.")
    if norm == "Linf" and g[-1] > 1:
        raise UserInputError(
            f"An Linf epsilon of {g[-1]} exceeds 1; epsilons are on the [0, 1] image scale (e.g. 8/255 = 0.0314)."
        )
    if dim is not None:
        diameter = {"Linf": 1.0, "L2": math.sqrt(dim), "L1": float(dim)}[norm]
        if g[-1] > diameter:
            raise UserInputError(f"An {norm} epsilon of {g[-1]} exceeds the diameter of [0, 1]^{dim} ({diameter:.4g}).")
    return g


@dataclass
class Cell:
    cell_id: str
    spec: dict[str, Any]
    dataset: Dataset
    defense: str
    trained: Trained
    attack: Attack
    attack_cfg: AttackConfig
    grid: list[float]
    sample_ids: np.ndarray
    seed: int
    eot: int
    #: in a cascade, the cell of the previous stage (its outcomes are this cell's starting point)
    upstream: str | None = None
    #: "bisect" or "ascending" (fixed-epsilon attacks); "once" for minimization attacks
    search: str = "ascending"


def build_cell(cfg: SweepConfig, prep: Prepared, trained: Mapping[str, Trained], d: str, a: AttackConfig,
               grid: list[float],
               sample_ids: np.ndarray, *, stage: int, eot: int, upstream: str | None,
               extra: Mapping[str, Any] | None = None, randomized: bool | None = None) -> Cell:
    """The cell of attack ``a`` on defense ``d`` (``trained[d]``; ``trained`` holds the models
    attacks' parameters name too) over ``grid`` and ``sample_ids``
    (sorted), its id the hash of its spec; a UserInputError (one sentence) when the attack cannot
    run on the model. ``extra`` adds keys to the spec (an escalated stage's reasons);
    ``randomized`` overrides the model's declaration (EOT on a model found nondeterministic)."""
    data, norm, t = prep.data, prep.norm, trained[d]
    attack = make_attack(a, norm, bool(t.model.randomized) if randomized is None else randomized, eot)
    if attack.needs_models:  # the models its parameters name, trained in the training step
        attack.use_models(attached_models(attack, prep, trained))
    attack.check_model(t.model)
    search = cfg.search if attack.kind == "fixed" else "once"
    spec: dict[str, Any] = {"dataset": data.spec.name, "checkpoint": t.identity, "defense": defense_label(d),
            "attack": attack.describe(), "label": a.display, "norm": norm, "grid": grid,
            "samples": hashlib.sha256(sample_ids.tobytes()).hexdigest()[:16], "n": len(sample_ids),
            "seed": cfg.seed, "eot": eot, "kind": attack.kind, "access": attack.access,
            "headline": data.spec.headline.get(norm), "mode": cfg.mode, "search": search,
            "upstream": upstream, "stage": stage,
            "l2_unit": cfg.l2_unit if norm == "L2" else None, "eps_scale": prep.scale,
            "reports_as": attack.leaderboard_field,
            "retry": bool(attack.search_retry) if search == "bisect" else False}
    batch = cfg.batch_size or auto_batch_size(t.model, t.identity, data.spec.shape, prep.device, cfg.out)
    if batch != DEFAULT_BATCH_SIZE:  # the batches' seeds follow it (engine.search)
        spec["batch_size"] = batch
    if attack.single_step:  # only when set, so other cells keep their ids
        spec["single_step"] = True
    spec.update(extra or {})
    return Cell(spec_hash(spec), spec, data, defense_label(d), t, attack, a, grid,
                sample_ids, cfg.seed, eot, upstream=upstream, search=search)


def seed_for(cell_id: str, step: int) -> int:
    return int(hashlib.sha256(f"{cell_id}:{step}".encode()).hexdigest()[:8], 16)


def make_attack(cfg: AttackConfig, norm: str, randomized: bool, eot: int) -> Attack:
    cls = get_attack(cfg.name)
    params = dict(cfg.params)
    if randomized and "eot" not in params:
        params["eot"] = eot
    return cls(norm=norm, **params)


@dataclass
class ModelRef:
    """A model that an attack's parameter names (``Attack.needs_models``), resolved by
    :func:`resolve_model` before any work.

    ``key`` names it among the models of the training step (:func:`train_defenses`): the
    sweep's own defense name when the parameter names one of the sweep's defenses (then it is
    that very model: its overrides, its checkpoint folder), ``model:<label>`` for another defense
    or variant, ``folder:<path>`` for a checkpoint folder.
    """

    key: str
    #: the defense (or variant) trained or loaded
    defense: str
    #: how it is shown: ``<label> (<param>)``
    label: str
    overrides: dict[str, Any] | None = None
    #: a checkpoint folder to load instead of training
    folder: str | None = None


def looks_like_path(text: str) -> bool:
    return any(c in text for c in "/\\") or text.startswith((".", "~"))


def resolve_model(value: Any, param: str, *, data: Dataset, profile: str, defenses: Sequence[str] = (),
                  overrides: Mapping[str, dict[str, Any]] | None = None,
                  checkpoints: Mapping[str, str] | None = None) -> ModelRef:
    """What an attack's model parameter names: one of the sweep's ``defenses`` (that model), another
    registered defense or variant (trained with the sweep's dataset, profile and seed), or a
    checkpoint folder trained on ``data``'s dataset. Reads at most a ``meta.json``; raises a
    UserInputError (one sentence, starting with ``param``) for anything else."""
    import difflib


    if not isinstance(value, str) or not value.strip():
        raise UserInputError(f"{param} must name a defense (or a variant NAME[key=value]) or a checkpoint folder,"
                             f" got {value!r}.")
    text = value.strip()
    if not looks_like_path(text):
        try:
            base, _ = split_variant(text)
        except UserInputError as exc:
            raise UserInputError(f"{param}: {exc}") from None
        if base in DEFENSES:
            label = defense_label(text)
            for d in defenses:
                if defense_label(d) == label:  # the sweep's own model, as it is evaluated
                    return ModelRef(d, d, f"{label} ({param})", dict((overrides or {}).get(d) or {}) or None,
                                    (checkpoints or {}).get(d))
            cls = get_defense(text)
            try:
                cls.hparams(data.spec.models_on, profile)
            except UserInputError as exc:
                raise UserInputError(f"{param} {text!r}: {exc}") from None
            if not cls.trainable:
                raise UserInputError(f"{param} {text!r} cannot be trained; give a checkpoint folder instead.")
            return ModelRef(f"model:{label}", text, f"{label} ({param})")
    folder = Path(text).expanduser()
    if not folder.is_dir() and looks_like_path(text):
        raise UserInputError(f"{param} {text!r} is not a checkpoint folder (no such folder).")
    if not folder.is_dir():
        close = difflib.get_close_matches(text.lower(), DEFENSES.names(), n=2, cutoff=0.5)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise UserInputError(f"{param} {text!r} is neither a registered defense{hint} nor a checkpoint folder.")
    try:
        meta = read_meta(folder)
    except UserInputError as exc:
        raise UserInputError(f"{param}: {str(exc)[0].lower()}{str(exc)[1:]}") from None
    if meta.get("dataset") != data.spec.models_on:
        raise UserInputError(f"{param}: checkpoint {text!r} was trained on {meta.get('dataset')!r}, not on the"
                             f" sweep's dataset {data.spec.name!r}.")
    held = str(meta.get("defense"))
    if held not in DEFENSES:
        raise UserInputError(f"{param}: checkpoint {text!r} holds defense {held!r}, which is not registered.")
    return ModelRef(f"folder:{folder.resolve()}", held, f"{defense_label(held)} from {text} ({param})",
                    folder=str(folder))


def attached_models(attack: Attack, prep: Prepared, trained: Mapping[str, Trained]) -> dict[str, Trained]:
    """The trained models an attack's ``needs_models`` parameters name (trained by :func:`train_defenses`)."""
    out = {}
    for p in attack.needs_models:
        ref = prep.models.get(str(getattr(attack.params, p)).strip())
        if ref is None or ref.key not in trained:
            raise RuntimeError(f"the model for {attack.name}'s {p!r} is not trained; run train_defenses first")
        out[p] = trained[ref.key]
    return out


MODES = ("cascade", "independent")
SEARCHES = ("bisect", "ascending")


def eps_scale(norm: str, l2_unit: str, dim: int) -> float:
    """The scale of the user's epsilon unit (:func:`robustbench_er.core.metrics.unit_scale`):
    sqrt(pixels) for L2 in RMS or MSE units; :func:`robustbench_er.core.metrics.to_norm` converts."""
    if l2_unit not in L2_UNITS:
        raise UserInputError(f"Unknown L2 unit {l2_unit!r}; use one of {', '.join(L2_UNITS)}.")
    if l2_unit != "l2" and norm != "L2":
        raise UserInputError(f"The {l2_unit} unit applies to L2 epsilons only, not {norm}.")
    return unit_scale(norm, l2_unit, dim)


@dataclass
class Prepared:
    """A sweep's inputs once checked: the dataset, the grid in the norm's own unit, the sample ids
    and each attack's own grid. Built by :func:`prepare`, which trains and writes nothing."""

    data: Dataset
    norm: str
    grid: list[float]
    scale: float
    ids: np.ndarray
    attack_grids: list[list[float] | None]
    device: torch.device
    #: the models attacks' parameters name (``Attack.needs_models``), by the value as given
    models: dict[str, ModelRef] = field(default_factory=dict)
