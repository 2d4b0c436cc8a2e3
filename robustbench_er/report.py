"""Reports read from the store: ``curves.csv`` (long form), ``leaderboard.csv/.md/.json``,
``curves_<dataset>_<norm>.png`` and ``auc_<dataset>.png``.

Cells are grouped by (dataset, defense checkpoint, norm). Within a group the worst case over
attacks is, per sample, the minimum ``broken_at`` over the attacks that ran on the group's
largest sample set; attacks run on a subset (e.g. C&W on 200 points) appear with their own n.
Numbers stay numbers in every file; epsilons keep their exact value beside a pretty form.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustbench_er.checks import attack_run, cross_attack_flags
from robustbench_er.errors import UserInputError
from robustbench_er.metrics import auc, curve, pretty_eps, worst_case
from robustbench_er.store import Store

log = logging.getLogger(__name__)
WORST = "worst-case"
#: above this many defenses a curve plot shows only each defense's worst case
MAX_DETAILED_DEFENSES = 4


def _snap(grid: list[float], target: float | None) -> float:
    pos = [e for e in grid if e > 0] or grid
    if target is None:
        return pos[-1]
    below = [e for e in pos if e <= target + 1e-9]
    return below[-1] if below else pos[0]


Headline = float | dict[str, float] | None


def _headline_for(headline: Headline, norm: str) -> float | None:
    if isinstance(headline, dict):
        return headline.get(norm)
    return headline


def _headlines_from_runs(store: Store) -> dict[str, float]:
    """The last headline each norm's sweeps asked for (kept in the runs table)."""
    from robustbench_er.attack import canonical_norm

    out: dict[str, float] = {}
    for cfg in store.runs_frame()["config"]:
        try:
            d = json.loads(cfg)
            if d.get("headline") is not None:
                out[canonical_norm(str(d.get("norm", "Linf")))] = float(d["headline"])
        except (ValueError, TypeError, UserInputError):
            continue
    return out


def build_tables(store: Store, headline: Headline = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (curves, leaderboard) DataFrames from everything finished in the store.

    ``headline`` is one epsilon for every norm, or a dict per norm; where it gives none, the
    dataset's default headline for that norm is used (snapped to the grid).
    """
    cells = store.cells_frame()
    cells = cells[cells["status"] == "done"]
    remembered = _headlines_from_runs(store)
    outcomes = store.outcomes_frame()
    flags = store.flags_frame()
    curve_rows: list[dict[str, Any]] = []
    board_rows: list[dict[str, Any]] = []
    if cells.empty:
        return pd.DataFrame(curve_rows), pd.DataFrame(board_rows)
    by_cell = {cid: df.drop(columns="cell_id").sort_values("sample_id") for cid, df in outcomes.groupby("cell_id")}
    for (dataset, defense, ckpt, norm), group in cells.groupby(["dataset", "defense", "checkpoint", "norm"], sort=False):
        specs = {r.cell_id: json.loads(r.spec) for r in group.itertuples()}
        union = sorted({float(e) for r in group.itertuples() for e in json.loads(r.grid)})
        nmax = int(group["n"].max())
        main = group[group["n"] == nmax]
        samples_key = specs[main.iloc[0]["cell_id"]]["samples"]
        main = main[[specs[c]["samples"] == samples_key for c in main["cell_id"]]]
        eot_n = int(group["eot"].max())
        per_attack: dict[str, tuple[list[float], np.ndarray]] = {}
        access: dict[str, str] = {}
        kinds: dict[str, str] = {}
        cell_flags: dict[str, str] = {}
        aucs: dict[str, float] = {}
        ns: dict[str, int] = {}
        label_cell: dict[str, str] = {}
        hl_default = next((s.get("headline") for s in specs.values() if s.get("headline") is not None), None)
        asked = _headline_for(headline, norm)
        if asked is None:
            asked = remembered.get(norm)
        target = asked if asked is not None else hl_default
        hl = _snap(union, target)
        for r in group.itertuples():
            out = by_cell.get(r.cell_id)
            if out is None:
                continue
            grid = json.loads(r.grid) if r.kind == "fixed" else union
            acc = curve(out, grid)
            label = r.attack_label
            if label in per_attack:  # the same attack run twice (other samples or settings): keep both apart
                label = f"{label}#{r.cell_id[:6]}"
            label_cell[label] = r.cell_id
            per_attack[label] = (grid, acc)
            ns[label] = len(out)
            access[label] = specs[r.cell_id].get("access", "gradient")
            kinds[label] = r.kind
            fl = flags[flags["cell_id"] == r.cell_id]
            for f in fl.itertuples():
                cell_flags[f.flag] = f.detail
            clean = float(out["clean_correct"].mean())
            if len(grid) >= 2:
                aucs[label] = auc(grid, acc)
            for e, a in zip(grid, acc):
                curve_rows.append(dict(dataset=dataset, defense=defense, attack=label, norm=norm, eps=float(e),
                                       eps_label=pretty_eps(float(e)), n=len(out), clean_acc=clean,
                                       robust_acc=float(a), eot_n=int(r.eot), checkpoint=ckpt))
        main_frames = [by_cell[c] for c in main["cell_id"] if c in by_cell]
        wc = worst_case(main_frames)
        wacc = curve(wc, union)
        clean = float(wc["clean_correct"].mean())
        for e, a in zip(union, wacc):
            curve_rows.append(dict(dataset=dataset, defense=defense, attack=WORST, norm=norm, eps=float(e),
                                   eps_label=pretty_eps(float(e)), n=len(wc), clean_acc=clean, robust_acc=float(a),
                                   eot_n=eot_n, checkpoint=ckpt))
        if len(union) >= 2:
            aucs[WORST] = auc(union, wacc)
        # compare attacks pairwise on the points both ran (e.g. PGD on 1,000 vs RayS on 100)
        cell_flags.update(cross_attack_flags({label: attack_run(by_cell[cid], per_attack[label][0], specs[cid])
                                              for label, cid in label_cell.items()}))
        row: dict[str, Any] = dict(dataset=dataset, defense=defense, norm=norm, headline_eps=hl,
                                   headline_label=pretty_eps(hl), n=len(wc), clean_acc=clean,
                                   robust_acc=float(curve(wc, [hl])[0]), auc=aucs.get(WORST, math.nan))
        for label, (grid, acc) in per_attack.items():
            val = math.nan
            for e, a in zip(grid, acc):
                if abs(e - hl) < 1e-9:
                    val = float(a)
            if kinds[label] == "min":
                out = by_cell[label_cell[label]]
                val = float(curve(out, [hl])[0])
                # average distance to the decision boundary over the points it broke (ADBD for RayS)
                ok = out["clean_correct"].astype(bool)
                row[f"adbd[{label}]"] = float(out.loc[ok, "broken_at"].mean())
            row[f"robust_acc[{label}]"] = val
        for label, v in aucs.items():
            if label != WORST:
                row[f"auc[{label}]"] = v
        for label, k in ns.items():
            row[f"n[{label}]"] = k
        row["eot_n"] = eot_n
        row["flags"] = ";".join(sorted(cell_flags))
        row["flag_details"] = "; ".join(f"{k}: {v}" for k, v in sorted(cell_flags.items()))
        row["checkpoint"] = ckpt
        board_rows.append(row)
    curves = pd.DataFrame(curve_rows)
    board = pd.DataFrame(board_rows)
    if not board.empty:
        board = board.sort_values(["dataset", "norm", "robust_acc"], ascending=[True, True, False], kind="stable")
    if not curves.empty:
        flag_map = {(r["dataset"], r["checkpoint"], r["norm"]): r["flags"] for _, r in board.iterrows()}
        curves["flags"] = [flag_map.get((d, c, n), "") for d, c, n in zip(curves["dataset"], curves["checkpoint"], curves["norm"])]
    return curves, board


def _provenance(store: Store) -> dict[str, Any]:
    runs = store.runs_frame()
    last = runs.iloc[-1] if not runs.empty else None
    return {"command": (last["command"] if last is not None else "") or " ".join(sys.argv),
            "versions": json.loads(last["versions"]) if last is not None else {},
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{100 * v:.1f}"
    return str(v)


def _with_n(part: pd.DataFrame, label: str) -> str:
    """``label (n=200)`` when an attack ran on fewer points than the row's worst case."""
    k = part.get(f"n[{label}]")
    if k is None:
        return label
    ran = k.notna()
    if ran.any() and (k[ran].astype(int) != part.loc[ran, "n"].astype(int)).all():
        return f"{label} (n={int(k[ran].iloc[0])})"
    return label


def _fmt_auc(v: Any) -> str:
    return "–" if _isnan(v) else f"{float(v):.3f}"


def leaderboard_markdown(board: pd.DataFrame, prov: dict[str, Any]) -> str:
    lines = ["# Leaderboard", "", f"Made by `{prov['command']}`.", "",
             "Accuracies in %, on the evaluated test points; robust accuracy = worst case over the attacks run"
             " at the headline epsilon; AUC = area under the robust-accuracy curve / grid width (1 = robust everywhere);"
             " ADBD = mean distance of the adversarial examples a minimization attack found.", ""]
    for (dataset, norm), part in board.groupby(["dataset", "norm"], sort=False):
        attack_cols = [c for c in part.columns if c.startswith("robust_acc[") and part[c].notna().any()]
        auc_cols = [c for c in part.columns if c.startswith("auc[") and part[c].notna().any()]
        head = ["defense", "clean", f"robust @ {part['headline_label'].iloc[0]}", "AUC"]
        adbd_cols = [c for c in part.columns if c.startswith("adbd[") and part[c].notna().any()]
        head += [_with_n(part, c[len("robust_acc["):-1]) for c in attack_cols] + [f"AUC {c[4:-1]}" for c in auc_cols]
        head += [f"ADBD {c[5:-1]}" for c in adbd_cols] + ["n", "flags"]
        lines += [f"## {dataset}, {norm}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in part.iterrows():
            cells = [r["defense"], _fmt(r["clean_acc"]), _fmt(r["robust_acc"]), _fmt_auc(r["auc"])]
            cells += [_fmt(r[c]) for c in attack_cols] + [_fmt_auc(r[c]) for c in auc_cols]
            cells += ["–" if _isnan(r[c]) else f"{r[c]:.4f}" for c in adbd_cols]
            cells += [str(int(r["n"])), f"⚠ {r['flags']}" if r["flags"] else ""]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def leaderboard_json(board: pd.DataFrame, prov: dict[str, Any]) -> list[dict[str, Any]]:
    entries = []
    for _, r in board.iterrows():
        per = {c[len("robust_acc["):-1]: _num(r[c]) for c in board.columns if c.startswith("robust_acc[") and not _isnan(r[c])}
        aucs = {c[4:-1]: _num(r[c]) for c in board.columns if c.startswith("auc[") and not _isnan(r[c])}
        adbd = {c[5:-1]: _num(r[c]) for c in board.columns if c.startswith("adbd[") and not _isnan(r[c])}
        entries.append({
            # RobustBench model_info fields
            "name": r["defense"], "dataset": r["dataset"], "threat_model": r["norm"], "eps": _num(r["headline_eps"]),
            "eps_label": r["headline_label"], "clean_acc": _num(r["clean_acc"]),
            "reported": None, "autoattack_acc": per.get("autoattack"), "additional_data": False,
            "number_forward_passes": int(r["eot_n"]), "unreliable": bool(r["flags"]), "footnote": r["flag_details"] or None,
            # ours
            "robust_acc": _num(r["robust_acc"]), "robust_acc_per_attack": per, "auc": _num(r["auc"]),
            "auc_per_attack": aucs, "adbd_per_attack": adbd, "n": int(r["n"]), "flags": [f for f in str(r["flags"]).split(";") if f],
            "checkpoint": r["checkpoint"], "command": prov["command"], "versions": prov["versions"],
        })
    return entries


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _num(v: Any) -> float | None:
    if v is None or _isnan(v):
        return None
    return float(v)


def plot_curves(curves: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for (dataset, norm), part in curves.groupby(["dataset", "norm"], sort=False):
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
                            label=f"{d} · {attack}")
                else:
                    ax.scatter(s["eps"], 100 * s["robust_acc"], color=color, marker="x", s=40,
                               label=f"{d} · {attack}")
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
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_auc(board: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for dataset, part in board.groupby("dataset", sort=False):
        cols = [c for c in part.columns if c.startswith("auc[") and part[c].notna().any()]
        if not cols:
            continue
        labels = [f"{r['defense']} ({r['norm']})" for _, r in part.iterrows()]
        mat = np.column_stack([part[c].to_numpy(dtype=float) for c in cols] + [part["auc"].to_numpy(dtype=float)])
        names = [c[4:-1] for c in cols] + [WORST]
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
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths


def write_reports(store: Store, out: Path, headline: Headline = None) -> dict[str, Path]:
    """Write every report file under ``out``; return their paths by kind."""
    out = Path(out)
    curves, board = build_tables(store, headline)
    prov = _provenance(store)
    paths: dict[str, Path] = {}
    if curves.empty:
        return paths
    curves.to_csv(out / "curves.csv", index=False, float_format="%.10g")
    board.to_csv(out / "leaderboard.csv", index=False, float_format="%.10g")
    (out / "leaderboard.md").write_text(leaderboard_markdown(board, prov))
    (out / "leaderboard.json").write_text(json.dumps(leaderboard_json(board, prov), indent=2))
    paths.update(curves=out / "curves.csv", leaderboard=out / "leaderboard.csv",
                 markdown=out / "leaderboard.md", json=out / "leaderboard.json")
    for i, p in enumerate(plot_curves(curves, out)):
        paths[f"plot{i}"] = p
    for i, p in enumerate(plot_auc(board, out)):
        paths[f"auc{i}"] = p
    return paths
