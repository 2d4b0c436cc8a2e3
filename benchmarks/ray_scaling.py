"""Ray executor scaling: the same cells with 1 and 2 Ray workers, and cost against sample count.

Each run sweeps PGD over a K-point grid (per-sample bisection) on a quick checkpoint with
``--executor ray``, one torch thread per task, in a fresh results folder (nothing cached but
the checkpoint). Printed: the wall time with 1 and 2 workers and the speed-up (goal >= 1.8x),
then the cost per 100 samples at two sample counts with 2 workers (goal: linear, a ratio near
1). Ray's start-up is not timed.

    python benchmarks/ray_scaling.py --checkpoints results/quickstart --defense madry
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--defense", default="madry")
    ap.add_argument("--samples", default="400,800", help="two sample counts")
    ap.add_argument("--eps", default="0:0.4:0.05")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--checkpoints", type=Path, default=Path("results/quickstart"),
                    help="folder whose checkpoints/ holds (or receives) the trained defense")
    args = ap.parse_args(argv)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

    import ray

    from robustbench_er.core.text import parse_eps
    from robustbench_er.data.datasets import load_dataset
    from robustbench_er.engine.spec import AttackConfig, SweepConfig
    from robustbench_er.engine.trained import get_or_train
    from robustbench_er.jobs.sweep import run_sweep

    data = load_dataset(args.dataset)
    get_or_train(args.defense, data, out=args.checkpoints, progress=False, measure=False)  # trained once
    grid = parse_eps(args.eps)
    n1, n2 = (int(v) for v in args.samples.split(","))

    def timed(workers: int, samples: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            shutil.copytree(args.checkpoints / "checkpoints", out / "checkpoints",
                            ignore=shutil.ignore_patterns("leases*"))
            cfg = SweepConfig(dataset=args.dataset, defenses=[args.defense],
                              attacks=[AttackConfig("pgd", {"steps": args.steps})], eps=grid, samples=samples,
                              out=out, progress=False, batch_size=args.batch_size,
                              executor={"kind": "ray", "threads_per_task": 1})
            t0 = time.perf_counter()
            run_sweep(cfg)
            return time.perf_counter() - t0

    times: dict[tuple[int, int], float] = {}
    for workers in (1, 2):
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        try:
            timed(workers, min(n1, 50))  # warm the workers (imports, first model transfer)
            for n in ((n2,) if workers == 1 else (n1, n2)):
                times[(workers, n)] = timed(workers, n)
                print(f"{workers} worker(s), {n} samples: {times[(workers, n)]:.1f} s")
        finally:
            ray.shutdown()
    speedup = times[(1, n2)] / times[(2, n2)]
    per1, per2 = 100 * times[(2, n1)] / n1, 100 * times[(2, n2)] / n2
    print(f"\n{args.defense}, PGD-{args.steps}, K = {len(grid)}, batch {args.batch_size}, one thread per task")
    print(f"speed-up with 2 workers at {n2} samples: {speedup:.2f}x (goal >= 1.8x)")
    print(f"cost per 100 samples with 2 workers: {per1:.2f} s at {n1}, {per2:.2f} s at {n2};"
          f" ratio {per2 / per1:.2f} (goal: linear, near 1)")


if __name__ == "__main__":
    main()
