"""AutoAttack over an epsilon grid: our sweep (ascending eps, survivors only) vs independent runs.

Our runner attacks eps_1 < eps_2 < ... in order and, at each step, only the points no smaller
epsilon has broken (a point broken at eps_i is broken at every larger eps: the same example lies
in the larger ball). The usual way calls AutoAttack once per epsilon on all points. Both use
pyautoattack's standard version with the same seed scheme; this prints both wall times, their
ratio (target <= 0.5 for three or more epsilons) and the largest per-epsilon difference in
robust accuracy (expected 0; if not 0, ours is the lower one, because a point broken at a small
eps stays broken while an independent run at a larger eps may miss it).

    python benchmarks/autoattack_sweep.py --dataset digits --samples 100
    python benchmarks/autoattack_sweep.py              # mnist5k, 200 samples, eps 0.1,0.2,0.3

The model is the ``madry`` defense's quick checkpoint (trained once into ``--checkpoints``).
Run in one process, on the machine's default device (CPU here).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist5k", help="mnist5k (default) or digits (faster)")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--eps", default="0.1,0.2,0.3", help="ascending Linf epsilons, comma-separated")
    ap.add_argument("--version", default="standard", help="AutoAttack version for both sides")
    ap.add_argument("--checkpoints", type=Path, default=Path("results/bench"),
                    help="folder holding (or receiving) the trained madry checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import pyautoattack

    from robustbench_er.attack import verify
    from robustbench_er.data import load_dataset
    from robustbench_er.defense import get_or_train
    from robustbench_er.store import Store
    from robustbench_er.sweep import AttackConfig, SweepConfig, _seed_for, parse_eps, plan, run_cell

    grid = parse_eps(args.eps)
    data = load_dataset(args.dataset)
    t0 = time.perf_counter()
    trained = get_or_train("madry", data, profile="quick", seed=args.seed, out=args.checkpoints, progress=False)
    print(f"checkpoint: {trained.folder} ({'reused' if trained.reused else 'trained'} in {time.perf_counter() - t0:.1f} s)")
    model = trained.model.eval()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        # reuse the checkpoint: the sweep looks for it under <out>/checkpoints
        (out / "checkpoints").symlink_to((args.checkpoints / "checkpoints").resolve(), target_is_directory=True)
        cfg = SweepConfig(dataset=args.dataset, defenses=["madry"],
                          attacks=[AttackConfig("autoattack", {"version": args.version})], eps=grid, norm="Linf",
                          samples=args.samples, seed=args.seed, out=out, progress=False)
        cell = plan(cfg)[0]
        store = Store(out)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            summary = run_cell(store, cell, batch_size=500, progress=False)
            t_sweep, c_sweep = time.perf_counter() - t0, time.process_time() - c0
            steps = store.outcomes(cell.cell_id)
        finally:
            store.close()
        ours = [summary.robust[e] for e in grid]
        n_clean = int(steps["clean_correct"].sum())

        ids = torch.as_tensor(cell.sample_ids)
        x, y = data.x_test[ids], data.y_test[ids]
        t0, c0 = time.perf_counter(), time.process_time()
        indep = []
        clean_ok = model.predict_label(x) == y
        for i, eps in enumerate(grid):
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(_seed_for(cell.cell_id, i))))
            aa = pyautoattack.AutoAttack(model, device="cpu", eps=eps, norm="Linf", seed=seed, version=args.version)
            aa.verbose = False
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=500)
            ok, _ = verify(model, x, x_adv, y, "Linf", torch.full((len(x),), eps))
            indep.append(float((clean_ok & ~ok).float().mean()))
        t_indep, c_indep = time.perf_counter() - t0, time.process_time() - c0

    n = len(x)
    ours_n = np.rint(np.array(ours) * n).astype(int)  # robust counts: compare numbers of points, not floats
    indep_n = np.rint(np.array(indep) * n).astype(int)
    diff = np.abs(ours_n - indep_n) / n
    print(f"dataset {args.dataset}, {len(x)} samples ({n_clean} clean-correct), AutoAttack {args.version}, Linf eps {grid}")
    print(f"{'eps':>6}  {'ours':>7}  {'independent':>11}")
    for e, a, b in zip(grid, ours, indep):
        print(f"{e:>6.3f}  {a:>7.3f}  {b:>11.3f}")
    print(f"time ours (ascending, survivors only): {t_sweep:.1f} s wall, {c_sweep:.1f} s CPU")
    print(f"time independent ({len(grid)} full runs): {t_indep:.1f} s wall, {c_indep:.1f} s CPU")
    print(f"ratio ours/independent: {t_sweep / t_indep:.2f} wall, {c_sweep / c_indep:.2f} CPU (target <= 0.5)")
    if diff.max() == 0:
        note = " (identical)"
    elif (ours_n <= indep_n).all():
        note = " (ours lower: a point broken at a smaller eps stays broken; an independent run at a larger eps missed it)"
    else:
        note = " (ours higher somewhere: the two runs' random draws differ on those points)"
    print(f"max per-eps robust accuracy difference: {diff.max():.4f}{note}")


if __name__ == "__main__":
    main()
