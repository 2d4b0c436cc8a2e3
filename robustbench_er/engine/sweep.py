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
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from robustbench_er.core.device import resolve_device
from robustbench_er.core.errors import UserInputError
from robustbench_er.core.metrics import curve, to_norm
from robustbench_er.core.norms import canonical_norm
from robustbench_er.data.datasets import load_dataset
from robustbench_er.engine.checks import run_cell_checks
from robustbench_er.engine.escalate import escalation_cells
from robustbench_er.engine.executor import make_executor
from robustbench_er.engine.search import (
    BatchRunner,
    attack_points,
    grid_index_at_or_above,
    next_step,
)
from robustbench_er.engine.spec import (
    DEFAULT_BATCH_SIZE,
    MODES,
    SEARCHES,
    Cell,
    ModelRef,
    Prepared,
    SweepConfig,
    build_cell,
    check_seeds,
    eps_scale,
    make_attack,
    resolve_model,
    seed_configs,
    seed_for,
    validate_grid,
)
from robustbench_er.engine.trained import Trained, get_or_train
from robustbench_er.models.checkpoints import versions
from robustbench_er.models.defended import DefendedModel, device_of
from robustbench_er.plugins.registry import (
    get_attack,
    get_defense,
)
from robustbench_er.store.results import LEASE_TTL, KeepAlive, LeaseLost, Store, lease_owner

log = logging.getLogger(__name__)

#: seconds between two claims of cells other processes hold
LEASE_POLL = 1.0


def prepare(cfg: SweepConfig) -> Prepared:
    """Check every name, grid, sample count and attack parameter of ``cfg`` and load the data.

    Nothing is trained or written, so a bad input costs nothing.
    """

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
        get_defense(d).hparams(data.spec.models_on, cfg.profile, cfg.defense_overrides.get(d))
    return Prepared(data, norm, grid, scale, ids, attack_grids, resolve_device(cfg.device), models)


def train_defenses(cfg: SweepConfig, prep: Prepared,
                   on_train: Callable[[str, Trained], None] | None = None) -> dict[str, Trained]:
    """The training step: train each defense of ``cfg`` or reuse its checkpoint (or load the
    checkpoint folder the user named), then each other model an attack's parameter names
    (:attr:`Prepared.models`, keyed by :attr:`ModelRef.key`) with the same dataset, profile, seed
    and output folder; :func:`get_or_train` checks once that each model's output is usable.
    ``cfg.seed`` is used (one seed: :func:`seed_configs` splits a sweep over several)."""
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
    grid, ids = prep.grid, prep.ids
    cells: list[Cell] = []
    skipped: list[tuple[str, str, str]] = []
    for d in cfg.defenses:
        t = trained[d]
        eot = cfg.eot if t.model.randomized else 1
        upstream: str | None = None
        for stage, (a, agrid) in enumerate(zip(cfg.attacks, prep.attack_grids)):
            if stages is not None and stage not in stages:
                continue
            cgrid = agrid if agrid is not None else grid
            # a random prefix of the fixed permutation, processed in index order
            cids = np.sort(ids[: a.samples] if a.samples else ids)
            try:
                cell = build_cell(cfg, prep, trained, d, a, cgrid, cids, stage=stage, eot=eot,
                                  upstream=upstream if cfg.mode == "cascade" else None)
            except UserInputError as exc:
                skipped.append((d, a.display, str(exc)))
                if on_skip:
                    on_skip(d, a.display, str(exc))
                log.warning("skipping %s x %s: %s", d, a.display, exc)
                continue
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


def _set_clean(store: Store, cell: Cell, model: DefendedModel, x_all: torch.Tensor, y_all: torch.Tensor,
               batch_size: int) -> None:
    """Store the cell's clean verdicts: its upstream stage's outcomes, or a clean prediction."""
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
        torch.manual_seed(seed_for(cell.cell_id, -1))
        pred = model.predict_label(x_all, n_passes=cell.eot, batch_size=batch_size)
        store.set_clean(cell.cell_id, cell.sample_ids, y_all.cpu().tolist(), (pred == y_all).cpu().tolist())


def _attack_step(cell: Cell, model: DefendedModel, x_all: torch.Tensor, y_all: torch.Tensor, pos: np.ndarray,
                 eps: np.ndarray | None, step: int, batch_size: int, runner: BatchRunner | None
                 ) -> tuple[dict[int, float], dict[int, float | None], list[str]]:
    """Attack one step's points: the samples broken (at which eps), those a search survived, the warnings."""
    broken: dict[int, float] = {}
    survived: dict[int, float | None] = {}
    messages: list[str] = []
    if len(pos) and (eps is None or bool(np.any(eps > 0))):  # nothing to attack at eps 0
        ok, norms, messages = attack_points(cell, model, x_all, y_all, pos, eps, seed_for(cell.cell_id, step),
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
    return broken, survived, messages


def step_bound(cell: Cell) -> int:
    """How many steps the cell takes at most: the grid's length for an ascending sweep, one for a
    minimization attack, else the bisection's rounds (ceil(log2(K + 1)) for K grid points) and
    one retry round (a successful retry can re-open an interval: then a few more)."""
    if cell.search == "once":
        return 1
    if cell.search == "ascending":
        return len(cell.grid)
    return max(1, math.ceil(math.log2(len(cell.grid) + 1))) + (1 if cell.spec.get("retry", False) else 0)


def _step_line(pos: np.ndarray, eps: np.ndarray | None, phase: str) -> str:
    """What a step attacks, for the progress bar: its points and epsilons."""
    if eps is None:
        return f"{len(pos)} points, minimizing"
    if len(eps) == 0:
        return "no points left"
    values = np.unique(eps)
    at = f"eps {values[0]:.4g}" if len(values) == 1 else f"eps {values.min():.4g} to {values.max():.4g}"
    return f"{len(pos)} points at {at}" + (" (retry)" if phase == "retry" else "")


def _run_steps(store: Store, cell: Cell, model: DefendedModel, x_all: torch.Tensor, y_all: torch.Tensor,
               step: int, bar: Any, batch_size: int, on_step: Callable[[int], None] | None,
               heartbeat: Callable[[], None] | None, runner: BatchRunner | None) -> None:
    """Run the cell's unfinished steps from ``step`` on, committing each to the store."""
    label = cell.attack_cfg.display
    ran = 0
    while True:
        out = store.outcomes(cell.cell_id)
        nxt = next_step(cell, out, step)
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
        if bar.n >= (bar.total or 0):  # a retry re-opened intervals: more rounds than the bound
            bar.total = bar.n + 1
        bar.set_postfix_str(_step_line(pos, eps, phase), refresh=True)
        if not bar.disable:  # the attack's own progress (AutoAttack: component, points left, ETA)
            cell.attack.progress = lambda text: bar.set_postfix_str(text, refresh=True)
        try:
            broken, survived, messages = _attack_step(cell, model, x_all, y_all, pos, eps, step, batch_size,
                                                      runner)
        finally:
            cell.attack.progress = None
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
            _set_clean(store, cell, model, x_all, y_all, batch_size)
        label = cell.attack_cfg.display
        step = len(store.done_steps(cell.cell_id))
        bar = tqdm(total=max(step_bound(cell), step), initial=step, disable=not progress, leave=False,
                   desc=f"{cell.defense}/{label}", unit="step")
        _run_steps(store, cell, model, x_all, y_all, step, bar, batch_size, on_step, heartbeat, runner)
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

    out = Path(cfg.out)
    prep = prepare(cfg)
    executor = make_executor(cfg.executor)
    cells: list[Cell] = []
    trained: dict[int, dict[str, Trained]] = {}
    for c in seed_configs(cfg):  # every seed trained and planned before any cell runs
        if executor is not None:
            executor.train(c, prep)  # training jobs as tasks; the driver then loads the checkpoints
        trained[c.seed] = train_defenses(c, prep, _seed_named(on_train, c, cfg))
        cells += plan(c, prep, trained[c.seed], on_skip)
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
        run = functools.partial(_run_cells, store, cfg, executor, done, on_cell=on_cell, on_step=on_step)
        run(cells)
        # flags that act: each flag's remedy as further cascade stages, until no new flag asks for one
        escalated: dict[tuple[str, int], set[str]] = {}
        while extra := escalation_cells(cfg, prep, trained, cells, store, escalated):
            cells += extra
            run(extra)
        summaries = [done[c.cell_id] for c in cells]
        store.finish_run(run_id)
        hl = config.get("headline_eps")
        return summaries, ({canonical_norm(cfg.norm): hl} if hl is not None else None)
    finally:
        store.close()


def _run_cells(store: Store, cfg: SweepConfig, executor: Any, done: dict[str, CellSummary], cells: list[Cell], *,
               on_cell: Callable[[CellSummary], None] | None, on_step: Callable[[int], None] | None) -> None:
    """Run (or resume, or find done) every cell and its checks, each under a lease; a cascade stage
    after the stage before it. Summaries go into ``done``."""
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
                    s = run_cell(store, cell, batch_size=int(cell.spec.get("batch_size", DEFAULT_BATCH_SIZE)), progress=cfg.progress,
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
