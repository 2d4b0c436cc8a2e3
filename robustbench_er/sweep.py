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
4. Every counted example is verified by :func:`robustbench_er.attack.verify`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_er.attack import Attack, canonical_norm, verify
from robustbench_er.data import Dataset, load_dataset
from robustbench_er.defense import (
    DefendedModel,
    Trained,
    check_model_output,
    get_or_train,
    spec_hash,
)
from robustbench_er.errors import UserInputError
from robustbench_er.registry import get_attack, get_defense
from robustbench_er.store import Store

log = logging.getLogger(__name__)


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
    out: Path = Path("results")
    data_dir: str | None = None
    download: bool = False
    device: str = "auto"
    batch_size: int = 128
    #: forward passes for EOT gradients and majority votes on randomized defenses
    eot: int = 10
    headline: float | None = None
    defense_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: defense name -> a checkpoint folder to evaluate instead of training (safetensors + meta.json)
    checkpoints: dict[str, str] = field(default_factory=dict)
    progress: bool = True
    #: "cascade" (each attack only on the points every earlier one left standing, per eps) or
    #: "independent" (every attack on every point)
    mode: str = "cascade"
    #: how a fixed-epsilon attack walks the grid: "bisect" (per-sample search) or "ascending"
    search: str = "bisect"
    #: unit of L2 epsilons: "l2" (plain) or "rms" (L2 / sqrt(number of pixels), as in seed 000/002)
    l2_unit: str = "l2"


def parse_eps(text: str | Sequence[float]) -> list[float]:
    """``"0:0.4:0.025"`` (inclusive) or ``"0,0.1,8/255"`` or a list -> a list of floats."""
    if not isinstance(text, str):
        return [float(v) for v in text]
    text = text.strip()
    try:
        if ":" in text:
            parts = [_number(p) for p in text.split(":")]
            if len(parts) != 3 or parts[2] <= 0:
                raise UserInputError(f"--eps START:STOP:STEP needs three numbers with STEP > 0; got {text!r}.")
            start, stop, step = parts
            k = int(math.floor((stop - start) / step + 1e-9))
            return [round(start + i * step, 12) for i in range(k + 1)]
        return [_number(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise UserInputError(f"Cannot read the epsilon grid {text!r}; use START:STOP:STEP or a,b,c (8/255 allowed).") from exc


def _number(s: str) -> float:
    s = s.strip()
    if "/" in s:
        a, b = s.split("/", 1)
        return float(a) / float(b)
    return float(s)


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


def _seed_for(cell_id: str, step: int) -> int:
    return int(hashlib.sha256(f"{cell_id}:{step}".encode()).hexdigest()[:8], 16)


def make_attack(cfg: AttackConfig, norm: str, randomized: bool, eot: int) -> Attack:
    cls = get_attack(cfg.name)
    params = dict(cfg.params)
    if randomized and "eot" not in params:
        params["eot"] = eot
    return cls(norm=norm, **params)


def plan(cfg: SweepConfig, store: Store | None = None,
         on_train: Callable[[str, Trained], None] | None = None,
         on_skip: Callable[[str, str, str], None] | None = None) -> list[Cell]:
    """Validate the config, train or reuse checkpoints, and return the cells to run.

    A (defense, attack) pair the attack cannot run on (a gradient attack on a defense declared
    non-differentiable, say) is skipped with ``on_skip(defense, attack, reason)`` when the sweep
    has other pairs to run; if nothing is left, the reason is raised as a UserInputError.
    """
    from robustbench_er.device import resolve_device

    norm = canonical_norm(cfg.norm)
    if not cfg.defenses:
        raise UserInputError("Name at least one defense.")
    if not cfg.attacks:
        raise UserInputError("Name at least one attack.")
    if cfg.eot < 1:
        raise UserInputError(f"EOT samples must be at least 1; got {cfg.eot}.")
    # validate every name before any work
    for d in cfg.defenses:
        get_defense(d)
    for a in cfg.attacks:
        get_attack(a.name)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    dim = int(np.prod(data.spec.shape))
    grid = validate_grid(cfg.eps, norm, dim)
    ids = data.sample_ids(cfg.samples)
    for a in cfg.attacks:
        if a.eps is not None:
            a.eps = validate_grid(a.eps, norm, dim)
        if a.samples is not None and not 1 <= a.samples <= len(ids):
            raise UserInputError(f"Attack {a.display!r}: samples must be between 1 and {len(ids)}; got {a.samples}.")
        # instantiate once to validate the norm and parameters before training anything
        make_attack(a, norm, False, cfg.eot)
    for d in cfg.defenses:
        get_defense(d).hparams(data.spec.name, cfg.profile, cfg.defense_overrides.get(d))
    device = resolve_device(cfg.device)
    cells: list[Cell] = []
    skipped: list[tuple[str, str, str]] = []
    for d in cfg.defenses:
        trained = get_or_train(d, data, profile=cfg.profile, seed=cfg.seed, out=cfg.out,
                               overrides=cfg.defense_overrides.get(d), device=device, progress=cfg.progress,
                               checkpoint_dir=Path(cfg.checkpoints[d]) if d in cfg.checkpoints else None)
        if on_train:
            on_train(d, trained)
        model = trained.model
        check_model_output(model, data.x_test[:4].to(device))
        randomized = bool(model.randomized)
        eot = cfg.eot if randomized else 1
        for a in cfg.attacks:
            attack = make_attack(a, norm, randomized, eot)
            try:
                attack.check_model(model)
            except UserInputError as exc:
                skipped.append((d, a.display, str(exc)))
                if on_skip:
                    on_skip(d, a.display, str(exc))
                log.warning("skipping %s x %s: %s", d, a.display, exc)
                continue
            cgrid = a.eps if a.eps is not None else grid
            # a random prefix of the fixed permutation, processed in index order
            cids = np.sort(ids[: a.samples] if a.samples else ids)
            spec = {"dataset": data.spec.name, "checkpoint": trained.meta.get("id"), "defense": get_defense(d).name,
                    "attack": attack.describe(), "label": a.display, "norm": norm, "grid": cgrid,
                    "samples": hashlib.sha256(cids.tobytes()).hexdigest()[:16], "n": len(cids),
                    "seed": cfg.seed, "eot": eot, "kind": attack.kind, "access": attack.access,
                    "headline": data.spec.headline.get(norm)}
            if attack.single_step:  # only when set, so other cells keep their ids
                spec["single_step"] = True
            cells.append(Cell(spec_hash(spec), spec, data, get_defense(d).name, trained, attack, a, cgrid,
                              cids, cfg.seed, eot))
    if not cells and skipped:
        raise UserInputError(skipped[0][2])
    return cells


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


class _Interrupt(Exception):
    """Raised by the test hook that simulates a killed run."""


def run_cell(store: Store, cell: Cell, *, batch_size: int = 128, progress: bool = True,
             stop_after_steps: int | None = None) -> CellSummary:
    """Run (or resume) one cell; every finished step is committed to the store."""
    from tqdm.auto import tqdm

    from robustbench_er.defense import device_of
    from robustbench_er.metrics import curve

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
            torch.manual_seed(_seed_for(cell.cell_id, -1))
            pred = model.predict_label(x_all, n_passes=cell.eot, batch_size=batch_size)
            store.set_clean(cell.cell_id, cell.sample_ids, y_all.cpu().tolist(), (pred == y_all).cpu().tolist())
        done = store.done_steps(cell.cell_id)
        steps = list(enumerate(cell.grid)) if cell.attack.kind == "fixed" else [(0, None)]
        bar = tqdm(total=len(steps), initial=len(done), disable=not progress, leave=False,
                   desc=f"{cell.defense}/{cell.attack_cfg.display}")
        ran = 0
        for i, eps in steps:
            if i in done:
                continue
            if stop_after_steps is not None and ran >= stop_after_steps:
                bar.close()
                raise _Interrupt(f"stopped after {ran} steps")
            t0 = time.perf_counter()
            out = store.outcomes(cell.cell_id)
            pos = np.flatnonzero(out["clean_correct"].to_numpy().astype(bool) & out["broken_at"].isna().to_numpy())
            broken: dict[int, float] = {}
            if len(pos) and (eps is None or eps > 0):
                seed = _seed_for(cell.cell_id, i)
                torch.manual_seed(seed)
                gen = torch.Generator().manual_seed(seed)
                for b in range(0, len(pos), batch_size):
                    bpos = torch.as_tensor(pos[b:b + batch_size], device=dev)
                    xb, yb = x_all[bpos], y_all[bpos]
                    if eps is None:
                        x_adv = cell.attack.run(cell.attack.target(model), xb, yb, generator=gen)
                        ok, norms = verify(model, xb, x_adv, yb, cell.attack.norm, None, cell.eot)
                        for j in torch.nonzero(ok).flatten().tolist():
                            broken[int(cell.sample_ids[pos[b + j]])] = float(norms[j])
                    else:
                        e = torch.full((len(xb),), float(eps), device=dev)
                        x_adv = cell.attack.run(cell.attack.target(model), xb, yb, e, generator=gen)
                        ok, _ = verify(model, xb, x_adv, yb, cell.attack.norm, e, cell.eot)
                        for j in torch.nonzero(ok).flatten().tolist():
                            broken[int(cell.sample_ids[pos[b + j]])] = float(eps)
            store.record_step(cell.cell_id, i, float(eps) if eps is not None else float("nan"), broken, len(pos),
                              time.perf_counter() - t0)
            ran += 1
            bar.update(1)
        bar.close()
        store.finish_cell(cell.cell_id)
    out = store.outcomes(cell.cell_id)
    acc = curve(out, cell.grid)
    info = store.cell(cell.cell_id) or {}
    return CellSummary(cell.cell_id, cell.defense, cell.attack_cfg.display, cell.spec["norm"], len(out),
                       float(out["clean_correct"].mean()), dict(zip(cell.grid, acc.tolist())),
                       float(info.get("seconds") or 0.0), resumed)


def run_sweep(cfg: SweepConfig, *, command: str = "", on_cell: Callable[[CellSummary], None] | None = None,
              on_train: Callable[[str, Trained], None] | None = None,
              on_skip: Callable[[str, str, str], None] | None = None,
              stop_after_steps: int | None = None) -> list[CellSummary]:
    """Plan, run every cell (resuming finished steps), run the checks, write the reports."""
    from robustbench_er.checks import run_cell_checks
    from robustbench_er.defense import versions
    from robustbench_er.report import write_reports

    out = Path(cfg.out)
    cells = plan(cfg, on_train=on_train, on_skip=on_skip)
    store = Store(out)
    try:
        run_id = store.start_run(command, dataclasses.asdict(cfg), versions())
        summaries = []
        for cell in cells:
            s = run_cell(store, cell, batch_size=cfg.batch_size, progress=cfg.progress,
                         stop_after_steps=stop_after_steps)
            store.set_flags(cell.cell_id, run_cell_checks(cell, store))
            summaries.append(s)
            if on_cell:
                on_cell(s)
        store.finish_run(run_id)
        write_reports(store, out, headline={canonical_norm(cfg.norm): cfg.headline} if cfg.headline is not None else None)
        return summaries
    finally:
        store.close()
