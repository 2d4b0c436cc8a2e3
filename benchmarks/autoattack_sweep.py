"""AutoAttack over an epsilon grid: our sweeps vs independent AutoAttack runs per epsilon.

The usual way calls AutoAttack once per epsilon on all points. Ours runs the per-sample grid
search (``bisect``, the default: each round attacks every unresolved sample at the middle of its
own interval, the round's samples grouped by epsilon for AutoAttack's scalar epsilon; no retry
round, as AutoAttack declares ``search_retry = False``) and the ascending survivors-only sweep (``ascending``). All use pyautoattack's
standard version. Printed per defense: wall times, the ratios (target <= 0.5 for K >= 8
epsilons) and the largest per-epsilon amount by which ours is weaker (target: none); the worst
bisect ratio over defenses comes last.

    python benchmarks/autoattack_sweep.py --dataset digits --samples 100      # K = 9
    python benchmarks/autoattack_sweep.py --dataset mnist5k --samples 100 --defense madry

The models are the defenses' quick checkpoints (trained once into ``--checkpoints``). Run in one
process, on the machine's default device (CPU here).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist5k", help="mnist5k (default) or digits (faster)")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--eps", default="0:0.4:0.05", help="ascending Linf epsilons (START:STOP:STEP or a,b,c)")
    ap.add_argument("--defense", default="none,madry", help="comma-separated; each is timed separately")
    ap.add_argument("--version", default="standard", help="AutoAttack version for both sides")
    ap.add_argument("--checkpoints", type=Path, default=Path("results/bench"),
                    help="folder holding (or receiving) the trained madry checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def run_ours(args: argparse.Namespace, defense: str, grid: list[float]) -> tuple[dict[str, list[float]], dict[str, float], Any]:
    """Both of our sweeps (``bisect``, ``ascending``) of one defense: the robust accuracy per eps,
    the wall time per search, and the (last) cell planned."""
    from robustbench_er.engine.spec import AttackConfig, SweepConfig
    from robustbench_er.engine.sweep import plan_sweep, run_cell
    from robustbench_er.store.results import Store

    ours: dict[str, list[float]] = {}
    t_ours: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for search in ("bisect", "ascending"):
            out = Path(tmp) / search
            out.mkdir()
            # reuse the checkpoint: the sweep looks for it under <out>/checkpoints
            (out / "checkpoints").symlink_to((args.checkpoints / "checkpoints").resolve(), target_is_directory=True)
            cfg = SweepConfig(dataset=args.dataset, defenses=[defense],
                              attacks=[AttackConfig("autoattack", {"version": args.version})], eps=grid,
                              norm="Linf", samples=args.samples, seed=args.seed, out=out, progress=False,
                              search=search)
            cell = plan_sweep(cfg)[0]
            store = Store(out)
            try:
                t0 = time.perf_counter()
                summary = run_cell(store, cell, batch_size=500, progress=False)
                t_ours[search] = time.perf_counter() - t0
            finally:
                store.close()
            ours[search] = [summary.robust[e] for e in grid]
    return ours, t_ours, cell


def run_independent(autoattack: Any, model: Any, x: torch.Tensor, y: torch.Tensor, grid: list[float],
                    cell_id: str, version: str) -> tuple[list[float], list[torch.Tensor], float]:
    """One AutoAttack run (class ``autoattack``) per eps on all points: the robust accuracy per
    eps, per positive eps which points it left standing, and the wall time."""
    from robustbench_er.engine.spec import seed_for
    from robustbench_er.plugins.attack import verify

    t0 = time.perf_counter()
    indep = []
    survived = []  # per positive eps: which points the independent run left standing
    clean_ok = model.predict_label(x) == y
    for i, eps in enumerate(grid):
        if eps <= 0:
            indep.append(float(clean_ok.float().mean()))
            continue
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(seed_for(cell_id, i))))
        aa = autoattack(model, device="cpu", eps=eps, norm="Linf", seed=seed, version=version)
        aa.verbose = False
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=500)
        ok, _ = verify(model, x, x_adv, y, "Linf", torch.full((len(x),), eps))
        indep.append(float((clean_ok & ~ok).float().mean()))
        survived.append(clean_ok & ~ok)
    return indep, survived, time.perf_counter() - t0


def report_defense(args: argparse.Namespace, n: int, grid: list[float], ours: dict[str, list[float]],
                   t_ours: dict[str, float], indep: list[float], survived: list[torch.Tensor],
                   t_indep: float) -> tuple[dict[str, tuple[float, float]], float]:
    """Print one defense's table, floor and ratios; return (ratio, gap) per search and the floor."""
    print(f"{args.dataset}, {n} samples, AutoAttack {args.version}, Linf, K = {len(grid)} epsilons")
    print(f"{'eps':>6}  {'bisect':>7}  {'ascending':>9}  {'independent':>11}")
    for k, e in enumerate(grid):
        print(f"{e:>6.3f}  {ours['bisect'][k]:>7.3f}  {ours['ascending'][k]:>9.3f}  {indep[k]:>11.3f}")
    # A point that survives AutoAttack costs the four attacks in full; a broken one mostly only
    # APGD-CE. Independent runs pay the full price at every eps a point survives; any search
    # still pays it once per point that survives some eps > 0 (at its largest surviving eps,
    # to know it survives there). Their quotient bounds what a search can save on that part.
    full_indep = int(torch.stack(survived).sum()) if survived else 0
    full_min = int(torch.stack(survived).any(0).sum()) if survived else 0
    floor = full_min / full_indep if full_indep else float("nan")
    print(f"full AutoAttack evaluations of surviving points: independent {full_indep}, the least any search"
          f" needs {full_min}; floor on that part of the ratio {floor:.2f}")
    per = {}
    for search in ("bisect", "ascending"):
        gap = max(0.0, max(a - b for a, b in zip(ours[search], indep))) * 100
        per[search] = (t_ours[search] / t_indep, gap)
        print(f"{search}: {t_ours[search]:.1f} s vs independent {t_indep:.1f} s, ratio"
              f" {t_ours[search] / t_indep:.2f}; weaker than independent by at most {gap:.1f} points")
    return per, floor


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import pyautoattack

    from robustbench_er.core.text import parse_eps
    from robustbench_er.data.datasets import load_dataset
    from robustbench_er.engine.trained import get_or_train

    grid = parse_eps(args.eps)
    data = load_dataset(args.dataset)
    results = []
    for defense in args.defense.split(","):
        defense = defense.strip()
        t0 = time.perf_counter()
        trained = get_or_train(defense, data, profile="quick", seed=args.seed, out=args.checkpoints, progress=False)
        print(f"\n=== {defense}: checkpoint {trained.folder} ({'reused' if trained.reused else 'trained'} in"
              f" {time.perf_counter() - t0:.1f} s)")
        model = trained.model.eval()
        ours, t_ours, cell = run_ours(args, defense, grid)
        ids = torch.as_tensor(cell.sample_ids)
        x, y = data.x_test[ids], data.y_test[ids]
        indep, survived, t_indep = run_independent(pyautoattack.AutoAttack, model, x, y, grid, cell.cell_id,
                                                   args.version)
        per, floor = report_defense(args, len(x), grid, ours, t_ours, indep, survived, t_indep)
        results.append((defense, per, floor))
    print("\n=== summary")
    for defense, per, floor in results:
        for search, (ratio, gap) in per.items():
            print(f"{defense:>10} {search:>9}: ratio {ratio:.2f}, weaker by at most {gap:.1f} points"
                  f" (floor of the survivors' part {floor:.2f})")
    worst = max(results, key=lambda r: r[1]["bisect"][0])
    print(f"worst bisect ratio: {worst[1]['bisect'][0]:.2f} ({worst[0]}; target <= 0.5 for K >= 8)")


if __name__ == "__main__":
    main()
