"""Reports read from the store: ``curves.csv`` (long form), ``leaderboard.csv/.md/.json``,
``curves_<dataset>_<norm>.png`` and ``auc_<dataset>.png``.

Cells are grouped by (dataset, defense checkpoint, norm, seed). Within a group the worst case
over attacks is, per sample, the minimum ``broken_at`` over the attacks that ran on the group's
largest sample set; attacks run on a subset (e.g. C&W on 200 points) appear with their own n.
Numbers stay numbers in every file; epsilons keep their exact value beside a pretty form.

Seeds: every row carries its sweep's ``seed``. A (dataset, norm, defense) evaluated at several
seeds (``--seeds``) keeps one row per seed and gains an aggregate row (``aggregate`` True): the
mean and the sample standard deviation (ddof=1) over the seeds of clean accuracy, robust
accuracy and AUC (``*_std`` columns), shown as ``mean ± std`` in Markdown and HTML.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.metrics import EPS_TOL, auc, curve, from_norm, pretty_eps, worst_case
from robustbench_er.core.norms import canonical_norm
from robustbench_er.engine.checks import attack_run, cross_attack_flags
from robustbench_er.store.results import Store

log = logging.getLogger(__name__)
WORST = "worst-case"
#: above this many defenses a curve plot shows only each defense's worst case
MAX_DETAILED_DEFENSES = 4


def _snap(grid: list[float], target: float | None) -> float:
    pos = [e for e in grid if e > 0] or grid
    if target is None:
        return pos[-1]
    below = [e for e in pos if e <= target + EPS_TOL]
    return below[-1] if below else pos[0]


Headline = float | dict[str, float] | None


def _headline_for(headline: Headline, norm: str) -> float | None:
    if isinstance(headline, dict):
        return headline.get(norm)
    return headline


def table_eps_from_runs(store: Store) -> dict[str, list[float]]:
    """The last per-eps table each norm's sweeps asked for (kept in the runs table)."""

    out: dict[str, list[float]] = {}
    for cfg in store.runs_frame()["config"]:
        try:
            d = json.loads(cfg)
            value = d.get("table_eps_scaled")
            if value:
                out[canonical_norm(str(d.get("norm", "Linf")))] = [float(v) for v in value]
        except (ValueError, TypeError, UserInputError):
            continue
    return out


def table_attacks_from_runs(store: Store) -> list[str]:
    """Every attack label a sweep of the store asked a per-eps table for, in the order asked."""
    out: dict[str, None] = {}
    for cfg in store.runs_frame()["config"]:
        try:
            out.update(dict.fromkeys(str(a) for a in json.loads(cfg).get("table_attacks") or []))
        except (ValueError, TypeError):
            continue
    return list(out)


def per_eps_table(t: Tables, dataset: str, norm: str, eps: list[float],
                  attack: str = WORST) -> tuple[list[str], list[list[str]]]:
    """Robust accuracy (%) of each defense at each of ``eps``, defenses as rows, as Table 1 of
    Li et al. (ICLR submission) prints them: the worst case over the attacks, or one attack's own
    curve (``attack``, a label; in a cascade its stage's); "–" where an eps is not on the grid."""
    c = t.curves
    c = c[(c["dataset"] == dataset) & (c["norm"] == norm) & (c["attack"] == attack)]
    head = ["defense"] + [pretty_eps(e) for e in eps]
    rows = []
    several = "seed" in c and c["seed"].nunique() > 1
    keys = ["defense", "checkpoint"] + (["seed"] if "seed" in c else [])
    for key, g in c.groupby(keys, sort=False):
        cells = [f"{key[0]} (seed {key[2]})" if several else str(key[0])]
        for e in eps:
            hit = g[((g["eps"] - e).abs() < EPS_TOL) | ((g["eps_in_unit"] - e).abs() < EPS_TOL)]
            cells.append(_fmt(float(hit["robust_acc"].iloc[0])) if len(hit) else "–")
        rows.append(cells)
    return head, rows


def _headlines_from_runs(store: Store) -> dict[str, float]:
    """The last headline each norm's sweeps asked for (kept in the runs table)."""

    out: dict[str, float] = {}
    for cfg in store.runs_frame()["config"]:
        try:
            d = json.loads(cfg)
            value = d.get("headline_eps", d.get("headline"))  # headline_eps: in the norm's own unit
            if value is not None:
                out[canonical_norm(str(d.get("norm", "Linf")))] = float(value)
        except (ValueError, TypeError, UserInputError):
            continue
    return out


@dataclass
class Tables:
    """Everything a report shows, long form: pivot only to render.

    * ``curves``: one row per (group, attack or worst case, eps);
    * ``attacks``: one row per (group, attack): robust accuracy at the headline eps (after the
      stage, for a cascade), AUC, ADBD, n, mode and stage;
    * ``board``: one row per group (dataset, defense checkpoint, norm, seed): clean and worst-case
      robust accuracy at the headline eps on the points every attack there ran on, AUC, flags;
      then, for a (dataset, norm, defense) run at several seeds, its aggregate row (mean, ``*_std``);
    * ``samples``: per curve point, keyed (dataset, checkpoint, norm, seed, attack, eps) as in
      ``curves``, the per-sample outcomes (sample_id, clean_correct, broken_at) behind its
      robust accuracy (for the worst case: the minimum ``broken_at`` over the attacks there).
    """

    curves: pd.DataFrame
    attacks: pd.DataFrame
    board: pd.DataFrame
    samples: dict[tuple[Any, ...], pd.DataFrame] = field(default_factory=dict)


def _covers(kind: str, grid: list[float], eps: float) -> bool:
    """Whether an attack's outcomes say something about ``eps``: a minimization attack always; a
    fixed-epsilon one when it ran at ``eps`` or at a smaller epsilon (an example inside a small
    ball is inside every larger one, so its breaks carry up to every larger epsilon)."""
    return kind == "min" or any(e <= eps + EPS_TOL for e in grid)


def _chains(cell_ids: list[str], specs: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Cells grouped into cascade chains (a cell run on its own is a chain of one), in stage order."""
    nxt = {specs[c].get("upstream"): c for c in cell_ids if specs[c].get("upstream") in specs}
    heads = [c for c in cell_ids if specs[c].get("upstream") not in specs]
    chains = []
    for h in heads:
        chain = [h]
        while chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        chains.append(chain)
    return chains


def _worst_at(eps: float, chains: list[list[str]], info: dict[str, tuple[str, list[float]]],
              by_cell: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, int] | None:
    """Per-sample worst case at ``eps`` over every attack that ran at ``eps`` or below, on the
    points they all ran on: a point counts as broken when any attack broke it at some eps' <= eps.

    Each chain contributes its last stage that ran at or below ``eps`` (a cascade stage's
    outcomes include every earlier stage's). Returns (outcomes on the common points, number of
    chains) or None.
    """
    frames = []
    for chain in chains:
        last = [c for c in chain if c in by_cell and _covers(info[c][0], info[c][1], eps)]
        if last:
            frames.append(by_cell[last[-1]])
    if not frames:
        return None
    common = set(frames[0]["sample_id"])
    for f in frames[1:]:
        common &= set(f["sample_id"])
    frames = [f[f["sample_id"].isin(common)] for f in frames]
    return worst_case(frames), len(frames)


@dataclass
class _Group:
    """One (dataset, defense checkpoint, norm, seed) group of finished cells and what its rows share."""

    dataset: Any
    defense: Any
    ckpt: Any
    norm: str
    seed: int
    ids: list[str]
    specs: dict[str, dict[str, Any]]
    union: list[float]
    scale: float
    unit: str
    chains: list[list[str]]
    eot_n: int
    rows: dict[str, Any]
    info: dict[str, tuple[str, list[float]]]
    #: (attack label or WORST, eps) -> the per-sample outcomes behind that curve point
    samples: dict[tuple[str, float], pd.DataFrame] = field(default_factory=dict)

    def eps_cols(self, e: float) -> dict[str, Any]:
        """A curve row's epsilon columns: the value, its pretty form, the unit and the value in it."""
        return dict(eps=float(e), eps_label=pretty_eps(float(e)), eps_unit=self.unit,
                    eps_in_unit=from_norm(float(e), self.unit, self.scale))


def _group_of(key: tuple[Any, ...], group: pd.DataFrame, by_cell: dict[str, pd.DataFrame]) -> _Group | None:
    """The context of one group of cells, or None when none of its cells has outcomes."""
    dataset, defense, ckpt, norm, seed = key
    seed = int(seed)
    ids = [c for c in group["cell_id"] if c in by_cell]
    if not ids:
        return None
    specs = {r.cell_id: json.loads(r.spec) for r in group.itertuples()}
    union = sorted({float(e) for r in group.itertuples() for e in json.loads(r.grid)})
    scale = float(next(iter(specs.values())).get("eps_scale") or 1.0)
    unit = next(iter(specs.values())).get("l2_unit") or ("l2" if norm == "L2" else norm.lower())
    chains = _chains(ids, specs)
    eot_n = int(group["eot"].max())
    rows = {r.cell_id: r for r in group.itertuples()}
    info = {c: (rows[c].kind, [float(e) for e in json.loads(rows[c].grid)]) for c in ids}
    return _Group(dataset, defense, ckpt, norm, seed, ids, specs, union, scale, unit, chains, eot_n, rows, info)


def _attack_curves(grp: _Group, by_cell: dict[str, pd.DataFrame], flags: pd.DataFrame,
                   curve_rows: list[dict[str, Any]], attack_rows: list[dict[str, Any]]
                   ) -> tuple[dict[str, str], dict[str, str]]:
    """Append each attack's curve rows and attack row; return the cells' labels and the group's flags."""
    labels: dict[str, str] = {}
    cell_flags: dict[str, str] = {}
    for chain in grp.chains:
        cascade = len(chain) > 1
        for stage, cid in enumerate(chain):
            r = grp.rows[cid]
            label = r.attack_label
            if label in labels.values():  # the same attack run twice (other samples or settings)
                label = f"{label}#{cid[:6]}"
            labels[cid] = label
            out = by_cell[cid]
            kind, grid = grp.info[cid]
            g = grid if kind == "fixed" else grp.union
            acc = curve(out, g)
            clean = float(out["clean_correct"].mean())
            grp.samples.update({(label, float(e)): out for e in g})
            for f in flags[flags["cell_id"] == cid].itertuples():
                cell_flags[f.flag] = f.detail
            for e, a in zip(g, acc):
                curve_rows.append(dict(dataset=grp.dataset, defense=grp.defense, attack=label, norm=grp.norm,
                                       **grp.eps_cols(e), n=len(out), clean_acc=clean, robust_acc=float(a),
                                       eot_n=int(r.eot), checkpoint=grp.ckpt,
                                       mode="cascade" if cascade else "independent", stage=stage, seed=grp.seed))
            ok = out["clean_correct"].astype(bool)
            own = ok & (out["broken_by"] == r.attack_label) if "broken_by" in out else ok
            attack_rows.append(dict(
                dataset=grp.dataset, defense=grp.defense, checkpoint=grp.ckpt, norm=grp.norm, seed=grp.seed,
                attack=label, attack_name=r.attack, kind=kind, access=grp.specs[cid].get("access", "gradient"),
                reports_as=grp.specs[cid].get("reports_as"), mode="cascade" if cascade else "independent",
                stage=stage, n=len(out), grid=g, acc=acc,
                auc=auc(g, acc) if len(g) >= 2 else math.nan,
                # mean distance of the examples a minimization attack found itself (ADBD for RayS)
                adbd=float(out.loc[own, "broken_at"].mean()) if kind == "min" else math.nan))
    return labels, cell_flags


def _worst_curve(grp: _Group, by_cell: dict[str, pd.DataFrame], curve_rows: list[dict[str, Any]]) -> list[float]:
    """Append the worst case's curve rows, per eps of the union grid on the points every attack
    there ran on; return its accuracy per eps (NaN where no attack covers the eps)."""
    wc_acc = []
    for e in grp.union:
        got = _worst_at(e, grp.chains, grp.info, by_cell)
        if got is None:
            wc_acc.append(math.nan)
            continue
        wc, _ = got
        grp.samples[(WORST, float(e))] = wc
        a = float(curve(wc, [e])[0])
        wc_acc.append(a)
        curve_rows.append(dict(dataset=grp.dataset, defense=grp.defense, attack=WORST, norm=grp.norm,
                               **grp.eps_cols(e), n=len(wc), clean_acc=float(wc["clean_correct"].mean()),
                               robust_acc=a, eot_n=grp.eot_n, checkpoint=grp.ckpt, mode="", stage=-1,
                               seed=grp.seed))
    return wc_acc


def _group_headline(grp: _Group, headline: Headline, remembered: dict[str, float]) -> float:
    """The group's headline eps on its grid: the one asked for, else the last sweep's, else the dataset's."""
    hl_default = next((s.get("headline") for s in grp.specs.values() if s.get("headline") is not None), None)
    asked = _headline_for(headline, grp.norm)
    if asked is None:
        asked = remembered.get(grp.norm)
    target = asked if asked is not None else hl_default
    return _snap(grp.union, target)


def _board_row(grp: _Group, by_cell: dict[str, pd.DataFrame], hl: float, wc_acc: list[float],
               cell_flags: dict[str, str], attack_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The group's leaderboard row at the headline eps ``hl``; sets its attack rows' robust accuracy there."""
    got = _worst_at(hl, grp.chains, grp.info, by_cell)
    wc, n_chains = got if got is not None else (by_cell[grp.ids[0]], 1)
    sets = {len(by_cell[c]) for chain in grp.chains for c in chain if _covers(grp.info[c][0], grp.info[c][1], hl)}
    note = ""
    if len(sets) > 1:
        note = (f"worst case on the {len(wc)} points every attack at {pretty_eps(hl)} ran on"
                f" (attacks ran on {', '.join(str(k) for k in sorted(sets, reverse=True))} points)")
    for row in attack_rows:
        if (row["dataset"], row["defense"], row["checkpoint"], row["norm"], row["seed"]) == (
                grp.dataset, grp.defense, grp.ckpt, grp.norm, grp.seed):
            row["robust_acc"] = next((float(a) for e, a in zip(row["grid"], row["acc"]) if abs(e - hl) < EPS_TOL),
                                     math.nan)
    return dict(
        dataset=grp.dataset, defense=grp.defense, norm=grp.norm, seed=grp.seed, headline_eps=hl,
        headline_label=pretty_eps(hl), eps_unit=grp.unit, headline_in_unit=from_norm(hl, grp.unit, grp.scale),
        n=len(wc), clean_acc=float(wc["clean_correct"].mean()), robust_acc=float(curve(wc, [hl])[0]),
        auc=auc(grp.union, wc_acc) if len(grp.union) >= 2 else math.nan,
        attacks_in_headline=n_chains, eot_n=grp.eot_n, sample_note=note,
        flags=";".join(sorted(cell_flags)),
        flag_details="; ".join(f"{k}: {v}" for k, v in sorted(cell_flags.items())), checkpoint=grp.ckpt,
        _flag_map=dict(cell_flags))


def _add_cross_flags(grp: _Group, by_cell: dict[str, pd.DataFrame], labels: dict[str, str],
                     b: dict[str, Any]) -> None:
    """Merge the cross-attack flags of the group into its board row ``b``."""
    # compare attacks pairwise on the points both ran (e.g. PGD on 1,000 vs RayS on 100); a
    # cascade's later stages hold cumulative outcomes, so only each chain's first stage compares
    runs = {}
    for chain in grp.chains:
        cid = chain[0]
        runs[labels[cid]] = attack_run(by_cell[cid], grp.info[cid][1] if grp.info[cid][0] == "fixed" else grp.union,
                                       grp.specs[cid])
    new = cross_attack_flags(runs)
    if new:
        merged = b["_flag_map"] = {**b["_flag_map"], **new}
        b["flags"] = ";".join(sorted(merged))
        b["flag_details"] = "; ".join(f"{k}: {v}" for k, v in sorted(merged.items()))


def _remedy_effects(grp: _Group, by_cell: dict[str, pd.DataFrame], hl: float) -> dict[str, tuple[list[str], str]]:
    """Per flag whose remedy ran: the escalated stages' short labels and what they changed, read
    from the chain's outcomes just before the flag's first escalated stage and after its last:
    the points whose break epsilon fell (or that broke at all) and the robust accuracy at ``hl``.
    The text is empty when nothing changed."""
    stages: dict[str, list[str]] = {}
    for cid in grp.ids:
        for flag in grp.specs[cid].get("escalated") or ():
            stages.setdefault(str(flag), []).append(cid)
    out: dict[str, tuple[list[str], str]] = {}
    for flag, cids in stages.items():
        names = [str(grp.rows[c].attack_label).split(" (escalated")[0] for c in cids]
        up = grp.specs[cids[0]].get("upstream")
        if up not in by_cell:
            continue
        before = by_cell[up].set_index("sample_id")
        after = by_cell[cids[-1]].set_index("sample_id")
        before = before.loc[after.index]
        b_at = np.nan_to_num(before["broken_at"].to_numpy(dtype=float), nan=np.inf)
        a_at = np.nan_to_num(after["broken_at"].to_numpy(dtype=float), nan=np.inf)
        moved = int((a_at < b_at - EPS_TOL).sum())
        text = ""
        if moved:
            acc_b, acc_a = (float(curve(f.reset_index(), [hl])[0]) for f in (before, after))
            text = (f"{moved} point{'s' if moved != 1 else ''} broke anew or at a smaller eps; robust accuracy at"
                    f" {pretty_eps(hl)} on these {len(after)} points {100 * acc_b:.1f}% -> {100 * acc_a:.1f}%")
        out[flag] = (names, text)
    return out


def _mark_remedies(grp: _Group, by_cell: dict[str, pd.DataFrame], labels: dict[str, str], b: dict[str, Any]) -> None:
    """Say in the board row ``b`` what each flag's remedy found: ``escalated`` lists the stages the
    flags added (``after square (escalated: zero-gradients)``); a flag whose remedy ran is marked
    ``remedied`` (it broke points: the worst case includes them) or ``resolved`` (it changed no
    point's outcome) in ``flag_details``; ``flags_open`` keeps the flags no remedy ran for."""
    ran = _remedy_effects(grp, by_cell, float(b["headline_eps"]))
    details = dict(b.pop("_flag_map"))
    for flag, (names, text) in ran.items():
        if flag in details:
            details[flag] += (f" [remedied by {', '.join(names)}: {text}]" if text else
                              f" [resolved: {', '.join(names)} ran on the points left standing and changed none]")
    b["flag_details"] = "; ".join(f"{k}: {v}" for k, v in sorted(details.items()))
    b["flags_open"] = ";".join(sorted(k for k in details if k not in ran))
    b["flags_remedied"] = ";".join(sorted(k for k in details if k in ran and ran[k][1]))
    b["escalated"] = "; ".join(f"after {labels[c]}" for c in grp.ids if grp.specs[c].get("escalated"))


def open_flags(r: Any) -> list[str]:
    """A board row's flags that no remedy ran for (all its flags in a board without the column)."""
    col = r.get("flags_open") if hasattr(r, "get") else None
    text = r["flags"] if col is None or (isinstance(col, float) and math.isnan(col)) else col
    return [f for f in str(text or "").split(";") if f]


def flag_cell(r: Any) -> str:
    """A board row's flags for a table: ``⚠`` before the open ones, ``(remedied)`` or
    ``(resolved)`` after those whose remedy ran (:func:`_mark_remedies`)."""
    flags = [f for f in str(r["flags"] or "").split(";") if f]
    still = set(open_flags(r))
    remedied = str(r.get("flags_remedied") or "").split(";") if isinstance(r.get("flags_remedied"), str) else []
    done = [f"{f} ({'remedied' if f in remedied else 'resolved'})" for f in flags if f not in still]
    shown = [f"⚠ {';'.join(f for f in flags if f in still)}"] if still else []
    return "; ".join(shown + done)


def _frames(curve_rows: list[dict[str, Any]], attack_rows: list[dict[str, Any]],
            board_rows: list[dict[str, Any]]) -> Tables:
    """The tables from the rows: each curve row gains its group's flags, the board its seed aggregates."""
    curves = pd.DataFrame(curve_rows)
    attacks = pd.DataFrame(attack_rows).drop(columns=["grid", "acc"]) if attack_rows else pd.DataFrame()
    board = pd.DataFrame(board_rows)
    if not curves.empty:
        flag_map = {(r["dataset"], r["checkpoint"], r["norm"], r["seed"]): r["flags"] for _, r in board.iterrows()}
        curves["flags"] = [flag_map.get(k, "") for k in zip(curves["dataset"], curves["checkpoint"], curves["norm"],
                                                            curves["seed"])]
    if not board.empty:
        board = with_seed_aggregates(board)
    return Tables(curves, attacks, board)


def build_tables(store: Store, headline: Headline = None) -> Tables:
    """Long-form tables from everything finished in the store.

    ``headline`` is one epsilon for every norm, or a dict per norm; where it gives none, the
    last one a sweep of that norm asked for, else the dataset's default (snapped to the grid).
    The headline robust accuracy is the per-sample worst case over every attack that ran at
    that eps, on the points all of them ran on (never a mix of sample sets).
    """
    cells = store.cells_frame()
    cells = cells[cells["status"] == "done"]
    remembered = _headlines_from_runs(store)
    outcomes = store.outcomes_frame()
    flags = store.flags_frame()
    curve_rows: list[dict[str, Any]] = []
    attack_rows: list[dict[str, Any]] = []
    board_rows: list[dict[str, Any]] = []
    samples: dict[tuple[Any, ...], pd.DataFrame] = {}
    if cells.empty:
        return Tables(pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    by_cell = {cid: df.drop(columns="cell_id").sort_values("sample_id") for cid, df in outcomes.groupby("cell_id")}
    cells = cells.assign(seed=[int(json.loads(sp).get("seed") or 0) for sp in cells["spec"]])
    for key, group in cells.groupby(["dataset", "defense", "checkpoint", "norm", "seed"], sort=False):
        grp = _group_of(key, group, by_cell)
        if grp is None:
            continue
        labels, cell_flags = _attack_curves(grp, by_cell, flags, curve_rows, attack_rows)
        wc_acc = _worst_curve(grp, by_cell, curve_rows)
        hl = _group_headline(grp, headline, remembered)
        board_rows.append(_board_row(grp, by_cell, hl, wc_acc, cell_flags, attack_rows))
        _add_cross_flags(grp, by_cell, labels, board_rows[-1])
        _mark_remedies(grp, by_cell, labels, board_rows[-1])
        samples.update({(grp.dataset, grp.ckpt, grp.norm, grp.seed, a, e): f for (a, e), f in grp.samples.items()})
    t = _frames(curve_rows, attack_rows, board_rows)
    t.samples = samples
    return t


#: the board's numbers an aggregate row gives as mean and sample std over seeds
AGGREGATED = ("clean_acc", "robust_acc", "auc")


def with_seed_aggregates(board: pd.DataFrame) -> pd.DataFrame:
    """The board with, after each (dataset, norm, defense) evaluated at several distinct seeds
    (at one headline eps), an aggregate row: mean and sample std (ddof=1) over the seeds of
    clean accuracy, robust accuracy and AUC. Rows sorted by dataset, norm, the defense's mean
    robust accuracy (best first), then seed, the aggregate last."""
    board = board.assign(aggregate=False, seeds="", n_seeds=pd.NA, **{f"{k}_std": math.nan for k in AGGREGATED})
    rows = []
    for _, g in board.groupby(["dataset", "norm", "defense"], sort=False):
        if len(g) < 2 or g["seed"].nunique() != len(g) or g["headline_eps"].nunique() != 1:
            continue  # one seed, or rows that are not seed replicates of one evaluation
        first = g.iloc[0]
        row: dict[str, Any] = {c: first[c] for c in ("dataset", "defense", "norm", "headline_eps", "headline_label",
                                                     "eps_unit", "headline_in_unit", "eot_n")}
        row.update(seed=pd.NA, aggregate=True, seeds=",".join(str(int(v)) for v in sorted(g["seed"])),
                   n_seeds=len(g), n=int(g["n"].min()), attacks_in_headline=int(g["attacks_in_headline"].max()),
                   sample_note="", flags="", flag_details="", flags_open="", flags_remedied="", escalated="",
                   checkpoint="")
        for k in AGGREGATED:
            vals = g[k].astype(float)
            row[k] = float(vals.mean())
            row[f"{k}_std"] = float(vals.std(ddof=1))
        rows.append(row)
    if rows:
        board = pd.concat([board, pd.DataFrame(rows)], ignore_index=True)
    per = board[~board["aggregate"].astype(bool)]
    rank = per.groupby(["dataset", "norm", "defense"], sort=False)["robust_acc"].mean()
    first_seen = {k: i for i, k in enumerate(dict.fromkeys(zip(per["dataset"], per["norm"], per["defense"])))}
    keys = list(zip(board["dataset"], board["norm"], board["defense"]))
    board = board.assign(_rank=[rank.get(k, math.nan) for k in keys], _order=[first_seen.get(k, 0) for k in keys],
                         seed=board["seed"].astype("Int64"), n_seeds=board["n_seeds"].astype("Int64"))
    board = board.sort_values(["dataset", "norm", "_rank", "_order", "aggregate", "seed", "robust_acc"],
                              ascending=[True, True, False, True, True, True, False], kind="stable",
                              na_position="last")
    return board.drop(columns=["_rank", "_order"]).reset_index(drop=True)


def per_seed(board: pd.DataFrame) -> pd.DataFrame:
    """The board's rows of single evaluations (no aggregate rows)."""
    return board[~board["aggregate"].astype(bool)] if "aggregate" in board else board


def _replicates(t: Tables, r: pd.Series) -> list[pd.Series]:
    """The per-seed rows an aggregate row ``r`` summarises."""
    b = per_seed(t.board)
    seeds = {int(v) for v in str(r["seeds"]).split(",") if v}
    g = b[(b["dataset"] == r["dataset"]) & (b["norm"] == r["norm"]) & (b["defense"] == r["defense"])]
    return [row for _, row in g.iterrows() if int(row["seed"]) in seeds]


def attack_heading(r: pd.Series) -> str:
    """How an attack is headed in a table: ``after pgd`` for a cascade stage, else its label."""
    return f"after {r['attack']}" if r["mode"] == "cascade" else str(r["attack"])


def provenance(store: Store) -> dict[str, Any]:
    runs = store.runs_frame()
    last = runs.iloc[-1] if not runs.empty else None
    return {"command": (last["command"] if last is not None else "") or " ".join(sys.argv),
            "versions": json.loads(last["versions"]) if last is not None else {},
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{100 * v:.1f}"
    return str(v)


def _fmt_auc(v: Any) -> str:
    return "–" if is_nan(v) else f"{float(v):.3f}"


def group_attacks(t: Tables, r: pd.Series) -> pd.DataFrame:
    a = t.attacks
    if a.empty or bool(r.get("aggregate", False)):
        return a.iloc[0:0]
    return a[(a["dataset"] == r["dataset"]) & (a["defense"] == r["defense"]) & (a["checkpoint"] == r["checkpoint"])
             & (a["norm"] == r["norm"]) & (a["seed"] == r["seed"])]


def _fmt_pm(mean: Any, std: Any, auc_like: bool = False) -> str:
    """``mean ± std`` (accuracies in %, AUC as a fraction)."""
    if is_nan(mean):
        return "–"
    if auc_like:
        return f"{float(mean):.3f} ± {float(std):.3f}"
    return f"{100 * float(mean):.1f} ± {100 * float(std):.1f}"


def _attack_mean_std(t: Tables, r: pd.Series, column: str, field: str) -> tuple[float, float] | None:
    """Mean and sample std over an aggregate row's seeds of one attack column (``robust_acc`` or ``auc``)."""
    vals = []
    for row in _replicates(t, r):
        by = {attack_heading(a): a for _, a in group_attacks(t, row).iterrows()}
        if column not in by or is_nan(by[column][field]):
            return None
        vals.append(float(by[column][field]))
    if len(vals) < 2:
        return None
    return float(np.mean(vals)), float(np.std(vals, ddof=1))


@dataclass
class Section:
    """One table of the leaderboard (a dataset and a norm), as text cells, for every renderer."""

    title: str
    head: list[str]
    rows: list[list[str]]
    #: per row: (flags, their details) for the row's last cell
    flags: list[tuple[str, str]]
    notes: list[str]


def leaderboard_sections(t: Tables) -> list[Section]:
    board = t.board
    sections = []
    for (dataset, norm), part in board.groupby(["dataset", "norm"], sort=False):
        singles = per_seed(part)
        per = pd.concat([group_attacks(t, r) for _, r in singles.iterrows()]) if not t.attacks.empty else t.attacks
        cols = list(dict.fromkeys(attack_heading(r) for _, r in per.iterrows())) if not per.empty else []
        ns = {c: sorted({int(r["n"]) for _, r in per.iterrows() if attack_heading(r) == c}) for c in cols}
        auc_cols = [c for c in cols if any(not is_nan(r["auc"]) for _, r in per.iterrows() if attack_heading(r) == c)]
        adbd_cols = [c for c in cols if any(not is_nan(r["adbd"]) for _, r in per.iterrows() if attack_heading(r) == c)]
        # a seed column only where this table holds more than one seed
        seeded = "seed" in singles and singles["seed"].nunique() > 1
        unit = part["eps_unit"].iloc[0]
        hl = part["headline_label"].iloc[0]
        if unit == "rms":
            hl = f"{hl} (rms {part['headline_in_unit'].iloc[0]:.4g})"
        head = ["defense"] + (["seed"] if seeded else []) + ["clean", f"robust @ {hl}", "AUC"]
        head += [c if len(ns[c]) != 1 or ns[c][0] == int(part["n"].max()) else f"{c} (n={ns[c][0]})" for c in cols]
        head += [f"AUC {c}" for c in auc_cols] + [f"ADBD {c}" for c in adbd_cols] + ["n", "flags"]
        rows, flags, notes = [], [], []
        for _, r in part.iterrows():
            if bool(r.get("aggregate", False)):
                cells = [r["defense"], f"mean ± std ({r['n_seeds']} seeds)", _fmt_pm(r["clean_acc"], r["clean_acc_std"]),
                         _fmt_pm(r["robust_acc"], r["robust_acc_std"]), _fmt_pm(r["auc"], r["auc_std"], True)]
                for c in cols:
                    ms = _attack_mean_std(t, r, c, "robust_acc")
                    cells.append(_fmt_pm(*ms) if ms else "–")
                for c in auc_cols:
                    ms = _attack_mean_std(t, r, c, "auc")
                    cells.append(_fmt_pm(*ms, True) if ms else "–")
                cells += ["–" for _ in adbd_cols] + [str(int(r["n"])), ""]
                rows.append(cells)
                flags.append(("", ""))
                continue
            g = group_attacks(t, r)
            by = {attack_heading(a): a for _, a in g.iterrows()}
            cells = [r["defense"]] + ([str(int(r["seed"]))] if seeded else [])
            cells += [_fmt(r["clean_acc"]), _fmt(r["robust_acc"]), _fmt_auc(r["auc"])]
            cells += [_fmt(by[c]["robust_acc"]) if c in by else "–" for c in cols]
            cells += [_fmt_auc(by[c]["auc"]) if c in by else "–" for c in auc_cols]
            cells += ["–" if c not in by or is_nan(by[c]["adbd"]) else f"{by[c]['adbd']:.4f}" for c in adbd_cols]
            cells += [str(int(r["n"])), flag_cell(r)]
            rows.append(cells)
            flags.append((str(r["flags"] or ""), str(r["flag_details"] or "")))
            if r["sample_note"]:
                who = f"{r['defense']} (seed {int(r['seed'])})" if seeded else str(r["defense"])
                notes.append(f"{who}: {r['sample_note']}.")
        if seeded:
            notes.append("mean ± std: over the seeds, sample standard deviation (ddof=1).")
        sections.append(Section(f"{dataset}, {norm}", head, rows, flags, notes))
    return sections


LEGEND = ("Accuracies in %, on the evaluated test points. Robust accuracy = per-sample worst case over every"
          " attack that ran at the headline epsilon, on the points all of them ran on (n). In a cascade each"
          " attack runs only on the points the earlier ones left standing, so `after X` is the robust accuracy"
          " once X has run. AUC = area under the robust-accuracy curve / grid width (1 = robust everywhere);"
          " ADBD = mean distance of the adversarial examples a minimization attack found.")


def leaderboard_markdown(t: Tables, prov: dict[str, Any], table_eps: dict[str, list[float]] | None = None,
                         table_attacks: Sequence[str] = ()) -> str:
    lines = ["# Leaderboard", "", f"Made by `{prov['command']}`.", "", LEGEND, ""]
    for sec in leaderboard_sections(t):
        lines += [f"## {sec.title}", "", "| " + " | ".join(sec.head) + " |", "|" + "---|" * len(sec.head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in sec.rows]
        lines += [""] + ([f"* {n}" for n in sec.notes] + [""] if sec.notes else [])
        dataset, norm = sec.title.split(", ", 1)
        if table_eps and table_eps.get(norm):
            head, rows = per_eps_table(t, dataset, norm, table_eps[norm])
            lines += [f"### {sec.title}: robust accuracy at chosen epsilons", "",
                      "Worst case over the attacks at each eps (%), on each defense's evaluated points.", "",
                      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(cells) + " |" for cells in rows] + [""]
            for label in table_attacks:
                head, rows = per_eps_table(t, dataset, norm, table_eps[norm], attack=label)
                if not rows:
                    continue
                lines += [f"### {sec.title}: {label} alone at chosen epsilons", "",
                          f"Robust accuracy under {label} alone at each eps (%; in a cascade, its own stage),"
                          " on each defense's evaluated points.", "",
                          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                lines += ["| " + " | ".join(cells) + " |" for cells in rows] + [""]
    return "\n".join(lines)


def leaderboard_json(t: Tables, prov: dict[str, Any]) -> list[dict[str, Any]]:
    entries = []
    for _, r in t.board.iterrows():
        if bool(r.get("aggregate", False)):
            entries.append(_aggregate_json(t, r, prov))
            continue
        g = group_attacks(t, r)
        per = {attack_heading(a): _num(a["robust_acc"]) for _, a in g.iterrows() if not is_nan(a["robust_acc"])}
        aucs = {attack_heading(a): _num(a["auc"]) for _, a in g.iterrows() if not is_nan(a["auc"])}
        adbd = {attack_heading(a): _num(a["adbd"]) for _, a in g.iterrows() if not is_nan(a["adbd"])}
        ns = {attack_heading(a): int(a["n"]) for _, a in g.iterrows()}
        # RobustBench's autoattack_acc: the attack that declares it reports that field
        aa = [a for _, a in g.iterrows() if a.get("reports_as") == "autoattack_acc" and not is_nan(a["robust_acc"])]
        entries.append({
            # RobustBench model_info fields
            "name": r["defense"], "dataset": r["dataset"], "threat_model": r["norm"], "eps": _num(r["headline_eps"]),
            "eps_label": r["headline_label"], "clean_acc": _num(r["clean_acc"]),
            "reported": None, "autoattack_acc": _num(aa[-1]["robust_acc"]) if aa else None, "additional_data": False,
            "number_forward_passes": int(r["eot_n"]), "unreliable": bool(open_flags(r)), "footnote": r["flag_details"] or None,
            "link": None, "authors": None, "venue": None, "architecture": None,
            # ours
            "robust_acc": _num(r["robust_acc"]), "robust_acc_per_attack": per, "auc": _num(r["auc"]),
            "auc_per_attack": aucs, "adbd_per_attack": adbd, "n": int(r["n"]), "n_per_attack": ns,
            "sample_note": r["sample_note"] or None, "eps_unit": r["eps_unit"],
            "eps_in_unit": _num(r["headline_in_unit"]),
            "flags": [f for f in str(r["flags"]).split(";") if f],
            "checkpoint": r["checkpoint"], "seed": int(r["seed"]), "aggregate": False,
            "command": prov["command"], "versions": prov["versions"],
        })
    return entries


def _aggregate_json(t: Tables, r: pd.Series, prov: dict[str, Any]) -> dict[str, Any]:
    """An aggregate row: means and sample stds (ddof=1) over the seeds, per attack too."""
    cols = list(dict.fromkeys(attack_heading(a) for row in _replicates(t, r) for _, a in group_attacks(t, row).iterrows()))
    per: dict[str, float] = {}
    per_std: dict[str, float] = {}
    for c in cols:
        ms = _attack_mean_std(t, r, c, "robust_acc")
        if ms:
            per[c], per_std[c] = ms
    return {"name": r["defense"], "dataset": r["dataset"], "threat_model": r["norm"], "eps": _num(r["headline_eps"]),
            "eps_label": r["headline_label"], "aggregate": True,
            "seeds": [int(v) for v in str(r["seeds"]).split(",") if v], "n_seeds": int(r["n_seeds"]),
            **{k: _num(r[k]) for k in AGGREGATED}, **{f"{k}_std": _num(r[f"{k}_std"]) for k in AGGREGATED},
            "robust_acc_per_attack": per, "robust_acc_per_attack_std": per_std, "n": int(r["n"]),
            "eps_unit": r["eps_unit"], "eps_in_unit": _num(r["headline_in_unit"]),
            "command": prov["command"], "versions": prov["versions"]}


def is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _num(v: Any) -> float | None:
    if v is None or is_nan(v):
        return None
    return float(v)
