"""What the papers' experiment files (configs/paper_*.yaml) cost, before anyone runs them.

For each file: the model evaluations (forward or backward passes of one image) its cells would
spend, from ``--dry-run``'s plan (an upper bound: broken points drop out; EOT passes on
randomized defenses come on top), plus an estimate of its training jobs' evaluations
(epochs x training images x 2 (forward and backward) x (1 + the training attack's steps)); then
each network's measured throughput on ``--device`` (forward and backward of a batch of random
images through the ``paper`` preset's network, as built by the defense); and the hours those
evaluations take at that throughput.

The real datasets need not be on disk: the plan is made on a stand-in of each dataset's real
split sizes (zero images, labels cycling over the classes), which is all a plan reads.

    python benchmarks/paper_cost.py                      # every configs/paper_*.yaml, on this CPU
    python benchmarks/paper_cost.py --device cuda        # the same on a GPU: its hours
    python benchmarks/paper_cost.py configs/paper_afd_mnist.yaml
    python benchmarks/paper_cost.py --throughput results/gpu_check/gpu_check.json   # the GPU's measured numbers

``--throughput FILE`` reads each network's seconds per evaluation from the JSON that
``benchmarks/gpu_check.py`` wrote on a GPU (its part 5, the same measure at each batch size; the
largest batch measured, or ``--batch``'s) instead of measuring them here; a network the file
lacks is measured on ``--device`` and listed as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: (training images, test images) of each full dataset
SIZES = {"mnist": (60000, 10000), "cifar10": (50000, 10000), "cifar100": (50000, 10000),
         "stl10": (5000, 8000), "tiny-imagenet": (100000, 10000)}


def stand_in(name: str) -> Any:
    """A Dataset with the real split sizes of ``name``: zero images (one stored, expanded) and
    labels cycling over the classes."""
    from robustbench_er.data.datasets import SPECS, Dataset

    spec = SPECS[name]
    n_train, n_test = SIZES[name]
    zero = torch.zeros((1, *spec.shape))
    return Dataset(spec, zero.expand(n_train, *spec.shape), torch.arange(n_train) % spec.classes,
                   zero.expand(n_test, *spec.shape), torch.arange(n_test) % spec.classes)


def paper_network(defense: str, dataset: str, device: torch.device,
                  overrides: dict[str, Any] | None = None) -> tuple[Any, Any, Any, Any]:
    """The ``paper`` preset's network of ``defense`` on ``dataset``, as the defense builds and
    wraps it: (model, the model gradient attacks see (its BPDA twin where it has one), spec, hp)."""
    from robustbench_er.data.datasets import SPECS
    from robustbench_er.plugins.registry import get_defense

    cls = get_defense(defense)
    spec = SPECS[dataset]
    hp = cls.hparams(dataset, "paper", overrides)
    d = cls()
    torch.manual_seed(0)
    model = d.wrap(d.build(spec, hp), spec, hp).to(device).eval()
    target = model.bpda_model() if getattr(model, "bpda_model", None) and cls.bpda else model
    return model, target, spec, hp


def seconds_per_evaluation(defense: str, dataset: str, overrides: dict[str, Any] | None, device: torch.device,
                           batch: int, cache: dict[Any, float]) -> float:
    """Seconds one image's forward or backward pass takes through the defense's ``paper`` network."""

    key = (defense, dataset, tuple(sorted((overrides or {}).items())))
    if key in cache:
        return cache[key]
    model, target, spec, _ = paper_network(defense, dataset, device, overrides)

    def step(n: int) -> None:
        x = torch.rand((n, *spec.shape), device=device)
        y = torch.arange(n, device=device) % spec.classes
        xr = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(target(xr), y)
        torch.autograd.grad(loss, xr)
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    step(2)  # a network whose forward pass is an optimisation (Defense-GAN) is timed on these two
    first = time.perf_counter() - start
    if first > 1.0:
        cache[key] = first / (2 * 2)
        return cache[key]
    step(batch)
    reps, start = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - start < 2.0:
        step(batch)
        reps += 1
    cache[key] = (time.perf_counter() - start) / (reps * 2 * batch)
    return cache[key]


def training_evaluations(defense: str, dataset: str, overrides: dict[str, Any] | None) -> int:
    from robustbench_er.plugins.registry import get_defense

    cls = get_defense(defense)
    if not cls.trainable:
        return 0
    hp = cls.hparams(dataset, "paper", overrides)
    n = hp.train_samples or SIZES[dataset][0]
    return int(hp.epochs * n * 2 * (1 + int(getattr(hp, "attack_steps", 0) or 0)))


def cost(path: Path, device: torch.device, batch: int, cache: dict[Any, float]) -> dict[str, Any]:
    import robustbench_er.data.datasets as data_module
    from robustbench_er.inputs.config import parse_experiment
    from robustbench_er.jobs.dryrun import plan_rows
    from robustbench_er.plugins.registry import defense_label

    raw = yaml.safe_load(path.read_text())
    fake = stand_in(raw["dataset"])
    real = data_module.load_dataset
    # every module that imported load_dataset reads the stand-in while the plan is counted
    holders = [m for name, m in list(sys.modules.items())
               if name.startswith("robustbench_er") and getattr(m, "load_dataset", None) is real]
    for m in holders:
        m.load_dataset = lambda *a, **k: fake  # type: ignore[attr-defined]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = dict(raw, data_dir=None)
            configs = parse_experiment(raw, out=tmp).configs(progress=False)
            cell_evals = train_evals = 0
            hours: dict[str, float] = {}
            jobs: set[tuple[str, int]] = set()
            for cfg in configs:
                cfg = dataclasses.replace(cfg, device=str(device))
                rows = plan_rows(cfg)
                by_label = {defense_label(d): (d, cfg.defense_overrides.get(d)) for d in cfg.defenses}
                for _, r in rows.iterrows():
                    label = str(r["defense"]).split(" (")[0]
                    name, overrides = by_label.get(label, (label, None))
                    if r["job"] == "train":
                        if (str(r["where"]), int(r["seed"])) in jobs:
                            continue  # one checkpoint serves every sweep that names it
                        jobs.add((str(r["where"]), int(r["seed"])))
                        n = training_evaluations(name, cfg.dataset, overrides)
                        train_evals += n
                    else:
                        n = int(r["evaluations"] or 0)
                        cell_evals += n
                    if n:
                        h = n * seconds_per_evaluation(name, cfg.dataset, overrides, device, batch, cache) / 3600
                        hours[label] = hours.get(label, 0.0) + h
    finally:
        for m in holders:
            m.load_dataset = real  # type: ignore[attr-defined]
    return {"config": path.name, "cells": cell_evals, "training": train_evals, "hours": hours}


def _key(defense: str, dataset: str, overrides: dict[str, Any] | None) -> tuple[Any, ...]:
    """The key :func:`seconds_per_evaluation` caches a network under."""
    items = ((k, tuple(v) if isinstance(v, list) else v) for k, v in (overrides or {}).items())
    return (defense, dataset, tuple(sorted(items)))


class _Reads(dict):  # type: ignore[type-arg]
    """A cache that remembers which keys were read (the networks a table used)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[Any] = set()

    def __getitem__(self, key: Any) -> Any:
        self.read.add(key)
        return super().__getitem__(key)


def measured_throughput(path: Path, batch: int | None) -> tuple[dict[Any, float], str]:
    """Seconds per evaluation per network from ``gpu_check.json`` (benchmarks/gpu_check.py,
    part 5), at ``batch`` (the nearest measured batch) or, without it, the largest measured
    batch; and a line saying where they were measured."""
    data = json.loads(Path(path).read_text())
    part = (data.get("parts") or {}).get("evaluations") or {}
    per_key: dict[Any, dict[int, float]] = {}
    for e in (part.get("results") or {}).get("entries") or []:
        if e.get("seconds_per_evaluation") and e.get("defense") and e.get("dataset"):
            per_key.setdefault(_key(e["defense"], e["dataset"], e.get("overrides")), {})[int(e["batch"])] = \
                float(e["seconds_per_evaluation"])
    if not per_key:
        raise SystemExit(f"paper_cost: {path} holds no measured evaluations (gpu_check part 5 status:"
                         f" {part.get('status', 'missing')}).")
    cache = {}
    for key, by_batch in per_key.items():
        b = max(by_batch) if batch is None else min(by_batch, key=lambda m: (abs(m - batch), -m))
        cache[key] = by_batch[b]
    env = data.get("environment") or {}
    where = (f"{env.get('device_name') or env.get('device')} ({env.get('device')}, torch {env.get('torch')}),"
             f" measured by gpu_check.py on {data.get('created')}")
    return cache, where


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=None, help="images per timed pass (default: 32 on a CPU, 256 on a GPU)")
    ap.add_argument("--throughput", type=Path, default=None,
                    help="gpu_check.json: read each network's measured seconds per evaluation from it (part 5)"
                         " instead of measuring here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch or (256 if device.type == "cuda" else 32)
    paths = args.configs or sorted((ROOT / "configs").glob("paper_*.yaml"))
    cache = _Reads()
    from_file: set[Any] = set()
    if args.throughput is not None:
        measured, where = measured_throughput(args.throughput, args.batch)
        cache.update(measured)
        from_file = set(measured)
        print(f"throughput from {args.throughput}: {where}; {len(cache)} networks"
              f" ({'batch ' + str(args.batch) if args.batch else 'largest batch measured'});"
              f" any other network is measured on device {device}")
    else:
        print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'},"
              f" {torch.get_num_threads()} threads), batch {batch}")
    hours_col = "hours at the measured throughput" if args.throughput is not None else "hours on this device"
    print(f"| config | cell evaluations | training evaluations (estimate) | {hours_col} | largest share |")
    print("| --- | --- | --- | --- | --- |")
    for p in paths:
        c = cost(p, device, batch, cache)
        total = sum(c["hours"].values())
        top = max(c["hours"], key=c["hours"].get) if c["hours"] else "-"
        share = f"{top} ({100 * c['hours'][top] / total:.0f}%)" if total else "-"
        print(f"| {c['config']} | {c['cells']:.3g} | {c['training']:.3g} | {total:,.1f} | {share} |", flush=True)
    print("\nseconds per evaluation (forward or backward of one image), measured:")
    for key, s in sorted(cache.items()):
        if key not in cache.read:  # in the file, but no table here needed it
            continue
        defense, dataset, over = key
        extra = f" {dict(over)}" if over else ""
        src = "" if args.throughput is None else (" (gpu_check)" if key in from_file else f" (measured here, {device})")
        print(f"  {dataset:14s} {defense}{extra}: {s * 1e3:.3f} ms ({1 / s:,.0f} evaluations/s){src}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
