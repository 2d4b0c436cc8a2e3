"""Sweep efficiency: our survivors-only PGD sweep vs Foolbox's LinfPGD with an epsilon list.

Both attack the same checkpoint and the same samples with PGD-40 (random start) at the 17
epsilons 0, 0.025, ..., 0.4. Foolbox runs the full attack from scratch at every epsilon; our
sweep runs epsilons in ascending order on the survivors only, with per-sample early stop, and
verifies every example. Printed: both wall times, their ratio (target <= 0.5), and the largest
per-epsilon gap in robust accuracy (target: ours never weaker than Foolbox by more than 0.5
points). Then our PGD's throughput against a plain torch PGD loop on one batch (same steps,
no early stop; target >= 0.95x).

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

    from robustbench_er.data import load_dataset

    data = load_dataset(args.dataset)
    for defense in args.defense.split(","):
        run_one(args, data, defense.strip())


def run_one(args: argparse.Namespace, data, defense: str) -> None:  # type: ignore[no-untyped-def]
    import shutil

    import foolbox as fb

    from robustbench_er.defense import get_or_train
    from robustbench_er.sweep import AttackConfig, SweepConfig, parse_eps, run_sweep

    torch.manual_seed(0)
    trained = get_or_train(defense, data, out=Path(args.out), progress=False)
    model = trained.model.eval()
    grid = parse_eps("0:0.4:0.025")
    ids = data.sample_ids(args.samples)
    x, y = data.x_test[ids], data.y_test[ids]
    print(f"\n=== {defense}: checkpoint {trained.folder} (clean accuracy {trained.meta['clean_acc']:.4f}); {len(ids)} samples, "
          f"PGD-{args.steps}, {len(grid)} epsilons, batch {args.batch_size}, {torch.get_num_threads()} threads")

    # ---- ours: the real sweep (clean pass, survivors, verification, store writes included)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SweepConfig(dataset=args.dataset, defenses=[defense],
                          attacks=[AttackConfig("pgd", {"steps": args.steps})], eps=grid, samples=args.samples,
                          out=Path(tmp), batch_size=args.batch_size, progress=False)
        # the checkpoint lives under --out; point the sweep at it by copying its folder
        shutil.copytree(trained.folder, Path(tmp) / "checkpoints" / trained.folder.name)
        t0 = time.perf_counter()
        summary = run_sweep(cfg)[0]
        t_ours = time.perf_counter() - t0
    ours = np.array([summary.robust[e] for e in grid])

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

    print(f"\n{'eps':>7} {'ours %':>8} {'foolbox %':>10} {'ours-fb':>8}")
    for e, a, b in zip(grid, ours, theirs):
        print(f"{e:7.3f} {100 * a:8.2f} {100 * b:10.2f} {100 * (a - b):+8.2f}")
    gap = float(np.max(ours - theirs)) * 100
    print(f"\nmean share of clean-correct points still standing over the grid (the floor of the ratio): "
          f"{ours[1:].mean() / max(ours[0], 1e-12):.3f}")
    print(f"sweep time: ours {t_ours:.1f}s, foolbox {t_fb:.1f}s, ratio {t_ours / t_fb:.3f} (target <= 0.5)")
    print(f"largest amount by which ours is weaker (higher robust accuracy) than foolbox: {gap:.2f} points (target <= 0.5)")

    # ---- throughput: our PGD vs a plain loop, same batch, same steps, no early stop
    from robustbench_er.pgd import pgd

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


if __name__ == "__main__":
    main()
