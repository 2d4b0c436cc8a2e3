"""``--dry-run``: the plan of an experiment, what is cached, and what the rest would cost.

For every sweep it lists each training job (its checkpoint folder, cached or to train) and each
cell (cached, partly done, or new), with an estimate of the model evaluations (forward or
backward passes) the cell would spend: points x attack calls per point x evaluations per call
(:meth:`robustbench_er.plugins.attack.Attack.evaluations_per_point`). Attack calls per point are the
search's rounds: about log2(K + 1) for bisection (+1 for the retry round), K for ascending,
one for a minimization attack. It is an upper bound: broken points drop out, and a cascade
stage only sees the points the stages before it left standing.

It writes nothing: no store, no checkpoint folder, no lease; the store is opened read-only.
Cells of a defense that is not trained yet cannot be named (a cell is keyed on the weights), so
they are listed as waiting for training, with their cost. A model an attack's parameter names
(``Attack.needs_models``, e.g. a transfer attack's surrogate) is a training job of its own, and
the cells of an attack whose model is not trained yet (in a cascade, every later stage too) wait
for training as well. With several seeds every seed's jobs and cells are listed.
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_er.core.errors import UserInputError
from robustbench_er.engine.detection import cell_key, detection_cells
from robustbench_er.engine.escalate import possible_stages
from robustbench_er.engine.spec import make_attack, seed_configs
from robustbench_er.engine.sweep import plan, prepare
from robustbench_er.engine.trained import checkpoint_folder, get_or_train
from robustbench_er.jobs.analyze import analysis_identity
from robustbench_er.plugins.analysis import result_key


def _stored_keys(path: Path, table: str) -> set[str]:
    """The keys of a store table (``detection``, ``analyses``), read-only; empty without a store."""
    if not path.is_file():
        return set()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {str(r[0]) for r in conn.execute(f"SELECT key FROM {table}")}  # noqa: S608 (a fixed name)
    except sqlite3.OperationalError:  # a store written before the table existed
        return set()
    finally:
        conn.close()


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
    """One row per training job and per cell of ``cfg`` (a SweepConfig), with its cache state;
    every seed of ``cfg.seeds`` in turn (column ``seed``)."""

    cfg = dataclasses.replace(cfg, download=False, progress=False)
    prep = prepare(cfg)
    store = _store_state(Path(cfg.out) / "store.sqlite")
    return pd.DataFrame([row for c in seed_configs(cfg) for row in _seed_rows(c, prep, store)])


def _seed_rows(cfg: Any, prep: Any, store: dict[str, tuple[str, int]]) -> list[dict[str, Any]]:
    """The rows of one seed: its training jobs (the sweep's defenses, then the models attacks'
    parameters name, e.g. a transfer attack's surrogate), then its cells."""

    rows: list[dict[str, Any]] = []
    trained = {}
    jobs = [(d, d, cfg.defense_overrides.get(d), cfg.checkpoints.get(d), d) for d in cfg.defenses]
    jobs += [(r.key, r.defense, r.overrides, r.folder, r.label) for r in prep.models.values()]
    seen = set()
    for key, defense, overrides, given, label in jobs:
        if key in seen:
            continue
        seen.add(key)
        if given:
            folder, cached = Path(given), True
        else:
            folder = checkpoint_folder(defense, prep.data, profile=cfg.profile, seed=cfg.seed, out=cfg.out,
                                       overrides=overrides)
            cached = (folder / "meta.json").is_file()
        rows.append({"job": "train", "defense": label, "attack": "", "state": "cached" if cached else "to train",
                     "points": len(prep.data.y_train), "calls_per_point": "", "evaluations": "",
                     "where": str(folder), "seed": cfg.seed})
        if cached:
            trained[key] = get_or_train(defense, prep.data, profile=cfg.profile, seed=cfg.seed, out=cfg.out,
                                        overrides=overrides, device=prep.device, progress=False,
                                        checkpoint_dir=Path(given) if given else None, measure=False)
    # a cell whose attack uses a model not trained yet cannot be named (nor, in a cascade, any later stage)
    attacks = [make_attack(a, prep.norm, False, cfg.eot) for a in cfg.attacks]
    ready = [all(prep.models[str(getattr(att.params, p)).strip()].key in trained for p in att.needs_models)
             for att in attacks]
    if cfg.mode == "cascade":
        ready = [all(ready[: i + 1]) for i in range(len(ready))]
    stages = [i for i, r in enumerate(ready) if r]
    cells: dict[tuple[str, int], Any] = {}
    planned = [d for d in cfg.defenses if d in trained]
    if planned and stages:
        sub = dataclasses.replace(cfg, defenses=planned)
        for planned_cell in plan(sub, prep, trained, stages=stages):
            cells[(_key(planned_cell, trained), int(planned_cell.spec["stage"]))] = planned_cell
    rows += _cell_rows(cfg, prep, store, trained, cells, attacks, ready)
    return rows


def _cell_rows(cfg: Any, prep: Any, store: dict[str, tuple[str, int]], trained: dict[str, Any],
               cells: dict[tuple[str, int], Any], attacks: list[Any], ready: list[bool]) -> list[dict[str, Any]]:
    """The rows of the planned cells, then of the stages a flag could add (``if flagged``)."""
    rows: list[dict[str, Any]] = []
    extra = possible_stages(cfg, prep, trained, list(cells.values())) if cells else []
    for d in cfg.defenses:
        for i, (a, agrid, attack) in enumerate(zip(cfg.attacks, prep.attack_grids, attacks)):
            cell = cells.get((d, i))
            if cell is not None:
                status, steps = store.get(cell.cell_id, ("new", 0))
                state = {"done": "cached"}.get(status, "new" if status == "new" else f"partial ({steps} steps)")
                calls = _rounds(cell.attack.kind, cell.search, len(cell.grid), bool(cell.spec.get("retry")))
                rows.append({"job": "cell", "defense": d, "attack": a.display, "state": state,
                             "points": len(cell.sample_ids), "calls_per_point": calls,
                             "evaluations": 0 if state == "cached" else
                             len(cell.sample_ids) * calls * cell.attack.evaluations_per_point(),
                             "where": cell.cell_id, "seed": cfg.seed})
                continue
            if d in trained and ready[i]:
                continue  # the sweep will skip this pair (the attack cannot run on the defense)
            k = len(agrid if agrid is not None else prep.grid)
            search = cfg.search if attack.kind == "fixed" else "once"
            n = min(len(prep.ids), a.samples or len(prep.ids))
            calls = _rounds(attack.kind, search, k, bool(attack.search_retry) and search == "bisect")
            rows.append({"job": "cell", "defense": d, "attack": a.display, "state": "after training",
                         "points": n, "calls_per_point": calls,
                         "evaluations": n * calls * attack.evaluations_per_point(), "where": "", "seed": cfg.seed})
        for cell in (c for c in extra if _key(c, trained) == d):
            status, steps = store.get(cell.cell_id, ("new", 0))
            calls = _rounds(cell.attack.kind, cell.search, len(cell.grid), bool(cell.spec.get("retry")))
            rows.append({"job": "if", "defense": d, "attack": cell.attack_cfg.display.replace("escalated", "if flagged"),
                         "state": "cached" if status == "done" else "if flagged", "points": len(cell.sample_ids),
                         "calls_per_point": calls,
                         "evaluations": len(cell.sample_ids) * calls * cell.attack.evaluations_per_point(),
                         "where": "", "seed": cfg.seed})
    return rows


def _key(cell: Any, trained: dict[str, Any]) -> str:
    for d, t in trained.items():
        if t is cell.trained:
            return d
    return str(cell.defense)


def render(frames: list[pd.DataFrame], names: list[str]) -> str:
    """The plan as text, one block per sweep, with the total of evaluations still to spend."""
    lines = []
    total = maybe = 0
    sweeps = 0
    for df, name in zip(frames, names):
        if name.startswith(("detect:", "analyze:")):
            lines.append(name)
        else:
            sweeps += 1
            lines.append(f"sweep {sweeps} ({name}):")
        several = "seed" in df and df["seed"].nunique() > 1
        for r in df.itertuples():
            ev = f"{int(r.evaluations):,}" if r.evaluations != "" else ""
            what = f"{r.defense}" + (f" x {r.attack}" if r.attack else "") + (f" (seed {r.seed})" if several else "")
            calls = f"{r.calls_per_point} calls/pt" if r.calls_per_point != "" else ""
            n = f"n={r.points}" if r.points != "" else ""
            lines.append(f"  {r.job:<5} {what:<40} {r.state:<18} {n:<8} {calls:<12} {ev:>16}  {r.where}")
            if r.evaluations != "" and r.job == "if":
                maybe += int(r.evaluations) if r.state != "cached" else 0
            elif r.evaluations != "":
                total += int(r.evaluations)
    lines.append(f"at most {total:,} model evaluations (forward or backward passes) left to spend in cells;"
                 " training jobs marked 'to train' come on top. Nothing was written.")
    if maybe:
        lines.append(f"'if' rows are stages a flag would add (docs/flags.md): at most {maybe:,} more evaluations,"
                     " only for the flags that fire (--no-escalate: none).")
    return "\n".join(lines)


def _model_job(defense: str, plan: Any) -> tuple[dict[str, Any], Any]:
    """The training row of a detection or analysis job's defense and, if its checkpoint exists,
    the loaded model (its identity keys the job's results), else None."""

    folder = checkpoint_folder(defense, plan.data, profile=plan.profile, seed=plan.seed, out=plan.out,
                               overrides=plan.overrides)
    cached = (folder / "meta.json").is_file()
    row = {"job": "train", "defense": defense, "attack": "", "state": "cached" if cached else "to train",
           "points": len(plan.data.y_train), "calls_per_point": "", "evaluations": "", "where": str(folder),
           "seed": plan.seed}
    trained = None
    if cached:
        trained = get_or_train(defense, plan.data, profile=plan.profile, seed=plan.seed, out=plan.out,
                               overrides=plan.overrides, device="cpu", progress=False, measure=False)
    return row, trained


def detection_rows(plan: Any) -> pd.DataFrame:
    """``--dry-run`` of a detection job: each defense's training job, then each detection cell
    (detector x training attack x test attack) with its cache state in the job's store."""

    stored = _stored_keys(Path(plan.out) / "store.sqlite", "detection")
    rows: list[dict[str, Any]] = []
    for d in plan.defenses:
        train_row, trained = _model_job(d, plan)
        rows.append(train_row)
        for setup in plan.setups:
            what = f"{setup.train_attack.display} -> "
            if trained is None:
                rows += [_result_row(d, f"{det} trained on {what}{t.display}", "after training", setup.samples, "",
                                     plan.seed) for det in setup.detectors for t in setup.test_attacks]
                continue
            for (det, label), idt in detection_cells(d, trained, plan.data, setup)[2].items():
                key = cell_key(idt)
                rows.append(_result_row(d, f"{det} trained on {what}{label}", "cached" if key in stored else "new",
                                        setup.samples, key, plan.seed))
    return pd.DataFrame(rows)


def analysis_rows(plan: Any) -> pd.DataFrame:
    """``--dry-run`` of an analysis job: each defense's training job, then each (analysis,
    target) result with its cache state in the job's store."""

    stored = _stored_keys(Path(plan.out) / "store.sqlite", "analyses")
    rows: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for a, label in zip(plan.analyses, plan.labels):
        for d in plan.defenses if a.uses_model() else [""]:
            if d and d not in models:
                train_row, models[d] = _model_job(d, plan)
                rows.append(train_row)
            if d and models[d] is None:
                rows.append(_result_row(d, label, "after training", "", "", plan.seed))
                continue
            key = result_key(analysis_identity(a, plan, models[d].identity if d else ""))
            rows.append(_result_row(d or plan.data.spec.name, label, "cached" if key in stored else "new", "", key,
                                    plan.seed))
    return pd.DataFrame(rows)


def _result_row(defense: str, what: str, state: str, points: Any, where: str, seed: int) -> dict[str, Any]:
    return {"job": "cell", "defense": defense, "attack": what, "state": state, "points": points,
            "calls_per_point": "", "evaluations": "", "where": where, "seed": seed}
