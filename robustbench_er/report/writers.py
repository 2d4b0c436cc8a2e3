"""The report files: accuracy-vs-epsilon and AUC plots, and every file of a report folder
(CSV, Markdown, JSON, PNG, HTML) written from one :class:`~robustbench_er.report.tables.Tables`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from robustbench_er.core.files import atomic_path, write_text_atomic
from robustbench_er.report.html import leaderboard_html
from robustbench_er.report.tables import (
    MAX_DETAILED_DEFENSES,
    WORST,
    Headline,
    Tables,
    attack_heading,
    build_tables,
    group_attacks,
    is_nan,
    leaderboard_json,
    leaderboard_markdown,
    per_seed,
    provenance,
    table_attacks_from_runs,
    table_eps_from_runs,
)
from robustbench_er.store.results import Store


def plot_curves(curves: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for (dataset, norm), part in curves.groupby(["dataset", "norm"], sort=False):
        if "seed" in part and part["seed"].nunique() > 1:  # one line per (defense, seed)
            part = part.assign(defense=[f"{d} · seed {s}" for d, s in zip(part["defense"], part["seed"])])
        defenses = list(dict.fromkeys(part["defense"]))
        # with many defenses only the worst-case curves are drawn (the CSV has every attack)
        detailed = len(defenses) <= MAX_DETAILED_DEFENSES
        fig, ax = plt.subplots(figsize=(7.5 if detailed else 9.5, 4.8))
        colors = plt.get_cmap("tab10" if len(defenses) <= 10 else "tab20")
        styles = ["--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3))]
        attack_style = {a: styles[j % len(styles)] for j, a in enumerate(dict.fromkeys(a for a in part["attack"] if a != WORST))}
        for i, d in enumerate(defenses):
            sub = part[part["defense"] == d]
            color = colors(i % colors.N)
            for attack, s in sub.groupby("attack", sort=False):
                s = s.sort_values("eps")
                flagged = " ⚠" if s["flags"].iloc[0] else ""
                if attack == WORST:
                    ax.plot(s["eps"], 100 * s["robust_acc"], color=color, lw=2.2, marker="o", ms=3,
                            label=f"{d}{' (worst case)' if detailed else ''}{flagged}")
                elif not detailed:
                    continue
                elif len(s) > 1:
                    ax.plot(s["eps"], 100 * s["robust_acc"], color=color, lw=1.1, ls=attack_style[attack], alpha=0.75,
                            label=f"{d} · {'after ' if s['mode'].iloc[0] == 'cascade' else ''}{attack}")
                else:
                    ax.scatter(s["eps"], 100 * s["robust_acc"], color=color, marker="x", s=40,
                               label=f"{d} · {'after ' if s['mode'].iloc[0] == 'cascade' else ''}{attack}")
        ax.set_xlabel(f"epsilon ({norm}, images in [0, 1])")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.set_title(f"{dataset}: accuracy under attack ({norm})"
                     + ("" if detailed else ", worst case over attacks per defense"))
        if detailed:
            ax.legend(fontsize=7, loc="upper right")
        else:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        p = out / f"curves_{dataset}_{norm}.png"
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        plt.close(fig)
        paths.append(p)
    return paths


def plot_auc(t: Tables, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    if t.attacks.empty:
        return paths
    for dataset, part in per_seed(t.board).groupby("dataset", sort=False):
        seeded = "seed" in part and part["seed"].nunique() > 1
        rows = [(r, group_attacks(t, r)) for _, r in part.iterrows()]
        names = list(dict.fromkeys(attack_heading(a) for _, g in rows for _, a in g.iterrows() if not is_nan(a["auc"])))
        if not names:
            continue
        labels = [f"{r['defense']} ({r['norm']}{f', seed {int(r.seed)}' if seeded else ''})" for r, _ in rows]
        mat = np.full((len(rows), len(names) + 1), np.nan)
        for i, (r, g) in enumerate(rows):
            for _, a in g.iterrows():
                if attack_heading(a) in names:
                    mat[i, names.index(attack_heading(a))] = a["auc"]
            mat[i, -1] = r["auc"]
        names = names + [WORST]
        fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 0.5 * len(labels) + 1.8))
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if not math.isnan(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center",
                            color="white" if mat[i, j] < 0.6 else "black", fontsize=8)
        ax.set_title(f"{dataset}: AUC of robust accuracy over the epsilon grid")
        fig.colorbar(im, ax=ax, fraction=0.04)
        fig.tight_layout()
        p = out / f"auc_{dataset}.png"
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        plt.close(fig)
        paths.append(p)
    return paths


def write_reports(store: Store, out: Path, headline: Headline = None,
                  table_eps: list[float] | dict[str, list[float]] | None = None) -> dict[str, Path]:
    """Write every report file under ``out``; return their paths by kind. ``table_eps`` (every
    norm, or per norm; default: what the sweeps asked for) adds the per-eps tables."""
    out = Path(out)
    t = build_tables(store, headline)
    if table_eps is None:
        table_eps = table_eps_from_runs(store)
    elif not isinstance(table_eps, dict):
        table_eps = {n: list(table_eps) for n in set(t.curves["norm"])} if not t.curves.empty else {}
    curves = t.curves
    prov = provenance(store)
    paths: dict[str, Path] = {}
    if curves.empty:
        return paths
    with atomic_path(out / "curves.csv") as tmp:
        curves.to_csv(tmp, index=False, float_format="%.10g")
    with atomic_path(out / "leaderboard.csv") as tmp:
        t.board.to_csv(tmp, index=False, float_format="%.10g")
    with atomic_path(out / "attacks.csv") as tmp:
        t.attacks.to_csv(tmp, index=False, float_format="%.10g")
    write_text_atomic(out / "leaderboard.md", leaderboard_markdown(t, prov, table_eps, table_attacks_from_runs(store)))
    write_text_atomic(out / "leaderboard.json", json.dumps(leaderboard_json(t, prov), indent=2))
    paths.update(curves=out / "curves.csv", leaderboard=out / "leaderboard.csv", attacks=out / "attacks.csv",
                 markdown=out / "leaderboard.md", json=out / "leaderboard.json")
    images = []
    for i, p in enumerate(plot_curves(curves, out)):
        paths[f"plot{i}"] = p
        images.append(p)
    for i, p in enumerate(plot_auc(t, out)):
        paths[f"auc{i}"] = p
        images.append(p)

    write_text_atomic(out / "leaderboard.html", leaderboard_html(t, prov, images))
    paths["html"] = out / "leaderboard.html"
    return paths
