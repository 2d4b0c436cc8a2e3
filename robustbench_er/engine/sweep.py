"""Plan cells and run epsilon sweeps.

A *cell* is (dataset, defense checkpoint, attack config, norm, epsilon grid, sample ids, seed).
Its id is the hash of that spec, and a cell is a pure function of it: the same spec gives the
same per-sample outcomes, which makes resume, caching and distribution one mechanism.

The sweep, per cell:

1. Clean verdict per sample (a majority over ``eot`` passes for randomized defenses); points
   misclassified clean are never attacked.
2. Fixed-epsilon attacks: epsilons in ascending order, survivors only. A point broken at
   eps_i is broken at every larger eps (the same example lies in the larger ball), so step
   i+1 attacks only the points still standing. Inside the attack a point stops once it is
   misclassified. Each step is seeded from (cell id, step index) and committed atomically,
   so a killed run resumes at the first unfinished step with identical results.
3. Minimization attacks: one run on the clean-correct points; each verified example's measured
   norm is the point's ``broken_at``, and the whole curve follows.
4. Every counted example is verified by :func:`robustbench_er.plugins.attack.verify`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.metrics import L2_UNITS, to_norm, unit_scale
from robustbench_er.core.norms import canonical_norm
from robustbench_er.data.datasets import Dataset, load_dataset
from robustbench_er.engine.trained import Trained, get_or_train
from robustbench_er.models.checkpoints import spec_hash
from robustbench_er.models.defended import DefendedModel, check_model_output
from robustbench_er.plugins.attack import Attack, verify
from robustbench_er.plugins.registry import (
    DEFENSES,
    defense_label,
    get_attack,
    get_defense,
    split_variant,
)
from robustbench_er.store.results import LEASE_TTL, KeepAlive, LeaseLost, Store, lease_owner

log = logging.getLogger(__name__)

#: seconds between two claims of cells other processes hold
LEASE_POLL = 1.0


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
    batch_size: int = 128
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


def _seed_for(cell_id: str, step: int) -> int:
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


def _looks_like_path(text: str) -> bool:
    return any(c in text for c in "/\\") or text.startswith((".", "~"))


def resolve_model(value: Any, param: str, *, data: Dataset, profile: str, defenses: Sequence[str] = (),
                  overrides: Mapping[str, dict[str, Any]] | None = None,
                  checkpoints: Mapping[str, str] | None = None) -> ModelRef:
    """What an attack's model parameter names: one of the sweep's ``defenses`` (that model), another
    registered defense or variant (trained with the sweep's dataset, profile and seed), or a
    checkpoint folder trained on ``data``'s dataset. Reads at most a ``meta.json``; raises a
    UserInputError (one sentence, starting with ``param``) for anything else."""
    import difflib

    from robustbench_er.models.checkpoints import read_meta

    if not isinstance(value, str) or not value.strip():
        raise UserInputError(f"{param} must name a defense (or a variant NAME[key=value]) or a checkpoint folder,"
                             f" got {value!r}.")
    text = value.strip()
    if not _looks_like_path(text):
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
                cls.hparams(data.spec.name, profile)
            except UserInputError as exc:
                raise UserInputError(f"{param} {text!r}: {exc}") from None
            if not cls.trainable:
                raise UserInputError(f"{param} {text!r} cannot be trained; give a checkpoint folder instead.")
            return ModelRef(f"model:{label}", text, f"{label} ({param})")
    folder = Path(text).expanduser()
    if not folder.is_dir() and _looks_like_path(text):
        raise UserInputError(f"{param} {text!r} is not a checkpoint folder (no such folder).")
    if not folder.is_dir():
        close = difflib.get_close_matches(text.lower(), DEFENSES.names(), n=2, cutoff=0.5)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise UserInputError(f"{param} {text!r} is neither a registered defense{hint} nor a checkpoint folder.")
    try:
        meta = read_meta(folder)
    except UserInputError as exc:
        raise UserInputError(f"{param}: {str(exc)[0].lower()}{str(exc)[1:]}") from None
    if meta.get("dataset") != data.spec.name:
        raise UserInputError(f"{param}: checkpoint {text!r} was trained on {meta.get('dataset')!r}, not on the"
                             f" sweep's dataset {data.spec.name!r}.")
    held = str(meta.get("defense"))
    if held not in DEFENSES:
        raise UserInputError(f"{param}: checkpoint {text!r} holds defense {held!r}, which is not registered.")
    return ModelRef(f"folder:{folder.resolve()}", held, f"{defense_label(held)} from {text} ({param})",
                    folder=str(folder))


def _attached_models(attack: Attack, prep: Prepared, trained: Mapping[str, Trained]) -> dict[str, Trained]:
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


def prepare(cfg: SweepConfig) -> Prepared:
    """Check every name, grid, sample count and attack parameter of ``cfg`` and load the data.

    Nothing is trained or written, so a bad input costs nothing.
    """
    from robustbench_er.core.device import resolve_device

    norm = canonical_norm(cfg.norm)
    if not cfg.defenses:
        raise UserInputError("Name at least one defense.")
    if not cfg.attacks:
        raise UserInputError("Name at least one attack.")
    if cfg.eot < 1:
        raise UserInputError(f"EOT samples must be at least 1; got {cfg.eot}.")
    if cfg.mode not in MODES:
        raise UserInputError(f"Unknown mode {cfg.mode!r}; use one of {', '.join(MODES)}.")
    if cfg.search not in SEARCHES:
        raise UserInputError(f"Unknown search {cfg.search!r}; use one of {', '.join(SEARCHES)}.")
    check_seeds(cfg.seeds)
    # validate every name before any work
    for d in cfg.defenses:
        get_defense(d)
    for a in cfg.attacks:
        get_attack(a.name)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    dim = int(np.prod(data.spec.shape))
    scale = eps_scale(norm, cfg.l2_unit, dim)
    unit = cfg.l2_unit if norm == "L2" else None
    grid = validate_grid([to_norm(e, unit, scale) for e in cfg.eps], norm, dim)
    ids = data.sample_ids(cfg.samples)
    attack_grids: list[list[float] | None] = []
    models: dict[str, ModelRef] = {}
    prev_n = len(ids)
    for a in cfg.attacks:
        attack_grids.append(validate_grid([to_norm(e, unit, scale) for e in a.eps], norm, dim)
                            if a.eps is not None else None)
        if a.samples is not None and not 1 <= a.samples <= len(ids):
            raise UserInputError(f"Attack {a.display!r}: samples must be between 1 and {len(ids)}; got {a.samples}.")
        n_a = a.samples or len(ids)
        if cfg.mode == "cascade" and n_a > prev_n:
            raise UserInputError(
                f"In cascade mode attack {a.display!r} cannot run on more points ({n_a}) than the attack before it"
                f" ({prev_n}); list attacks from the most to the fewest points, or use mode 'independent'.")
        prev_n = n_a
        # instantiate once to validate the norm and parameters before training anything
        attack = make_attack(a, norm, False, cfg.eot)
        for param in attack.needs_models:
            value = getattr(attack.params, param)
            try:
                models[str(value).strip()] = resolve_model(
                    value, param, data=data, profile=cfg.profile, defenses=cfg.defenses,
                    overrides=cfg.defense_overrides, checkpoints=cfg.checkpoints)
            except UserInputError as exc:
                raise UserInputError(f"Attack {a.display!r}: {exc}") from None
    for d in cfg.defenses:
        get_defense(d).hparams(data.spec.name, cfg.profile, cfg.defense_overrides.get(d))
    return Prepared(data, norm, grid, scale, ids, attack_grids, resolve_device(cfg.device), models)


def train_defenses(cfg: SweepConfig, prep: Prepared,
                   on_train: Callable[[str, Trained], None] | None = None) -> dict[str, Trained]:
    """The training step: train each defense of ``cfg`` or reuse its checkpoint (or load the
    checkpoint folder the user named), then each other model an attack's parameter names
    (:attr:`Prepared.models`, keyed by :attr:`ModelRef.key`) with the same dataset, profile, seed
    and output folder, and check that every model's output is usable. ``cfg.seed`` is used
    (one seed: :func:`seed_configs` splits a sweep over several)."""
    trained: dict[str, Trained] = {}
    jobs = [(d, d, cfg.defense_overrides.get(d), cfg.checkpoints.get(d), d) for d in cfg.defenses]
    jobs += [(r.key, r.defense, r.overrides, r.folder, r.label) for r in prep.models.values()]
    for key, defense, overrides, folder, label in jobs:
        if key in trained:
            continue
        t = get_or_train(defense, prep.data, profile=cfg.profile, seed=cfg.seed, out=cfg.out,
                         overrides=overrides, device=prep.device, progress=cfg.progress,
                         checkpoint_dir=Path(folder) if folder else None)
        if on_train:
            on_train(label, t)
        check_model_output(t.model, prep.data.x_test[:4].to(prep.device))
        trained[key] = t
    return trained


def plan(cfg: SweepConfig, prep: Prepared, trained: dict[str, Trained],
         on_skip: Callable[[str, str, str], None] | None = None,
         stages: Sequence[int] | None = None) -> list[Cell]:
    """The cells to run for the trained models: no training, no I/O.

    In ``cascade`` mode a defense's cells form a chain in the listed attack order: each cell
    (stage) starts from the previous stage's outcomes and attacks only the points still standing,
    so its outcomes are the worst case over every stage so far. In ``independent`` mode every
    attack runs on every point.

    A (defense, attack) pair the attack cannot run on (a gradient attack on a defense declared
    non-differentiable, say) is skipped with ``on_skip(defense, attack, reason)`` when the sweep
    has other pairs to run; if nothing is left, the reason is raised as a UserInputError.

    ``stages`` (``--dry-run``) plans only the attacks at these positions, numbered as in the whole
    sweep; in cascade mode they must be a prefix, since a stage's id holds its upstream's.
    """
    data, norm, grid, scale, ids = prep.data, prep.norm, prep.grid, prep.scale, prep.ids
    cells: list[Cell] = []
    skipped: list[tuple[str, str, str]] = []
    for d in cfg.defenses:
        t = trained[d]
        model = t.model
        randomized = bool(model.randomized)
        eot = cfg.eot if randomized else 1
        upstream: str | None = None
        for stage, (a, agrid) in enumerate(zip(cfg.attacks, prep.attack_grids)):
            if stages is not None and stage not in stages:
                continue
            attack = make_attack(a, norm, randomized, eot)
            if attack.needs_models:  # the models its parameters name, trained in the training step
                attack.use_models(_attached_models(attack, prep, trained))
            try:
                attack.check_model(model)
            except UserInputError as exc:
                skipped.append((d, a.display, str(exc)))
                if on_skip:
                    on_skip(d, a.display, str(exc))
                log.warning("skipping %s x %s: %s", d, a.display, exc)
                continue
            cgrid = agrid if agrid is not None else grid
            # a random prefix of the fixed permutation, processed in index order
            cids = np.sort(ids[: a.samples] if a.samples else ids)
            search = cfg.search if attack.kind == "fixed" else "once"
            spec: dict[str, Any] = {"dataset": data.spec.name, "checkpoint": t.identity, "defense": defense_label(d),
                    "attack": attack.describe(), "label": a.display, "norm": norm, "grid": cgrid,
                    "samples": hashlib.sha256(cids.tobytes()).hexdigest()[:16], "n": len(cids),
                    "seed": cfg.seed, "eot": eot, "kind": attack.kind, "access": attack.access,
                    "headline": data.spec.headline.get(norm), "mode": cfg.mode, "search": search,
                    "upstream": upstream if cfg.mode == "cascade" else None, "stage": stage,
                    "l2_unit": cfg.l2_unit if norm == "L2" else None, "eps_scale": scale,
                    "reports_as": attack.leaderboard_field,
                    "retry": bool(attack.search_retry) if search == "bisect" else False}
            if attack.single_step:  # only when set, so other cells keep their ids
                spec["single_step"] = True
            cell = Cell(spec_hash(spec), spec, data, defense_label(d), t, attack, a, cgrid,
                        cids, cfg.seed, eot, upstream=spec["upstream"], search=search)
            cells.append(cell)
            if cfg.mode == "cascade":
                upstream = cell.cell_id
    if not cells and skipped:
        raise UserInputError(skipped[0][2])
    return cells


def plan_sweep(cfg: SweepConfig, on_train: Callable[[str, Trained], None] | None = None,
               on_skip: Callable[[str, str, str], None] | None = None) -> list[Cell]:
    """The three steps before running: :func:`prepare`, :func:`train_defenses`, :func:`plan`
    (the last two once per seed of ``cfg.seeds``)."""
    prep = prepare(cfg)
    cells: list[Cell] = []
    for c in seed_configs(cfg):
        cells += plan(c, prep, train_defenses(c, prep, _seed_named(on_train, c, cfg)), on_skip)
    return cells


def _seed_named(on_train: Callable[[str, Trained], None] | None, c: SweepConfig,
                cfg: SweepConfig) -> Callable[[str, Trained], None] | None:
    """``on_train`` with the seed added to the name when the sweep runs several seeds."""
    if on_train is None or not cfg.seeds or len(cfg.seeds) < 2:
        return on_train
    return lambda name, t: on_train(f"{name}, seed {c.seed}", t)


@dataclass
class CellSummary:
    cell_id: str
    defense: str
    attack: str
    norm: str
    n: int
    clean_acc: float
    robust: dict[float, float]
    seconds: float
    resumed: bool
    seed: int = 0


def grid_index_at_or_above(grid: Sequence[float], value: float) -> int:
    """Index of the smallest grid epsilon whose ball holds a perturbation of norm ``value``
    (within the verifier's float tolerance); ``len(grid)`` if none does."""
    from robustbench_er.core.norms import NORM_ATOL, NORM_RTOL

    for i, g in enumerate(grid):
        if value <= g * (1 + NORM_RTOL) + NORM_ATOL:
            return i
    return len(grid)


def bisect_state(out: Any, grid: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the (lo, hi) grid indices of a grid search read from the outcomes.

    ``lo``: the largest index known to survive (the cell's own ``survived_eps``, or the index of
    eps 0 when the grid starts at 0, else -1); ``hi``: the smallest index known broken (from
    ``broken_at``, the cell's own or an upstream stage's), ``len(grid)`` if none. A sample is
    resolved once ``hi - lo <= 1``.
    """
    k = len(grid)
    base = 0 if grid and grid[0] <= 0 else -1
    lo = np.full(len(out), base, dtype=int)
    hi = np.full(len(out), k, dtype=int)
    idx = {round(float(g), 12): i for i, g in enumerate(grid)}
    for j, (sv, ba) in enumerate(zip(out["survived_eps"].to_numpy(dtype=float), out["broken_at"].to_numpy(dtype=float))):
        if not math.isnan(sv):
            lo[j] = max(lo[j], idx.get(round(sv, 12), base))
        if not math.isnan(ba):
            hi[j] = grid_index_at_or_above(grid, ba)
    return lo, hi


#: one batch's (verified mask, measured norms, the attack's messages about the batch)
BatchResult = tuple[np.ndarray, np.ndarray, list[str]]


@dataclass
class BatchJob:
    """One batch of a step: the positions (into the cell's points) it attacks, their epsilons
    (None for a minimization attack) and its own seed. A step is cut into batches the same way
    whoever runs them, and each batch draws only from its own seed, so running the batches one
    after the other here or spread over workers (:mod:`robustbench_er.engine.executor`) gives the same
    per-sample results."""

    index: int
    sel: np.ndarray
    eps: np.ndarray | None
    seed: int


def step_batches(pos: np.ndarray, eps: np.ndarray | None, seed: int, batch_size: int) -> list[BatchJob]:
    """Cut a step's points into batches, in order of epsilon (libraries that take one scalar
    epsilon see few groups per batch); batch ``b`` is seeded with ``seed + b``."""
    order = np.lexsort((pos, eps)) if eps is not None else np.arange(len(pos))
    jobs = []
    for k, b in enumerate(range(0, len(order), batch_size)):
        sel = order[b:b + batch_size]
        jobs.append(BatchJob(k, sel, None if eps is None else eps[sel], (seed + k) % (2**31 - 1)))
    return jobs


def attack_batch(attack: Attack, model: DefendedModel, xb: torch.Tensor, yb: torch.Tensor, eps: np.ndarray | None,
                 eot: int, seed: int) -> BatchResult:
    """Attack one batch and verify every example: (verified mask, measured norms, the attack's
    messages about this batch)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    del attack.warnings[:]  # what this batch says, nothing older
    if eps is None:
        x_adv = attack.run(attack.target(model), xb, yb, generator=gen)
        ok, norms = verify(model, xb, x_adv, yb, attack.norm, None, eot)
    else:
        e = torch.as_tensor(eps, dtype=xb.dtype, device=xb.device)
        x_adv = attack.run(attack.target(model), xb, yb, e, generator=gen)
        ok, norms = verify(model, xb, x_adv, yb, attack.norm, e, eot)
    return ok.cpu().numpy(), norms.cpu().numpy(), [str(w) for w in attack.warnings]


#: runs a step's batches and returns each one's :data:`BatchResult`, in the order given
BatchRunner = Callable[[Cell, torch.Tensor, torch.Tensor, np.ndarray, list[BatchJob]], list["BatchResult"]]


def run_batches_here(cell: Cell, x_all: torch.Tensor, y_all: torch.Tensor, pos: np.ndarray,
                     jobs: list[BatchJob]) -> list[BatchResult]:
    """The local executor: every batch in this process, one after the other."""
    dev = x_all.device
    out = []
    for job in jobs:
        bpos = torch.as_tensor(pos[job.sel], device=dev)
        out.append(attack_batch(cell.attack, cell.trained.model, x_all[bpos], y_all[bpos], job.eps, cell.eot,
                                job.seed))
    return out


def _attack_points(cell: Cell, model: DefendedModel, x_all: torch.Tensor, y_all: torch.Tensor, pos: np.ndarray,
                   eps: np.ndarray | None, seed: int, batch_size: int,
                   runner: BatchRunner | None = None) -> BatchResult:
    """Attack the points at positions ``pos`` (per-sample ``eps``, or None for a minimization attack).

    Returns (verified mask, measured norms) in the order of ``pos``, and the attack's messages
    over the batches (in batch order, each once).
    """
    jobs = step_batches(pos, eps, seed, batch_size)
    ok_all = np.zeros(len(pos), dtype=bool)
    norms_all = np.full(len(pos), np.nan)
    said: dict[str, None] = {}
    for job, (ok, norms, messages) in zip(jobs, (runner or run_batches_here)(cell, x_all, y_all, pos, jobs)):
        ok_all[job.sel] = ok
        norms_all[job.sel] = norms
        said.update(dict.fromkeys(messages))
    return ok_all, norms_all, list(said)


def _next_step(cell: Cell, out: Any, step: int) -> tuple[float, np.ndarray, np.ndarray | None, str] | None:
    """What the cell's ``step``-th step attacks, read from its outcomes so far.

    Returns (eps to record, positions, per-position eps or None, phase) or None when finished.
    The phase is "search" or "retry" (a second attempt at each sample's largest surviving eps).
    """
    grid = cell.grid
    cc = out["clean_correct"].to_numpy().astype(bool)
    ba = np.nan_to_num(out["broken_at"].to_numpy(dtype=float), nan=np.inf)
    if cell.search == "once":
        if step > 0:
            return None
        pos_grid = [e for e in grid if e > 0] or grid
        pos = np.flatnonzero(cc & (ba > min(pos_grid) + EPS_TOL))
        return float("nan"), pos, None, "search"
    if cell.search == "ascending":
        if step >= len(grid):
            return None
        e = float(grid[step])
        pos = np.flatnonzero(cc & (ba > e + EPS_TOL))
        return e, pos, np.full(len(pos), e), "search"
    # bisect: every unresolved sample at the middle of its own interval; then one retry round
    lo, hi = bisect_state(out, grid)
    active = cc & (hi - lo > 1)
    if active.any():
        pos = np.flatnonzero(active)
        mid = (lo[pos] + hi[pos]) // 2
        return float("nan"), pos, np.asarray(grid, dtype=float)[mid], "search"
    tries = out["tries"].fillna(0).to_numpy(dtype=int)
    g = np.asarray(grid, dtype=float)
    retry = cc & (lo >= 0) & (tries == 0) & (hi - lo == 1)
    retry &= np.where(lo >= 0, g[np.clip(lo, 0, len(g) - 1)], 0.0) > 0
    if cell.spec.get("retry", False) and retry.any():
        pos = np.flatnonzero(retry)
        return float("nan"), pos, g[lo[pos]], "retry"
    return None


EPS_TOL = 1e-9


def run_cell(store: Store, cell: Cell, *, batch_size: int = 128, progress: bool = True,
             on_step: Callable[[int], None] | None = None, heartbeat: Callable[[], None] | None = None,
             runner: BatchRunner | None = None) -> CellSummary:
    """Run (or resume) one cell; every finished step is committed to the store.

    A step is an epsilon of an ascending sweep, a round of the per-sample grid search, or the
    single run of a minimization attack. What a step attacks is read from the store, so a
    killed cell resumes at its first unfinished step with identical results.
    ``heartbeat()`` is called after every step: the sweep renews the cell's lease there (it
    raises :class:`robustbench_er.store.results.LeaseLost` when another process took the cell over).
    """
    from tqdm.auto import tqdm

    from robustbench_er.core.metrics import curve
    from robustbench_er.models.defended import device_of

    model: DefendedModel = cell.trained.model
    dev = device_of(model)
    existing = store.cell(cell.cell_id)
    resumed = existing is not None
    row = {"dataset": cell.spec["dataset"], "defense": cell.defense, "checkpoint": cell.spec["checkpoint"],
           "attack": cell.attack.name, "attack_label": cell.attack_cfg.display, "kind": cell.attack.kind,
           "norm": cell.spec["norm"], "grid": cell.grid, "n": len(cell.sample_ids), "eot": cell.eot}
    if existing is None or existing["status"] != "done":
        store.ensure_cell(cell.cell_id, cell.spec, row)
        ids = torch.as_tensor(cell.sample_ids)
        x_all = cell.dataset.x_test[ids].to(dev)
        y_all = cell.dataset.y_test[ids].to(dev)
        model.eval()
        if not store.has_clean(cell.cell_id):
            if cell.upstream is not None:
                up = store.outcomes(cell.upstream).set_index("sample_id")
                missing = set(cell.sample_ids.tolist()) - set(up.index.tolist())
                if missing:
                    raise RuntimeError(f"cascade stage {cell.cell_id} has {len(missing)} points its upstream lacks")
                up = up.loc[cell.sample_ids.tolist()]
                store.set_clean(cell.cell_id, cell.sample_ids, up["label"].tolist(),
                                up["clean_correct"].astype(bool).tolist(), up["broken_at"].tolist(),
                                up["broken_by"].tolist())
            else:
                torch.manual_seed(_seed_for(cell.cell_id, -1))
                pred = model.predict_label(x_all, n_passes=cell.eot, batch_size=batch_size)
                store.set_clean(cell.cell_id, cell.sample_ids, y_all.cpu().tolist(), (pred == y_all).cpu().tolist())
        label = cell.attack_cfg.display
        step = len(store.done_steps(cell.cell_id))
        total = len(cell.grid) if cell.search == "ascending" else None
        bar = tqdm(total=total, initial=step, disable=not progress, leave=False, desc=f"{cell.defense}/{label}")
        ran = 0
        while True:
            out = store.outcomes(cell.cell_id)
            nxt = _next_step(cell, out, step)
            if nxt is None:
                break
            if on_step is not None:
                try:
                    on_step(ran)  # told how many steps this call has run; may stop the cell by raising
                except BaseException:
                    bar.close()
                    raise
            t0 = time.perf_counter()
            rec_eps, pos, eps, phase = nxt
            broken: dict[int, float] = {}
            survived: dict[int, float | None] = {}
            messages: list[str] = []
            if len(pos) and (eps is None or bool(np.any(eps > 0))):  # nothing to attack at eps 0
                ok, norms, messages = _attack_points(cell, model, x_all, y_all, pos, eps, _seed_for(cell.cell_id, step),
                                           batch_size, runner)
                for j, p in enumerate(pos):
                    sid = int(cell.sample_ids[p])
                    if not ok[j]:
                        if eps is not None and cell.search == "bisect":
                            survived[sid] = float(eps[j])
                        continue
                    if eps is None:
                        broken[sid] = float(norms[j])
                    elif cell.search == "bisect":
                        # the example lies in every grid ball at or above its measured norm
                        broken[sid] = float(cell.grid[min(grid_index_at_or_above(cell.grid, float(norms[j])),
                                                          len(cell.grid) - 1)])
                    else:
                        broken[sid] = float(eps[j])
            tried = [int(cell.sample_ids[p]) for p in pos] if phase == "retry" else []
            if phase == "retry":
                # a failed retry changes nothing; a success re-opens the sample's interval below it
                survived = {sid: None for sid in broken}
            store.record_step(cell.cell_id, step, rec_eps, broken, len(pos), time.perf_counter() - t0,
                              label=label, survived=survived, tried=tried, warnings=messages)
            if heartbeat:
                heartbeat()
            step += 1
            ran += 1
            bar.update(1)
        bar.close()
        store.finish_cell(cell.cell_id)
    out = store.outcomes(cell.cell_id)
    acc = curve(out, cell.grid)
    info = store.cell(cell.cell_id) or {}
    return CellSummary(cell.cell_id, cell.defense, cell.attack_cfg.display, cell.spec["norm"], len(out),
                       float(out["clean_correct"].mean()), dict(zip(cell.grid, acc.tolist())),
                       float(info.get("seconds") or 0.0), resumed, int(cell.seed))


def execute_sweep(cfg: SweepConfig, *, command: str = "", on_cell: Callable[[CellSummary], None] | None = None,
                  on_train: Callable[[str, Trained], None] | None = None,
                  on_skip: Callable[[str, str, str], None] | None = None,
                  on_step: Callable[[int], None] | None = None) -> tuple[list[CellSummary], dict[str, float] | None]:
    """Plan, run every cell (resuming finished steps) and run the checks; return the cells'
    summaries and the headline epsilon per norm for the reports (``jobs.sweep`` writes them)."""
    from robustbench_er.engine.checks import run_cell_checks
    from robustbench_er.engine.executor import make_executor
    from robustbench_er.models.checkpoints import versions

    out = Path(cfg.out)
    prep = prepare(cfg)
    executor = make_executor(cfg.executor)
    cells: list[Cell] = []
    for c in seed_configs(cfg):  # every seed trained and planned before any cell runs
        if executor is not None:
            executor.train(c, prep)  # training jobs as tasks; the driver then loads the checkpoints
        cells += plan(c, prep, train_defenses(c, prep, _seed_named(on_train, c, cfg)), on_skip)
    store = Store(out)
    try:
        config = dataclasses.asdict(cfg)
        if cfg.headline is not None and cells:  # the headline in the norm's own unit, for later reports
            config["headline_eps"] = to_norm(cfg.headline, cells[0].spec.get("l2_unit"), float(cells[0].spec["eps_scale"]))
        if cfg.table_eps and cells:  # the same, for the per-eps table
            config["table_eps_scaled"] = [to_norm(e, cells[0].spec.get("l2_unit"), float(cells[0].spec["eps_scale"]))
                                          for e in cfg.table_eps]
        run_id = store.start_run(command, config, versions())
        done: dict[str, CellSummary] = {}
        owner = lease_owner()
        pending = list(cells)
        while pending:
            # a cell another live process holds is deferred: work on the others, then poll
            # until its holder finishes (the claim then succeeds and run_cell finds it done)
            # or its lease expires (the claim takes it over and run_cell resumes it)
            deferred = []
            for cell in pending:
                # a cascade stage waits for the stage before it (it starts from its outcomes)
                if cell.upstream is not None and cell.upstream not in done:
                    deferred.append(cell)
                    continue
                if not store.leases.claim(cell.cell_id, owner, LEASE_TTL):
                    deferred.append(cell)
                    continue
                try:
                    with KeepAlive(store.path, cell.cell_id, owner, LEASE_TTL) as alive:
                        s = run_cell(store, cell, batch_size=cfg.batch_size, progress=cfg.progress,
                                     on_step=on_step, heartbeat=alive.check,
                                     runner=executor.runner if executor is not None else None)
                        store.set_flags(cell.cell_id, run_cell_checks(cell, store))
                except LeaseLost as exc:
                    log.warning("%s; waiting for it", exc)
                    deferred.append(cell)
                    continue
                done[cell.cell_id] = s
                if on_cell:
                    on_cell(s)
            if len(deferred) == len(pending):
                log.info("%d cell(s) held by other processes; waiting", len(deferred))
                time.sleep(LEASE_POLL)
            pending = deferred
        summaries = [done[c.cell_id] for c in cells]
        store.finish_run(run_id)
        hl = config.get("headline_eps")
        return summaries, ({canonical_norm(cfg.norm): hl} if hl is not None else None)
    finally:
        store.close()
