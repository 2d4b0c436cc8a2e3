"""The per-sample search inside a cell: each step's points and epsilons read from the outcomes so far,
cut into seeded batches, attacked and verified."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustbench_er.core.metrics import EPS_TOL
from robustbench_er.core.norms import NORM_ATOL, NORM_RTOL
from robustbench_er.engine.spec import Cell
from robustbench_er.models.defended import DefendedModel
from robustbench_er.plugins.attack import Attack, verify


def grid_index_at_or_above(grid: Sequence[float], value: float) -> int:
    """Index of the smallest grid epsilon whose ball holds a perturbation of norm ``value``
    (within the verifier's float tolerance); ``len(grid)`` if none does."""

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


def attack_points(cell: Cell, model: DefendedModel, x_all: torch.Tensor, y_all: torch.Tensor, pos: np.ndarray,
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


def next_step(cell: Cell, out: Any, step: int) -> tuple[float, np.ndarray, np.ndarray | None, str] | None:
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
