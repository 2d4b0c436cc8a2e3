"""Comparing runs: ``compare.csv/.md/.html`` and ``compare_<dataset>_<norm>.png``.

Each input is a results folder (its ``store.sqlite``), a ``leaderboard.json`` written by a sweep,
or a RobustBench ``model_info`` JSON file (read offline; see :func:`read_json_run`). Every input
becomes a set of points: (dataset, norm, eps, attack label or :data:`WORST`, model) with a robust
accuracy and its number of points ``n``; a store's points also keep their per-sample outcomes.

Every later input is compared with the first (the baseline). Two points match when dataset
(case-insensitive), norm, eps (to :data:`EPS_DECIMALS` decimals) and attack are the same and
the models are the same: the same weights (the ``checkpoint`` column, where both sides have
one), else the same name, or two names tied by a pair (``--pair A:name=B:name``).

Statistics per matched point, ``diff`` = later minus first (fractions):

* ``mcnemar``: both points come with per-sample outcomes on the same sample ids. A point is
  robust at eps when it is clean-correct and has no verified break at or below eps; the exact
  McNemar test on the discordant points (``broken_b_only``: robust in the first, broken in the
  later; ``broken_a_only``: the reverse) gives ``p`` (two-sided) and ``p_worse`` (one-sided:
  the later run is worse). ``ci_low``/``ci_high`` is Newcombe's square-and-add interval for a
  difference of paired proportions (Newcombe 1998, Statistics in Medicine 17:2635, method 10:
  the Wilson intervals of both proportions, combined with their estimated correlation).
* ``unpaired``: otherwise. ``ci_low``/``ci_high`` is Newcombe's hybrid score interval (Wilson
  intervals of each proportion, Newcombe 1998, method 10) for the difference at 95%; ``p`` and
  ``p_worse`` come from the two-proportion z-test with the pooled proportion. A number given
  without ``n`` (a RobustBench file) is taken as exact: its side adds no variance.

``worse_points`` (``--fail-if-worse``): with no margin, a point is worse when ``p_worse`` is below
alpha; with a margin of ``by`` points it is a non-inferiority test: worse when the one-sided
upper confidence bound (level 1 - alpha) of the difference, from the same interval as the
``ci_*`` columns, lies below ``-by``, i.e. the later run is significantly worse *by more than*
the margin, not merely worse with a point estimate past it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.files import atomic_path, write_text_atomic
from robustbench_er.core.metrics import EPS_TOL, mcnemar_p, mcnemar_two_sided_p, pretty_eps
from robustbench_er.core.norms import canonical_norm
from robustbench_er.core.text import parse_number
from robustbench_er.report.html import STYLE
from robustbench_er.report.tables import WORST, build_tables
from robustbench_er.store.results import Store

#: two inputs' epsilons equal to this many decimals are the same point (JSON files may round)
EPS_DECIMALS = 6
#: the two-sided 95% normal quantile
Z95 = 1.959963984540054
#: the columns of a run's points
POINT_COLUMNS = ["dataset", "norm", "eps", "attack", "model", "checkpoint", "n", "clean_acc", "robust_acc", "key"]
#: the columns of the comparison table
COLUMNS = ["dataset", "norm", "eps", "eps_label", "attack", "attack_b", "model", "model_b", "run_a", "run_b", "acc_a", "acc_b",
           "n_a", "n_b", "diff", "test", "p", "p_worse", "ci_low", "ci_high", "broken_b_only", "broken_a_only"]


@dataclass
class Run:
    """One input: its points (:data:`POINT_COLUMNS`), per-sample outcomes by point key, provenance."""

    label: str
    kind: str
    points: pd.DataFrame
    samples: dict[Any, pd.DataFrame] = field(default_factory=dict)
    provenance: list[str] = field(default_factory=list)


# ---- reading the inputs ----

def read_run(path: str | Path) -> Run:
    """One input of a comparison: a results folder or a leaderboard JSON file."""
    p = Path(path)
    if p.is_dir():
        if not (p / Store.FILENAME).is_file():
            raise UserInputError(f"No results store in {str(path)!r}: compare takes results folders (with"
                                 f" {Store.FILENAME}) or leaderboard JSON files.")
        return read_store_run(p, str(path))
    if not p.is_file():
        raise UserInputError(f"{str(path)!r} does not exist: compare takes results folders or leaderboard JSON files.")
    return read_json_run(p, str(path))


def _provenance_line(label: str, r: Any) -> str:
    try:
        versions = json.loads(r.versions or "{}")
        device = json.loads(r.config or "{}").get("device")
    except (ValueError, TypeError, AttributeError):
        versions, device = {}, None
    text = ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "unknown"
    return f"{label}, run {r.run_id}: `{r.command}`; versions: {text}; device: {device or 'unknown'}"


def read_store_run(folder: Path, label: str) -> Run:
    """A results folder's points: its curves (every attack and the worst case, every eps)."""
    store = Store(folder)
    try:
        t = build_tables(store)
        runs = store.runs_frame()
    finally:
        store.close()
    if t.curves.empty:
        raise UserInputError(f"The store in {label!r} has no finished cells to compare.")
    c = t.curves
    seeds = c.groupby(["dataset", "defense"])["seed"].transform("nunique")  # one name per model in every norm
    models = [f"{d}@seed{s}" if k > 1 else str(d) for d, s, k in zip(c["defense"], c["seed"], seeds)]
    keys = list(zip(c["dataset"], c["checkpoint"], c["norm"], c["seed"], c["attack"], c["eps"].astype(float)))
    points = pd.DataFrame({"dataset": c["dataset"].astype(str), "norm": c["norm"], "eps": c["eps"].astype(float),
                           "attack": c["attack"], "model": models, "checkpoint": c["checkpoint"].astype(str),
                           "n": c["n"].astype(float), "clean_acc": c["clean_acc"], "robust_acc": c["robust_acc"],
                           "key": keys})
    return Run(label, "store", points, {k: t.samples[k] for k in keys if k in t.samples},
               [_provenance_line(label, r) for r in runs.itertuples()])


def _number(value: Any, what: str, label: str, percent: bool) -> float:
    try:
        v = parse_number(value.strip().rstrip("%") if isinstance(value, str) else value)
    except ValueError as exc:
        raise UserInputError(f"{label}: {what} {value!r} is not a number.") from exc
    return v / 100.0 if percent else v


def _norm_of(entry: dict[str, Any], path: Path, label: str) -> str:
    """The entry's norm: ``threat_model`` or ``norm``, else a Linf/L2/L1 folder of its path."""
    given = entry.get("threat_model", entry.get("norm"))
    if given is None:
        given = next((part for part in reversed(path.parts[:-1]) if part.lower() in ("linf", "l2", "l1")), None)
    if given is None:
        raise UserInputError(f"{label} gives no threat model: add \"threat_model\": \"Linf\" (or L2, L1).")
    try:
        return canonical_norm(str(given))
    except UserInputError:
        raise UserInputError(f"{label}: threat model {given!r} is not Linf, L2 or L1.") from None


def _optional_n(value: Any) -> float:
    try:
        return float(int(value)) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _entry_points(entry: dict[str, Any], path: Path, label: str, single: bool) -> list[dict[str, Any]]:
    """The points of one JSON entry: ours (fractions) or RobustBench's (percentages)."""
    ours = "robust_acc" in entry
    if not ours and "autoattack_acc" not in entry:
        raise UserInputError(f"{label} is neither a robustbench-er leaderboard.json nor a RobustBench model_info"
                             " file (an entry has no robust_acc or autoattack_acc).")
    if entry.get("aggregate") or entry.get("dataset") in (None, ""):
        if entry.get("aggregate"):
            return []
        raise UserInputError(f"{label}: an entry names no dataset.")
    if ours:
        name = entry.get("name")
    else:  # a RobustBench file is named after the model; its "name" is the paper's title
        name = entry.get("model_id") or entry.get("id") or (path.stem if single else entry.get("name"))
    base = {"dataset": str(entry["dataset"]), "norm": _norm_of(entry, path, label),
            "eps": _number(entry.get("eps"), "eps", label, False), "model": str(name or path.stem),
            "checkpoint": str(entry.get("checkpoint") or ""), "n": _optional_n(entry.get("n")),
            "clean_acc": _number(entry["clean_acc"], "clean_acc", label, not ours)
            if entry.get("clean_acc") is not None else math.nan, "key": None}
    headline = entry["robust_acc"] if ours else entry["autoattack_acc"]
    if headline is None:
        raise UserInputError(f"{label}: the entry of {base['model']!r} has no robust accuracy.")
    points = [{**base, "attack": WORST, "robust_acc": _number(headline, "robust_acc", label, not ours)}]
    per_n = entry.get("n_per_attack") or {}
    for attack, acc in (entry.get("robust_acc_per_attack") or {}).items() if ours else ():
        points.append({**base, "attack": str(attack).removeprefix("after "), "n": _optional_n(per_n.get(attack)),
                       "robust_acc": _number(acc, "robust_acc", label, False)})
    return points


def read_json_run(path: Path, label: str) -> Run:
    """A leaderboard JSON file: ours (``leaderboard.json``: a list of entries with ``robust_acc``,
    ``robust_acc_per_attack``, ``n``, ``checkpoint``, fractions) or RobustBench's ``model_info``
    (one entry or a list; ``clean_acc`` and ``autoattack_acc`` in percent, numbers or strings;
    ``eps`` as ``8/255`` or a number; ``dataset``; ``threat_model`` or ``norm``, else a Linf/L2/L1
    folder in the file's path; the model's name is ``model_id``/``id``, else the file's stem for a
    one-model file, else ``name``; ``autoattack_acc`` is matched with the worst case)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserInputError(f"{label} is not a readable JSON file ({type(exc).__name__}).") from None
    entries = [data] if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise UserInputError(f"{label} is neither a robustbench-er leaderboard.json nor a RobustBench model_info file.")
    rows = [p for e in entries for p in _entry_points(e, path, label, isinstance(data, dict))]
    if not rows:
        raise UserInputError(f"{label} has no single-run entry to compare.")
    kind = "leaderboard" if "robust_acc" in entries[0] else "robustbench"
    commands = dict.fromkeys(str(e["command"]) for e in entries if e.get("command"))
    prov = [f"{label}: `{c}` (from the JSON file)" for c in commands] or [f"{label}: {kind} JSON file, no run record"]
    return Run(label, kind, pd.DataFrame(rows, columns=POINT_COLUMNS), {}, prov)


# ---- matching ----

def _input_index(ref: str, labels: list[str]) -> int | None:
    """An input given by its 1-based position or by its path as given, or None."""
    ref = ref.strip()
    if ref.isdigit() and 1 <= int(ref) <= len(labels):
        return int(ref) - 1
    for i, lab in enumerate(labels):
        if ref == lab or Path(ref) == Path(lab):
            return i
    return None


def parse_pair(text: str, labels: list[str], option: str = "--pair") -> tuple[tuple[int, str], tuple[int, str]]:
    """``A:name=B:name`` (A, B: 1-based input positions or paths) -> ((a, name), (b, name))."""
    for m in re.finditer("=", text):
        left, right = text[:m.start()], text[m.end():]
        if ":" not in left or ":" not in right:
            continue
        (ra, na), (rb, nb) = left.split(":", 1), right.split(":", 1)
        a, b = _input_index(ra, labels), _input_index(rb, labels)
        if a is not None and b is not None and na.strip() and nb.strip():
            return (a, na.strip()), (b, nb.strip())
    example = "1:pgd=2:pgd transferred from none" if option == "--pair-attack" else "1:madry=2:madry-v2"
    raise UserInputError(f"{option} {text!r} must be A:name=B:name with A and B input positions (1 to"
                         f" {len(labels)}) or paths, e.g. {example}.")


def _match_names(runs: list[Run], pairs: list[tuple[tuple[int, str], tuple[int, str]]]) -> list[pd.Series]:
    """Per run, each point's model as the baseline calls it (pairs, then same weights, then name;
    None: left out)."""
    alias: dict[tuple[int, str], str] = {}
    for (a, na), (b, nb) in pairs:
        if b == 0 or (a != 0 and b < a):
            (a, na), (b, nb) = (b, nb), (a, na)
        alias[(b, nb)] = alias.get((a, na), na)
    base = runs[0].points
    by_weights = {ck: m for ck, m in zip(base["checkpoint"], base["model"]) if ck and ck not in ("nan", "None")}
    out = []
    for i, run in enumerate(runs):
        claimed = {target for (j, _), target in alias.items() if j == i}
        names: list[str | None] = []
        for model, ck in zip(run.points["model"], run.points["checkpoint"]):
            if (i, model) in alias:
                names.append(alias[(i, model)])
                continue
            name = by_weights[ck] if i > 0 and ck in by_weights else model
            # a name a pair gave to another model of this input is that model's alone (the same
            # folder given twice, one seed's model paired with another's): this one is left out
            names.append(None if name in claimed else name)
        out.append(pd.Series(names, index=run.points.index, dtype=object))
    return out


def _match_attacks(runs: list[Run], pairs: list[tuple[tuple[int, str], tuple[int, str]]]) -> list[pd.Series]:
    """Per run, each point's attack as the baseline calls it. Without attack pairs, its own label.
    With them, only the paired attacks are compared: the baseline keeps the attacks it names, and
    a later run's attack paired with a baseline attack takes that attack's label (its other
    points are left out, NaN)."""
    if not pairs:
        return [run.points["attack"].astype(object) for run in runs]
    alias: dict[int, dict[str, str]] = {}
    for (a, na), (b, nb) in pairs:
        if b == 0 and a != 0:
            (a, na), (b, nb) = (b, nb), (a, na)
        if a != 0 or b == 0:
            raise UserInputError(f"--pair-attack {a + 1}:{na}={b + 1}:{nb} must pair an attack of the first input"
                                 " (the baseline) with one of a later input, e.g. 1:pgd=2:transfer.")
        alias.setdefault(0, {})[na] = na
        alias.setdefault(b, {})[nb] = na
    out = []
    for i, run in enumerate(runs):
        names = alias.get(i, {})
        known = set(run.points["attack"])
        missing = sorted(set(names) - known)
        if missing:
            raise UserInputError(f"--pair-attack names {missing[0]!r}, which {run.label!r} does not have; its attacks:"
                                 f" {', '.join(sorted(map(str, known)))}.")
        out.append(run.points["attack"].map(names).astype(object))
    return out


def _keyed(run: Run, match: pd.Series, attack: pd.Series) -> pd.DataFrame:
    p = run.points.assign(match=match, attack_key=attack, ds=run.points["dataset"].str.lower(),
                          eps_key=run.points["eps"].astype(float).round(EPS_DECIMALS))
    return p[p["attack_key"].notna() & p["match"].notna()].drop_duplicates(["ds", "norm", "eps_key", "attack_key",
                                                                            "match"])


# ---- statistics ----

def _verdicts(frame: pd.DataFrame, eps: float) -> pd.Series:
    """Per sample id: robust at ``eps`` (clean-correct, no verified break at or below eps)."""
    broken = np.nan_to_num(frame["broken_at"].to_numpy(dtype=float), nan=np.inf) <= eps + EPS_TOL
    ok = frame["clean_correct"].to_numpy().astype(bool) & ~broken
    return pd.Series(ok, index=frame["sample_id"].to_numpy())


def paired_stats(fa: pd.DataFrame, fb: pd.DataFrame, eps: float) -> dict[str, Any]:
    """The exact McNemar test of two runs' per-sample verdicts at ``eps`` on the same sample ids,
    and Newcombe's paired interval of the difference (:func:`paired_interval`)."""
    va = _verdicts(fa, eps)
    vb = _verdicts(fb, eps).reindex(va.index)
    b_only, a_only = int((va & ~vb).sum()), int((~va & vb).sum())
    both = int((va & vb).sum())
    acc_a, acc_b = float(va.mean()), float(vb.mean())
    lo, hi = paired_interval(both, b_only, a_only, len(va) - both - b_only - a_only)
    return dict(acc_a=acc_a, acc_b=acc_b, n_a=len(va), n_b=len(vb), diff=acc_b - acc_a, test="mcnemar",
                p=mcnemar_two_sided_p(b_only, a_only), p_worse=mcnemar_p(b_only, a_only),
                ci_low=lo, ci_high=hi, broken_b_only=b_only, broken_a_only=a_only)


def paired_interval(both: int, first_only: int, later_only: int, neither: int,
                    z: float = Z95) -> tuple[float, float]:
    """Newcombe's square-and-add interval (Newcombe 1998, method 10) for ``p_later - p_first`` of
    two paired proportions, from the 2 x 2 table of per-sample verdicts: robust in ``both`` runs,
    in the ``first_only``, in the ``later_only``, in ``neither``; ``z``: the normal quantile (1.96
    for a two-sided 95% interval, 1.645 for a one-sided 95% bound).

    The Wilson interval of each proportion is widened or narrowed by the correlation of the two,
    estimated as in the paper with its continuity adjustment (a product difference between 0 and
    n/2 counts as no correlation). Written here: scipy and statsmodels have no paired version."""
    n = both + first_only + later_only + neither
    if n <= 0:
        return math.nan, math.nan
    pa, pb = (both + first_only) / n, (both + later_only) / n
    la, ua = wilson(pa, n, z)
    lb, ub = wilson(pb, n, z)
    margins = (both + first_only) * (later_only + neither) * (both + later_only) * (first_only + neither)
    cross = both * neither - first_only * later_only
    adjusted = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = adjusted / math.sqrt(margins) if margins > 0 else 0.0
    d = pb - pa
    lo = d - math.sqrt(max(0.0, (pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2))
    hi = d + math.sqrt(max(0.0, (ub - pb) ** 2 - 2 * phi * (ub - pb) * (pa - la) + (pa - la) ** 2))
    return max(-1.0, lo), min(1.0, hi)


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``p`` of ``n``; (p, p) when n is unknown (NaN)."""
    if not n or math.isnan(n) or n <= 0:
        return p, p
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def unpaired_interval(pa: float, na: float, pb: float, nb: float, z: float = Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (Newcombe 1998, method 10) of ``pb - pa`` for two
    independent proportions; an unknown n (NaN) counts as exact."""
    la, ua = wilson(pa, na, z)
    lb, ub = wilson(pb, nb, z)
    d = pb - pa
    return d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2), d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)


def unpaired_stats(pa: float, na: float, pb: float, nb: float) -> dict[str, Any]:
    """Newcombe's hybrid score 95% interval of ``pb - pa`` and the pooled two-proportion z-test
    (two-sided ``p``; ``p_worse``: one-sided, b below a). An unknown n (NaN) counts as exact."""
    d = pb - pa
    lo, hi = unpaired_interval(pa, na, pb, nb)
    known = [(p, n) for p, n in ((pa, na), (pb, nb)) if not math.isnan(n) and n > 0]
    if len(known) == 2:
        pooled = (pa * na + pb * nb) / (na + nb)
        se = math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    else:
        se = math.sqrt(sum(p * (1 - p) / n for p, n in known))
    if se > 0:
        z = d / se
        p_worse, p_two = _normal_cdf(z), min(1.0, 2 * _normal_cdf(-abs(z)))
    else:
        p_worse, p_two = (1.0, 1.0) if abs(d) < EPS_TOL else ((0.0 if d < 0 else 1.0), 0.0)
    return dict(acc_a=pa, acc_b=pb, n_a=na, n_b=nb, diff=d, test="unpaired", p=p_two, p_worse=p_worse,
                ci_low=lo, ci_high=hi, broken_b_only=pd.NA, broken_a_only=pd.NA)


def _point_stats(a: Any, b: Any, run_a: Run, run_b: Run) -> dict[str, Any]:
    fa = run_a.samples.get(a.key) if a.key is not None else None
    fb = run_b.samples.get(b.key) if b.key is not None else None
    if fa is not None and fb is not None and set(fa["sample_id"]) == set(fb["sample_id"]):
        return paired_stats(fa, fb, float(a.eps))
    return unpaired_stats(float(a.robust_acc), float(a.n), float(b.robust_acc), float(b.n))


@dataclass
class Comparison:
    """The comparison table (:data:`COLUMNS`) and, for its plots, every run's worst-case curve of
    each matched model (run, dataset, norm, model, eps, robust_acc)."""

    table: pd.DataFrame
    curves: pd.DataFrame
    curve_title: str = "worst case over attacks"


def compare_runs(runs: list[Run], pairs: list[str] | None = None,
                 attack_pairs: list[str] | None = None) -> Comparison:
    """Every later run's points matched with the first's, with the statistics of each pair.
    ``attack_pairs`` (``A:attack=B:attack``) compares the named attacks only, each later one with
    the baseline's attack it is paired with (one run given twice compares two of its attacks)."""
    if len(runs) < 2:
        raise UserInputError("compare needs at least two inputs.")
    labels = [r.label for r in runs]
    matches = _match_names(runs, [parse_pair(t, labels) for t in pairs or []])
    attacks = _match_attacks(runs, [parse_pair(t, labels, "--pair-attack") for t in attack_pairs or []])
    table = _table(runs, matches, attacks)
    curves = []
    for run, match, attack in zip(runs, matches, attacks):
        p = run.points.assign(model=match, run=run.label)
        if attack_pairs:  # the paired attacks' curves, each labelled with its attack
            p = p[attack.notna()]
            p = p.assign(run=run.label + ": " + p["attack"].astype(str))
        else:
            p = p[p["attack"] == WORST]
        p = p[p["model"].isin(set(table["model"]))]
        curves.append(p[["run", "dataset", "norm", "model", "eps", "robust_acc"]])
    title = "the paired attacks" if attack_pairs else "worst case over attacks"
    return Comparison(table, pd.concat(curves, ignore_index=True), title)


def _table(runs: list[Run], matches: list[pd.Series], attacks: list[pd.Series]) -> pd.DataFrame:
    """The matched points of every later run against the first, with their statistics."""
    base = _keyed(runs[0], matches[0], attacks[0])
    on = ["ds", "norm", "eps_key", "attack_key", "match"]
    rows = []
    for run, match, attack in zip(runs[1:], matches[1:], attacks[1:]):
        merged = base.merge(_keyed(run, match, attack), on=on, suffixes=("_a", "_b"))
        if merged.empty:
            raise UserInputError(f"Nothing of {run.label!r} matches {runs[0].label!r} (same dataset, norm, eps,"
                                 " attack and model); name models with --pair A:name=B:name and attacks with"
                                 " --pair-attack A:attack=B:attack.")
        for m in merged.itertuples(index=False):
            a = pd.Series({k: getattr(m, f"{k}_a") for k in ("key", "eps", "robust_acc", "n")})
            b = pd.Series({k: getattr(m, f"{k}_b") for k in ("key", "eps", "robust_acc", "n")})
            rows.append(dict(dataset=m.dataset_a, norm=m.norm, eps=float(m.eps_a), eps_label=pretty_eps(float(m.eps_a)),
                             attack=m.attack_a, attack_b=m.attack_b, model=m.model_a, model_b=m.model_b,
                             run_a=runs[0].label, run_b=run.label, **_point_stats(a, b, runs[0], run)))
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["run_b", "dataset", "norm", "model", "attack", "eps"], kind="stable").reset_index(drop=True)


def upper_bound(row: Any, alpha: float) -> float:
    """The one-sided upper confidence bound (level 1 - ``alpha``) of a table row's difference:
    the paired interval for ``mcnemar`` rows, the unpaired one otherwise."""
    z = NormalDist().inv_cdf(1 - alpha)
    if row.test == "mcnemar":
        n, first_only, later_only = int(row.n_a), int(row.broken_b_only), int(row.broken_a_only)
        both = int(round(row.acc_a * n)) - first_only
        return paired_interval(both, first_only, later_only, n - both - first_only - later_only, z)[1]
    return unpaired_interval(float(row.acc_a), float(row.n_a), float(row.acc_b), float(row.n_b), z)[1]


def worse_points(table: pd.DataFrame, last: str, alpha: float = 0.05, by: float = 0.0) -> list[str]:
    """One sentence per point where the run ``last`` is significantly worse than the first: with
    ``by`` = 0, one-sided p < ``alpha``; with a margin of ``by`` percentage points, the one-sided
    upper confidence bound (level 1 - ``alpha``) of the difference below ``-by`` (a non-inferiority
    test: significantly worse by more than the margin)."""
    rows = table[(table["run_b"] == last) & (table["diff"] < 0)]
    out = []
    for r in rows.itertuples():
        if by > 0:
            bound = upper_bound(r, alpha)
            if not 100 * bound < -by:
                continue
            why = f"{r.test}; at {100 * (1 - alpha):g}% confidence at least {-100 * bound:.1f} points worse, more than {by:g}"
        elif r.p_worse < alpha:
            why = f"{r.test}, one-sided p={r.p_worse:.2g}"
        else:
            continue
        model = r.model if r.model == r.model_b else f"{r.model} / {r.model_b}"
        attack = r.attack if r.attack == r.attack_b else f"{r.attack} / {r.attack_b}"
        out.append(f"{model} on {r.dataset} {r.norm} at eps {r.eps_label} ({attack}): {100 * r.acc_b:.1f}% in"
                   f" {r.run_b} against {100 * r.acc_a:.1f}% in {r.run_a}, {100 * r.diff:+.1f} points ({why}).")
    return out


# ---- files ----

def _pct(v: Any, signed: bool = False) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * float(v):+.1f}" if signed else f"{100 * float(v):.1f}"


def _n(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else str(int(v))


def _cells(r: Any) -> list[str]:
    ci = "–" if math.isnan(r.ci_low) else f"[{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]"
    return [str(r.model) if r.model == r.model_b else f"{r.model} / {r.model_b}",
            str(r.attack) if r.attack == r.attack_b else f"{r.attack} / {r.attack_b}", r.eps_label,
            f"{_pct(r.acc_a)} (n={_n(r.n_a)})", f"{_pct(r.acc_b)} (n={_n(r.n_b)})", _pct(r.diff, True), r.test,
            f"{r.p:.3g}", ci]


HEAD = ["model", "attack", "eps", "first", "later", "diff", "test", "p", "95% CI of diff"]
LEGEND = ("Robust accuracy in %; diff = later minus first, in points. test: mcnemar = exact McNemar test on the"
          " per-sample verdicts (same sample ids in both runs; p two-sided) with Newcombe's interval for paired"
          " proportions; unpaired = two-proportion z-test (pooled) with Newcombe's hybrid score interval for the"
          " difference (a number without n is taken as exact).")


def _sections(table: pd.DataFrame) -> list[tuple[str, list[list[str]]]]:
    return [(f"{b} against {a}: {ds}, {norm}", [_cells(r) for r in part.itertuples()])
            for (b, a, ds, norm), part in table.groupby(["run_b", "run_a", "dataset", "norm"], sort=False)]


def compare_markdown(table: pd.DataFrame, runs: list[Run], plots: list[Path]) -> str:
    lines = ["# Comparison", "", LEGEND, "", "## Inputs", ""]
    lines += [f"{i}. `{r.label}` ({r.kind})" for i, r in enumerate(runs, 1)] + ["", "## Runs", ""]
    lines += [f"* {line}" for r in runs for line in r.provenance] + [""]
    for title, rows in _sections(table):
        lines += [f"## {title}", "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in rows] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def compare_html(table: pd.DataFrame, runs: list[Run], plots: list[Path]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>robustbench-er comparison</title>",
             f"<style>{STYLE}</style></head><body>", "<h1>Comparison</h1>", f"<p>{e(LEGEND)}</p>", "<h2>Inputs</h2><ol>"]
    parts += [f"<li><code>{e(r.label)}</code> ({e(r.kind)})</li>" for r in runs] + ["</ol><h2>Runs</h2><ul>"]
    parts += [f"<li>{e(line)}</li>" for r in runs for line in r.provenance] + ["</ul>"]
    for title, rows in _sections(table):
        parts.append(f"<h2>{e(title)}</h2><table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in HEAD)
                     + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>" for cells in rows]
        parts.append("</tbody></table>")
    for p in plots:
        data = p.read_bytes()
        parts.append(f'<h3>{e(p.stem)}</h3><img alt="{e(p.stem)}" src="data:image/png;base64,'
                     f'{base64.b64encode(data).decode("ascii")}">')
    parts.append("</body></html>")
    return "\n".join(parts)




def plot_comparison(curves: pd.DataFrame, out: Path, title: str = "worst case over attacks") -> list[Path]:
    """``compare_<dataset>_<norm>.png``: per matched model a panel of the worst-case robust accuracy
    of every run (one colour per run; a single point, e.g. a RobustBench number, as a marker)."""
    paths = []
    runs = list(dict.fromkeys(curves["run"]))
    for (dataset, norm), part in curves.groupby(["dataset", "norm"], sort=False):
        models = list(dict.fromkeys(part["model"]))
        fig = Figure(figsize=(4.2 * min(len(models), 3), 3.6 * math.ceil(len(models) / 3)))
        axes = np.atleast_1d(fig.subplots(math.ceil(len(models) / 3), min(len(models), 3), squeeze=False)).ravel()
        for ax, model in zip(axes, models):
            for i, run in enumerate(runs):
                s = part[(part["model"] == model) & (part["run"] == run)].sort_values("eps")
                if s.empty:
                    continue
                style = dict(color=f"C{i % 10}", label=f"{i + 1}. {run}")
                if len(s) > 1:
                    ax.plot(s["eps"], 100 * s["robust_acc"], marker="o", ms=3, lw=1.8, **style)
                else:
                    ax.scatter(s["eps"], 100 * s["robust_acc"], marker="D", s=36, **style)
            ax.set_title(str(model), fontsize=9)
            ax.set_xlabel(f"epsilon ({norm})")
            ax.set_ylabel("robust accuracy (%)")
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in axes[len(models):]:
            ax.set_visible(False)
        fig.suptitle(f"{dataset}, {norm}: {title}", fontsize=10)
        fig.tight_layout()
        p = out / f"compare_{dataset}_{norm}.png"
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        paths.append(p)
    return paths


def write_comparison(comparison: Comparison, runs: list[Run], out: Path) -> dict[str, Path]:
    """``compare.csv``, ``compare.md``, ``compare.html`` and the plots, under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_comparison(comparison.curves, out, comparison.curve_title)
    paths = {"compare.csv": out / "compare.csv", "compare.md": out / "compare.md", "compare.html": out / "compare.html"}
    write_text_atomic(paths["compare.csv"], comparison.table.to_csv(index=False))
    write_text_atomic(paths["compare.md"], compare_markdown(comparison.table, runs, plots))
    write_text_atomic(paths["compare.html"], compare_html(comparison.table, runs, plots))
    return {**paths, **{p.name: p for p in plots}}
