"""Hyper-parameter studies: one defense's hyper-parameter swept over values (Li et al. 2021,
Figures 7-9).

An experiment file's ``study:`` section (a mapping, or a list of them)::

    study:
      defense: er-classifier
      param: embed_dim
      values: [2, 4, 8, 16]
      eps: [0.1, 0.2, 0.3]      # where robust accuracy is read (default: the sweep's headline eps)

adds the variants ``er-classifier[embed_dim=2]``, ... to the sweep's defenses. Each variant is a
defense of its own in the sweep (its checkpoint is trained once and cached like any other; it
is the base defense's checkpoint with that value), so its curves, flags and leaderboard row are
the sweep's. After the sweep, :func:`write_study` reads the worst-case robust accuracy of each
variant at each chosen eps from the store and writes ``study_<defense>_<param>.csv`` and a plot
of robust (and clean) accuracy against the varied value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.files import atomic_path
from robustbench_er.core.metrics import EPS_TOL
from robustbench_er.plugins.registry import variant_label
from robustbench_er.report.tables import WORST, build_tables
from robustbench_er.store.results import Store

STUDY_KEYS = ("defense", "param", "values", "eps")


def study_variants(study: Mapping[str, Any], where: str = "study") -> list[str]:
    """The defense variants a study adds to its sweep (one sentence on a malformed study)."""

    unknown = sorted(set(study) - set(STUDY_KEYS))
    if unknown:
        raise UserInputError(f"{where}.{unknown[0]}: not a study key (known: {', '.join(STUDY_KEYS)}).")
    for key in ("defense", "param"):
        if not isinstance(study.get(key), str) or not study[key].strip():
            raise UserInputError(f"{where}.{key}: give a name, got {study.get(key)!r}.")
    values = study.get("values")
    if not isinstance(values, list) or not values:
        raise UserInputError(f"{where}.values: give a non-empty list of values, got {values!r}.")
    if len({repr(v) for v in values}) != len(values):
        raise UserInputError(f"{where}.values: a value is listed twice ({values!r}).")
    eps = study.get("eps")
    if eps is not None and not (isinstance(eps, list) and eps and all(isinstance(e, (int, float)) for e in eps)):
        raise UserInputError(f"{where}.eps: give a non-empty list of numbers, got {eps!r}.")
    return [variant_label(study["defense"].strip(), {study["param"].strip(): v}) for v in values]


def write_study(out: Path, study: Mapping[str, Any], headline: float | None, command: str) -> dict[str, Path]:
    """``study_<defense>_<param>.csv`` and ``.png`` from the sweep's store in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd


    store = Store(out)
    try:
        curves = build_tables(store).curves
    finally:
        store.close()
    variants = study_variants(study)
    wc = curves[curves["attack"] == WORST] if len(curves) else curves
    eps_list = [float(e) for e in (study.get("eps") or ([headline] if headline is not None else []))]
    if not eps_list and len(wc):
        eps_list = [float(wc["eps"].max())]
    rows = []
    for value, label in zip(study["values"], variants):
        part = wc[wc["defense"] == label]
        if not len(part):
            continue
        for e in eps_list:
            near = part.iloc[(part["eps"] - e).abs().argsort()[:1]]
            r = near.iloc[0]
            if abs(float(r["eps"]) - e) > EPS_TOL:
                continue
            rows.append({"defense": study["defense"], "param": study["param"], "value": value, "variant": label,
                         "norm": r["norm"], "eps": e, "clean_acc": float(r["clean_acc"]),
                         "robust_acc": float(r["robust_acc"]), "n": int(r["n"])})
    df = pd.DataFrame(rows)
    stem = f"study_{study['defense']}_{study['param']}".replace("/", "_")
    csv, png = Path(out) / f"{stem}.csv", Path(out) / f"{stem}.png"
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if len(df):
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in df["value"])
        xs = list(df["value"].drop_duplicates())
        pos = {v: (float(v) if numeric else i) for i, v in enumerate(xs)}
        first = df[df["eps"] == df["eps"].iloc[0]]
        ax.plot([pos[v] for v in first["value"]], 100 * first["clean_acc"], "k--", marker="s", label="clean")
        for e, g in df.groupby("eps"):
            ax.plot([pos[v] for v in g["value"]], 100 * g["robust_acc"], marker="o", label=f"robust @ {e:g}")
        if numeric and min(pos.values()) > 0 and max(pos.values()) / min(pos.values()) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks([pos[v] for v in xs], [str(v) for v in xs])
    ax.set_xlabel(f"{study['param']} of {study['defense']}")
    ax.set_ylabel("accuracy (%, worst case over the sweep's attacks)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{study['defense']}: {study['param']} study", fontsize=10)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return {"csv": csv, "png": png}
