"""``--dry-run``: the plan of an experiment, what is cached, and what the rest would cost.

For every sweep it lists each training job (its checkpoint folder, cached or to train) and each
cell (cached, partly done, or new), with an estimate of the model evaluations (forward or
backward passes) the cell would spend: points x attack calls per point x evaluations per call
(:meth:`robustbench_er.attack.Attack.evaluations_per_point`). Attack calls per point are the
search's rounds: about log2(K + 1) for bisection (+1 for the retry round), K for ascending,
one for a minimization attack. It is an upper bound: broken points drop out, and a cascade
stage only sees the points the stages before it left standing.

It writes nothing: no store, no checkpoint folder, no lease; the store is opened read-only.
Cells of a defense that is not trained yet cannot be named (a cell is keyed on the weights), so
they are listed as waiting for training, with their cost.
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_er.errors import UserInputError


def _store_state(path: Path) -> dict[str, tuple[str, int]]:
    """cell id -> (status, finished steps), read-only; empty when there is no store yet."""
    if not path.is_file():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cells = dict(conn.execute("SELECT cell_id, status FROM cells").fetchall())
        steps = dict(conn.execute("SELECT cell_id, COUNT(*) FROM steps GROUP BY cell_id").fetchall())
    except sqlite3.Error as exc:
        raise UserInputError(f"The store {str(path)!r} cannot be read: {exc}.") from None
    finally:
        conn.close()
    return {c: (str(s), int(steps.get(c, 0))) for c, s in cells.items()}


def _rounds(kind: str, search: str, k: int, retry: bool) -> int:
    if kind != "fixed":
        return 1
    positive = max(1, k - 1) if k > 1 else 1
    if search == "ascending":
        return positive
    return math.ceil(math.log2(positive + 1)) + (1 if retry else 0)


def plan_rows(cfg: Any) -> pd.DataFrame:
    """One row per training job and per cell of ``cfg`` (a SweepConfig), with its cache state."""
    from robustbench_er.sweep import make_attack, plan, prepare
    from robustbench_er.trained import checkpoint_folder, get_or_train

    cfg = dataclasses.replace(cfg, download=False, progress=False)
    prep = prepare(cfg)
    store = _store_state(Path(cfg.out) / "store.sqlite")
    rows: list[dict[str, Any]] = []
    trained = {}
    for d in cfg.defenses:
        if d in cfg.checkpoints:
            folder, cached = Path(cfg.checkpoints[d]), True
        else:
            folder = checkpoint_folder(d, prep.data, profile=cfg.profile, seed=cfg.seed, out=cfg.out,
                                       overrides=cfg.defense_overrides.get(d))
            cached = (folder / "meta.json").is_file()
        rows.append({"job": "train", "defense": d, "attack": "", "state": "cached" if cached else "to train",
                     "points": len(prep.data.y_train), "calls_per_point": "", "evaluations": "",
                     "where": str(folder)})
        if cached:
            trained[d] = get_or_train(d, prep.data, profile=cfg.profile, seed=cfg.seed, out=cfg.out,
                                      overrides=cfg.defense_overrides.get(d), device=prep.device, progress=False,
                                      checkpoint_dir=Path(cfg.checkpoints[d]) if d in cfg.checkpoints else None,
                                      measure=False)
    by_defense: dict[str, list[Any]] = {d: [] for d in cfg.defenses}
    if trained:
        sub = dataclasses.replace(cfg, defenses=[d for d in cfg.defenses if d in trained])
        for cell in plan(sub, prep, trained):
            by_defense[cell.defense if cell.defense in by_defense else _key(cell, trained)].append(cell)
    for d in cfg.defenses:
        if d in trained:
            for cell in by_defense[d]:
                status, steps = store.get(cell.cell_id, ("new", 0))
                state = {"done": "cached"}.get(status, "new" if status == "new" else f"partial ({steps} steps)")
                calls = _rounds(cell.attack.kind, cell.search, len(cell.grid), bool(cell.spec.get("retry")))
                rows.append({"job": "cell", "defense": d, "attack": cell.attack_cfg.display, "state": state,
                             "points": len(cell.sample_ids), "calls_per_point": calls,
                             "evaluations": 0 if state == "cached" else
                             len(cell.sample_ids) * calls * cell.attack.evaluations_per_point(),
                             "where": cell.cell_id})
        else:
            for a, agrid in zip(cfg.attacks, prep.attack_grids):
                attack = make_attack(a, prep.norm, False, cfg.eot)
                k = len(agrid if agrid is not None else prep.grid)
                search = cfg.search if attack.kind == "fixed" else "once"
                n = min(len(prep.ids), a.samples or len(prep.ids))
                calls = _rounds(attack.kind, search, k, bool(attack.search_retry) and search == "bisect")
                rows.append({"job": "cell", "defense": d, "attack": a.display, "state": "after training",
                             "points": n, "calls_per_point": calls,
                             "evaluations": n * calls * attack.evaluations_per_point(), "where": ""})
    return pd.DataFrame(rows)


def _key(cell: Any, trained: dict[str, Any]) -> str:
    for d, t in trained.items():
        if t is cell.trained:
            return d
    return str(cell.defense)


def render(frames: list[pd.DataFrame], names: list[str]) -> str:
    """The plan as text, one block per sweep, with the total of evaluations still to spend."""
    lines = []
    total = 0
    for i, (df, name) in enumerate(zip(frames, names)):
        lines.append(f"sweep {i + 1} ({name}):")
        for r in df.itertuples():
            ev = f"{int(r.evaluations):,}" if r.evaluations != "" else ""
            what = f"{r.defense}" + (f" x {r.attack}" if r.attack else "")
            calls = f"{r.calls_per_point} calls/pt" if r.calls_per_point != "" else ""
            lines.append(f"  {r.job:<5} {what:<40} {r.state:<18} n={r.points:<6} {calls:<12} {ev:>16}  {r.where}")
            if r.evaluations != "":
                total += int(r.evaluations)
    lines.append(f"at most {total:,} model evaluations (forward or backward passes) left to spend in cells;"
                 " training jobs marked 'to train' come on top. Nothing was written.")
    return "\n".join(lines)
