"""Sweep efficiency: our PGD sweeps vs Foolbox's LinfPGD with an epsilon list.

All attack the same checkpoint and the same samples with PGD-40 (random start) at the 17
epsilons 0, 0.025, ..., 0.4. Foolbox runs the full attack from scratch at every epsilon. Ours
runs twice: the per-sample grid search (``bisect``, the default: each sample attacked at the
middle of its own unresolved interval, then one retry at its largest surviving eps) and the
ascending survivors-only sweep (``ascending``); both with per-sample early stop, every example
verified. Printed per defense and search: both wall times, their ratio (target <= 0.3 for
bisect), and the largest per-epsilon amount by which ours is weaker (target <= 0.5 points);
the worst ratio over defenses comes last. Then our PGD's throughput against a plain torch PGD
loop on one batch (same steps, no early stop; target >= 0.95x).

    python benchmarks/sweep_efficiency.py [--defense madry] [--samples 500] [--out results/quickstart]

The checkpoint is trained (quick profile) or reused from ``--out``/checkpoints.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def plain_pgd(model, x, y, eps, steps, alpha):
    """The textbook loop: random start, sign step, clip. No early stop, no bookkeeping."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--defense", default="none,madry", help="comma-separated; each is timed separately")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default="results/quickstart", help="where checkpoints are reused from or written to")
    args = ap.parse_args()

    from robustbench_er.data.datasets import load_dataset

    data = load_dataset(args.dataset)
    results = [run_one(args, data, defense.strip()) for defense in args.defense.split(",")]
    print("\n=== summary (ratio = our time / Foolbox's; gap = points by which ours is weaker at the worst eps)")
    for defense, per in results:
        for search, (ratio, gap) in per.items():
            print(f"{defense:>14} {search:>9}: ratio {ratio:.3f}, gap {gap:+.2f}")
    worst = max(results, key=lambda r: r[1]["bisect"][0])
    print(f"worst bisect ratio: {worst[1]['bisect'][0]:.3f} ({worst[0]}; target <= 0.3), its gap"
          f" {worst[1]['bisect'][1]:+.2f} points (target <= 0.5); worst gap over defenses"
          f" {max(r[1]['bisect'][1] for r in results):+.2f}")


def run_one(args: argparse.Namespace, data, defense: str):  # type: ignore[no-untyped-def]
    import shutil

    import foolbox as fb

    from robustbench_er.core.text import parse_eps
    from robustbench_er.engine.spec import AttackConfig, SweepConfig
    from robustbench_er.engine.trained import get_or_train
    from robustbench_er.jobs.sweep import run_sweep

    torch.manual_seed(0)
    trained = get_or_train(defense, data, out=Path(args.out), progress=False)
    model = trained.model.eval()
    grid = parse_eps("0:0.4:0.025")
    ids = data.sample_ids(args.samples)
    x, y = data.x_test[ids], data.y_test[ids]
    print(f"\n=== {defense}: checkpoint {trained.folder} (clean accuracy {trained.meta['clean_acc']:.4f}); {len(ids)} samples, "
          f"PGD-{args.steps}, {len(grid)} epsilons, batch {args.batch_size}, {torch.get_num_threads()} threads")

    # ---- ours: the real sweep (clean pass, search, verification, store writes included)
    ours: dict[str, np.ndarray] = {}
    t_ours: dict[str, float] = {}
    for search in ("bisect", "ascending"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = SweepConfig(dataset=args.dataset, defenses=[defense],
                              attacks=[AttackConfig("pgd", {"steps": args.steps})], eps=grid, samples=args.samples,
                              out=Path(tmp), batch_size=args.batch_size, progress=False, search=search)
            # the checkpoint lives under --out; point the sweep at it by copying its folder
            shutil.copytree(trained.folder, Path(tmp) / "checkpoints" / trained.folder.name)
            t0 = time.perf_counter()
            summary = run_sweep(cfg)[0]
            t_ours[search] = time.perf_counter() - t0
        ours[search] = np.array([summary.robust[e] for e in grid])

    # ---- Foolbox: LinfPGD with the same epsilons (it reruns the attack for each one)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    attack = fb.attacks.LinfPGD(steps=args.steps, random_start=True)
    t0 = time.perf_counter()
    robust = np.zeros((len(grid), len(ids)), dtype=bool)
    for i in range(0, len(ids), args.batch_size):
        xb, yb = x[i:i + args.batch_size], y[i:i + args.batch_size]
        _, _, success = attack(fmodel, xb, yb, epsilons=grid)
        robust[:, i:i + args.batch_size] = ~success.cpu().numpy()
    t_fb = time.perf_counter() - t0
    theirs = robust.mean(1)

    print(f"\n{'eps':>7} {'bisect %':>9} {'ascend %':>9} {'foolbox %':>10} {'bis-fb':>7} {'asc-fb':>7}")
    for i, e in enumerate(grid):
        a, b, f = ours["bisect"][i], ours["ascending"][i], theirs[i]
        print(f"{e:7.3f} {100 * a:9.2f} {100 * b:9.2f} {100 * f:10.2f} {100 * (a - f):+7.2f} {100 * (b - f):+7.2f}")
    per = {}
    for search in ("bisect", "ascending"):
        gap = float(np.max(ours[search] - theirs)) * 100
        per[search] = (t_ours[search] / t_fb, gap)
        print(f"{search}: ours {t_ours[search]:.1f}s, foolbox {t_fb:.1f}s, ratio {t_ours[search] / t_fb:.3f};"
              f" weaker than foolbox by at most {gap:.2f} points")

    # ---- throughput: our PGD vs a plain loop, same batch, same steps, no early stop
    from robustbench_er.models.pgd import pgd

    xb, yb = x[: args.batch_size], y[: args.batch_size]
    eps, alpha = 0.3, 0.3 * 2.5 / args.steps
    for _ in range(2):  # warm-up
        plain_pgd(model, xb, yb, eps, 2, alpha)
        pgd(model, xb, yb, eps, steps=2, early_stop=False)
    reps = 3
    t0 = time.perf_counter()
    for _ in range(reps):
        plain_pgd(model, xb, yb, eps, args.steps, alpha)
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(reps):
        pgd(model, xb, yb, eps, steps=args.steps, early_stop=False)
    t_our_pgd = time.perf_counter() - t0
    print(f"PGD throughput on one batch of {len(xb)}: ours {reps * len(xb) / t_our_pgd:.0f} img/s, plain torch loop "
          f"{reps * len(xb) / t_plain:.0f} img/s, ratio {t_plain / t_our_pgd:.3f}x (target >= 0.95x)")
    return defense, per


if __name__ == "__main__":
    main()
