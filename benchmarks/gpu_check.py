"""GPU check: everything a lent GPU must show, in one command of at most 8 minutes.

No download and no dataset folder: the embedded ``mnist5k`` where it serves, random tensors of
the real input shapes elsewhere. Five parts, cheapest and most important first; each is wrapped
so a failure is recorded (its error in the JSON) and the others still run, ``gpu_check.json``
and ``gpu_check.md`` are rewritten after every part and inside the long ones (a killed run leaves
what it had), and each part runs under its share of ``--budget-s`` (what is left, less a reserve
for each later part): a part still running when its share is spent is stopped with what it
measured kept (``timeout``), and parts with no budget left are recorded as ``skipped``.

1. ``quickstart``: ``robustbench-er run configs/quickstart.yaml`` (none and madry, quick profile,
   on mnist5k; PGD-Linf over 0..0.4, then AutoAttack at 0.3 on the PGD survivors) on the device,
   through the CLI, with ``--quickstart-samples`` points: training time per defense, time per
   attack stage, the leaderboard. Then the PGD sweep of the same checkpoints on
   ``--compare-samples`` points, on the device (cuDNN deterministic, no autotuning) and on the
   CPU: per-point agreement of ``broken_at`` and of the verdict at each eps. The random starts
   are drawn on the CPU from the same seeds, so what differs comes from floating point
   (cuDNN's algorithms, TF32 convolutions, reduction order), which can flip points that sit on
   a decision boundary; on a CUDA device the sweep runs a second time with TF32 off.
2. ``pgd_throughput``: the harness's PGD (the ``pgd`` attack, ``robustbench_er/models/pgd.py``) against
   a plain torch PGD loop (``sweep_efficiency.plain_pgd``: random start, sign step, projection;
   no early stop on either side) on each paper network, on random images of the real shape;
   images per second and their ratio (target >= 0.95).
3. ``autoattack_cell``: one cell of the harness (the ``autoattack`` adapter at eps 0.3 on the
   quickstart's madry checkpoint: clean pass, AutoAttack, verification, store writes) against
   ``pyautoattack.AutoAttack(...).run_standard_evaluation`` on the same model, points and seed;
   robust accuracy of each, per-point agreement, time ratio (target <= 1.05).
4. ``autoattack_sweep``: AutoAttack over K = 9 epsilons (0 to 0.4) on madry, as
   ``benchmarks/autoattack_sweep.py`` measures it (per-sample bisection against K independent
   pyautoattack runs; the same seeds and verification; that script has no device option, so its
   steps are repeated here on the device): time ratio (target <= 0.5) and by how much ours is
   weaker (target: not at all).
5. ``evaluations``: model evaluations per second (a forward and a backward pass of one image,
   as ``benchmarks/paper_cost.py`` measures them) and peak GPU memory, for every network the
   papers' experiment files (``configs/paper_*.yaml``) use and each batch size;
   ``python benchmarks/paper_cost.py --throughput results/gpu_check/gpu_check.json`` turns them
   into measured GPU hours.

    python benchmarks/gpu_check.py                                 # on cuda, into results/gpu_check/
    python benchmarks/gpu_check.py --smoke --device cpu --out /tmp/g   # every part, tiny, in well under a minute
    python benchmarks/gpu_check.py --parts 2,5 --budget-s 120       # some parts only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib
import json
import logging
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("MPLBACKEND", "Agg")

DATASET = "mnist5k"
#: the paper networks of part 2: label -> (defense as the configs name it, dataset)
NETWORKS: dict[str, tuple[str, str]] = {
    "small_cnn": ("madry", "mnist"),
    "mnist_4c4f": ("madry[backbone=mnist_4c4f]", "mnist"),
    "resnet5": ("madry[backbone=resnet5]", "mnist"),
    "er_mnist": ("er-classifier", "mnist"),
    "resnet18": ("madry", "cifar10"),
    "vgg19_bn": ("madry[backbone=vgg19_bn]", "cifar10"),
    "er_vgg19": ("er-classifier", "cifar10"),
    "stl10_6c4f": ("madry", "stl10"),
    "tiny_13c4f": ("madry", "tiny-imagenet"),
}
SMOKE_NETWORKS = ["small_cnn", "mnist_4c4f", "resnet5"]
PART_TITLES = {
    "quickstart": "1. Quickstart on the device, and the same PGD sweep on the CPU",
    "pgd_throughput": "2. PGD throughput: ours vs a plain torch loop",
    "autoattack_cell": "3. One AutoAttack cell: the harness vs pyautoattack directly",
    "autoattack_sweep": "4. AutoAttack over K = 9 epsilons: bisection vs independent runs",
    "evaluations": "5. Evaluations per second and peak memory per paper network",
}
#: a part starts only with at least this many seconds of the budget left
MIN_PART_S = 3.0
#: seconds of the budget held back for each later part while an earlier one runs, so one slow
#: part cannot leave the others nothing (a part may use what later parts do not need)
RESERVE_S = {"quickstart": 0.0, "pgd_throughput": 30.0, "autoattack_cell": 30.0, "autoattack_sweep": 45.0,
             "evaluations": 60.0}
EPS_TOL = 1e-9


class PartTimeout(BaseException):
    """The budget ran out inside a part (a BaseException: the CLI's own handlers let it through)."""


class Terminated(BaseException):
    """SIGTERM: record what is there, then stop."""


# ----------------------------------------------------------------------------- options and sizes

@dataclass
class Sizes:
    quickstart_samples: int
    compare_samples: int
    pgd_batch: int
    pgd_steps: int
    min_time: float
    aa_samples: int
    sweep_samples: int
    eval_batches: list[int]
    networks: list[str]
    cost_configs: list[Path]
    #: AutoAttack parameters of parts 1, 3 and 4 (empty: pyautoattack's standard version)
    aa_params: dict[str, Any] = field(default_factory=dict)


def sizes_for(args: argparse.Namespace, device: torch.device) -> Sizes:
    gpu = device.type == "cuda"
    if args.smoke:
        s = Sizes(quickstart_samples=24, compare_samples=12, pgd_batch=4, pgd_steps=2, min_time=0.0, aa_samples=12,
                  sweep_samples=8, eval_batches=[2], networks=list(SMOKE_NETWORKS),
                  cost_configs=[ROOT / "configs" / "paper_afd_mnist.yaml"],
                  aa_params={"version": "custom", "attacks": ["apgd-ce"], "n_iter": 3, "n_restarts": 1})
    else:
        s = Sizes(quickstart_samples=1000, compare_samples=200, pgd_batch=256 if gpu else 32, pgd_steps=10,
                  min_time=0.5, aa_samples=200, sweep_samples=100,
                  eval_batches=[64, 256] if gpu else [32], networks=list(NETWORKS),
                  cost_configs=sorted((ROOT / "configs").glob("paper_*.yaml")), aa_params={"version": "standard"})
    for name in ("quickstart_samples", "compare_samples", "pgd_batch", "pgd_steps", "aa_samples", "sweep_samples",
                 "min_time"):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    if args.eval_batches:
        s.eval_batches = [int(b) for b in args.eval_batches.split(",") if b.strip()]
    if args.networks:
        s.networks = [n.strip() for n in args.networks.split(",") if n.strip()]
        unknown = [n for n in s.networks if n not in NETWORKS]
        if unknown:
            raise ValueError(f"unknown network {unknown[0]!r}; known: {', '.join(NETWORKS)}")
    return s


# ----------------------------------------------------------------------------- output

def _clean(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python numbers, NaN and infinities to None, keys to strings."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _err(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _f(value: Any, fmt: str = "{:.3g}", missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return fmt.format(value)
    return str(value)


def _pct(value: Any) -> str:
    return _f(None if value is None else 100 * float(value), "{:.1f}")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


class Report:
    """The JSON document and its Markdown rendering, both rewritten on every save."""

    def __init__(self, out: Path, env: dict[str, Any], options: dict[str, Any], parts: list[str]) -> None:
        self.out = out
        self.started = time.perf_counter()
        self.data: dict[str, Any] = {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "environment": env, "options": options, "total_seconds": 0.0, "finished": False,
            "parts": {key: {"title": PART_TITLES[key], "status": "pending" if key in parts else "not selected",
                            "seconds": None, "error": None, "results": {}} for key in PART_TITLES},
        }
        # a run of some parts keeps the other parts' results of the run before it, marked as such
        previous = self.out / "gpu_check.json"
        if len(parts) < len(PART_TITLES) and previous.is_file():
            with contextlib.suppress(Exception):
                old = json.loads(previous.read_text())
                for key, entry in (old.get("parts") or {}).items():
                    if key in self.data["parts"] and key not in parts and entry.get("status") != "not selected":
                        self.data["parts"][key] = dict(entry, earlier_run=entry.get("earlier_run") or old.get("created"),
                                                       earlier_device=(old.get("environment") or {}).get("device_name"))

    def save(self) -> None:
        self.data["total_seconds"] = time.perf_counter() - self.started
        self.out.mkdir(parents=True, exist_ok=True)
        _write(self.out / "gpu_check.json", json.dumps(_clean(self.data), indent=2) + "\n")
        _write(self.out / "gpu_check.md", render_markdown(self.data))


# ----------------------------------------------------------------------------- the context parts share

class Context:
    def __init__(self, args: argparse.Namespace, device: torch.device, sizes: Sizes, out: Path, report: Report,
                 budget_s: float) -> None:
        self.args, self.device, self.sizes, self.out, self.report = args, device, sizes, out, report
        self.budget_s = budget_s
        self.started = time.perf_counter()
        self.qs_dir = out / "quickstart"
        self._reusable: dict[str, Path] | None = None
        self._trained_here = False

    def remaining(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def save(self) -> None:
        self.report.save()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fresh(self, name: str) -> Path:
        """``<out>/<name>``, emptied: this script's own subfolder for one part."""
        folder = self.out / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def experiment(self) -> dict[str, Any]:
        """configs/quickstart.yaml with this run's sample count (and, with --smoke, the attacks
        shortened and, unless the reference's checkpoints can be reused, the schedules shrunk)."""
        import yaml

        raw: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
        raw["samples"] = self.sizes.quickstart_samples
        raw["out"] = str(self.qs_dir)
        if self.args.smoke:
            raw["eps"] = "0:0.4:0.05"
            raw["attacks"] = [{"name": "pgd", "params": {"steps": 5}},
                              {"name": "autoattack", "eps": [0.3], "params": dict(self.sizes.aa_params)}]
            if not self.reusable():
                raw["defenses"] = {
                    "none": {"epochs": 1, "train_samples": 480, "batch_size": 16},
                    "madry": {"epochs": 1, "train_samples": 480, "batch_size": 16, "attack_steps": 1, "step_size": 0.3,
                              "warmup_epochs": 0, "ramp_epochs": 0},
                }
        return raw

    def reusable(self) -> dict[str, Path]:
        """With --reuse-checkpoints (--smoke: the committed mnist5k reference), the folders of the
        quickstart's checkpoints found there, if both are (same training spec, so same name)."""
        if self._reusable is None:
            self._reusable = {}
            src = self.args.reuse_checkpoints
            if src is None and self.args.smoke:
                src = ROOT / "results" / "mnist5k_reference"
            if src is not None:
                from robustbench_er.data.datasets import load_dataset
                from robustbench_er.engine.trained import checkpoint_folder

                data = load_dataset(DATASET)
                found = {d: checkpoint_folder(d, data, profile="quick", seed=0, out=Path(src)) for d in ("none", "madry")}
                if all((f / "meta.json").is_file() for f in found.values()):
                    self._reusable = found
        return self._reusable

    def place_reused(self) -> None:
        """Copy the reusable checkpoints where the quickstart looks for its own."""
        for folder in self.reusable().values():
            dest = self.qs_dir / "checkpoints" / folder.name
            if not (dest / "meta.json").is_file():
                shutil.copytree(folder, dest, dirs_exist_ok=True)

    def defense_overrides(self, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
        d = raw.get("defenses")
        return {k: dict(v or {}) for k, v in d.items()} if isinstance(d, dict) else {}

    def checkpoint(self, defense: str) -> Any:
        """The quickstart's trained ``defense`` (reused from part 1, or trained here the same way)."""
        from robustbench_er.data.datasets import load_dataset
        from robustbench_er.engine.trained import checkpoint_folder, get_or_train

        raw = self.experiment()
        self.place_reused()
        data = load_dataset(raw["dataset"])
        spec = dict(profile=raw.get("profile", "quick"), seed=int(raw.get("seed", 0) or 0),
                    overrides=self.defense_overrides(raw).get(defense) or None)
        out = self.qs_dir
        if not (checkpoint_folder(defense, data, out=out, **spec) / "meta.json").is_file():
            # not left by part 1 (it failed, or was stopped while training, its lease still
            # running): train in a folder of this run's own, where no stale lease can make us wait
            out = self.out / "trained_here"
            if not self._trained_here:
                shutil.rmtree(out, ignore_errors=True)
                self._trained_here = True
        return get_or_train(defense, data, out=out, device=self.device, progress=False, measure=False, **spec)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`PartTimeout` in the main thread once ``seconds`` have passed."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise PartTimeout(f"stopped when its share of the budget ran out ({seconds:.0f} s)")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def cudnn_settings(deterministic: bool, tf32: bool | None = None) -> Iterator[None]:
    b = torch.backends
    old = (b.cudnn.deterministic, b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
    b.cudnn.deterministic, b.cudnn.benchmark = deterministic, False
    if tf32 is not None:
        b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        b.cudnn.deterministic, b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = old


def timed(ctx: Context, fn: Callable[[], Any]) -> tuple[float, Any]:
    ctx.sync()
    t0 = time.perf_counter()
    value = fn()
    ctx.sync()
    return time.perf_counter() - t0, value


# ----------------------------------------------------------------------------- shared helpers

def robust_at(clean: np.ndarray, broken_at: np.ndarray, eps: float) -> np.ndarray:
    """Per point: correctly classified and not broken at or below ``eps``."""
    ba = np.nan_to_num(broken_at.astype(float), nan=np.inf)
    return clean.astype(bool) & (ba > eps + EPS_TOL)


def build_network(defense: str, dataset: str, device: torch.device) -> tuple[Any, Any, Any, Any]:
    """The ``paper`` preset's network of ``defense`` on ``dataset``, built as
    ``benchmarks/paper_cost.py`` builds it: (model, model gradient attacks see, spec, hp)."""
    from paper_cost import paper_network

    return paper_network(defense, dataset, device)


def n_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def sweep_cell(ctx: Context, out: Path, defense: str, folder: Path, attack: str, params: dict[str, Any],
               grid: list[float], samples: int, device: torch.device, *, search: str = "bisect",
               batch_size: int = 128) -> tuple[Any, Any]:
    """Plan one cell of ``attack`` on the checkpoint ``folder`` (nothing trained): (cell, store)."""
    from robustbench_er.engine.spec import AttackConfig, SweepConfig
    from robustbench_er.engine.sweep import plan_sweep
    from robustbench_er.store.results import Store

    cfg = SweepConfig(dataset=DATASET, defenses=[defense], attacks=[AttackConfig(attack, dict(params))], eps=list(grid),
                      norm="Linf", samples=samples, seed=0, out=out, device=str(device), batch_size=batch_size,
                      progress=False, search=search, checkpoints={defense: str(folder)})
    cells = plan_sweep(cfg)
    if len(cells) != 1:
        raise RuntimeError(f"expected one cell for {defense}/{attack}, planned {len(cells)}")
    return cells[0], Store(out)


def run_one_cell(ctx: Context, cell: Any, store: Any, batch_size: int) -> tuple[float, Any, Any]:
    """Run a planned cell: (seconds, summary, outcomes frame)."""
    from robustbench_er.engine.sweep import run_cell

    seconds, summary = timed(ctx, lambda: run_cell(store, cell, batch_size=batch_size, progress=False))
    return seconds, summary, store.outcomes(cell.cell_id)


@contextlib.contextmanager
def quiet_autoattack() -> Iterator[None]:
    """pyautoattack's logger and warnings silenced, and the trace function it replaces restored
    (as the harness's adapter does)."""
    import warnings

    aa_log = logging.getLogger("auto-attack")
    old_level, old_trace = aa_log.level, sys.gettrace()
    aa_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        aa_log.setLevel(old_level)
        sys.settrace(old_trace)


def direct_autoattack(model: Any, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int, device: torch.device,
                      params: dict[str, Any]) -> torch.Tensor:
    """``pyautoattack.AutoAttack(...).run_standard_evaluation`` as a user calls it, with the
    version and settings of ``params`` (the adapter's parameters; n_iter / n_restarts set on the
    APGD objects the way the package's own constructor sets them)."""
    import pyautoattack

    version = params.get("version") or "standard"
    attacks = list(params["attacks"]) if version == "custom" else None
    with quiet_autoattack(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        aa = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, version=version, attacks=attacks, seed=seed,
                                     device=device)
        aa.verbose = False
        for apgd in (aa.apgd, aa.apgd_targeted):
            if params.get("n_iter") is not None:
                apgd.n_iter = int(params["n_iter"])
                apgd.n_iter_2 = max(int(0.22 * apgd.n_iter), 1)
                apgd.n_iter_min = max(int(0.06 * apgd.n_iter), 1)
                apgd.size_decr = max(int(0.03 * apgd.n_iter), 1)
            if params.get("n_restarts") is not None:
                apgd.n_restarts = int(params["n_restarts"])
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=int(params.get("batch_size", 500)))
    return x_adv.detach()


def record_seeds(attack: Any) -> list[int]:
    """Wrap the adapter's ``build`` so the seeds it hands pyautoattack are recorded."""
    seeds: list[int] = []
    build = getattr(attack, "build", None)
    if build is None:
        return seeds

    def recording(*args: Any, **kwargs: Any) -> Any:  # build(model, eps, seed, device)
        seed = kwargs.get("seed", args[2] if len(args) > 2 else None)
        if seed is not None:
            seeds.append(int(seed))
        return build(*args, **kwargs)

    attack.build = recording
    return seeds


# ----------------------------------------------------------------------------- part 1

def part_quickstart(ctx: Context, res: dict[str, Any]) -> None:
    # the modules the later steps read with are imported before the timed run, so that its wall
    # time leaves their import out
    for module in ("pandas", "robustbench_er.core.text", "robustbench_er.store.results"):
        importlib.import_module(module)
    raw = ctx.experiment()
    wall = quickstart_run(ctx, res, raw)
    folders = quickstart_stages(ctx, res, wall)
    quickstart_compare(ctx, res, raw, folders)


def quickstart_run(ctx: Context, res: dict[str, Any], raw: dict[str, Any]) -> float:
    """Run the quickstart experiment ``raw`` through the CLI into ``ctx.qs_dir``; return its wall time."""
    import yaml

    from robustbench_er.cli import main as cli_main

    if ctx.qs_dir.exists():
        shutil.rmtree(ctx.qs_dir)
    ctx.place_reused()
    res["reused_checkpoints"] = {d: str(f) for d, f in ctx.reusable().items()}
    exp_path = ctx.out / "quickstart.yaml"
    exp_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    argv = ["run", str(exp_path), "--out", str(ctx.qs_dir), "--device", str(ctx.device), "--quiet"]
    res.update(command="robustbench-er " + " ".join(argv), samples=raw["samples"], experiment=raw)
    log_path = ctx.out / "quickstart.log"
    with open(log_path, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        wall, rc = timed(ctx, lambda: cli_main(argv))
    res.update(wall_s=wall, exit_status=rc, log=str(log_path))
    ctx.save()
    if rc != 0:
        tail = log_path.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"robustbench-er run exited with status {rc}: {' / '.join(tail)}")
    return wall


def quickstart_stages(ctx: Context, res: dict[str, Any], wall: float) -> dict[str, Path]:
    """Training per defense (the checkpoint's metadata), each attack stage (the store), the
    leaderboard and the worst-case curves of the quickstart run; returns the checkpoint folder
    per defense."""
    import pandas as pd

    from robustbench_er.store.results import Store

    folders: dict[str, Path] = {}
    training = []
    for meta_path in sorted((ctx.qs_dir / "checkpoints").glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        folders[str(meta.get("defense"))] = meta_path.parent
        training.append({"defense": meta.get("defense"), "seconds": meta.get("train_seconds"),
                         "clean_acc": meta.get("clean_acc"), "folder": meta_path.parent.name,
                         "reused": meta.get("defense") in ctx.reusable()})
    store = Store(ctx.qs_dir)
    try:
        cells = store.cells_frame()
        stages = [{"defense": r["defense"], "attack": r["attack_label"], "n": int(r["n"]), "seconds": float(r["seconds"]),
                   "steps": int(len(store.steps(r["cell_id"]))), "status": r["status"]} for _, r in cells.iterrows()]
    finally:
        store.close()
    accounted = sum(t["seconds"] or 0.0 for t in training if not t["reused"]) + sum(s["seconds"] for s in stages)
    res.update(training=training, stages=stages, other_s=wall - accounted)
    board = json.loads((ctx.qs_dir / "leaderboard.json").read_text())
    res["leaderboard"] = [{k: row.get(k) for k in ("name", "clean_acc", "robust_acc", "robust_acc_per_attack", "auc",
                                                     "n", "flags")} for row in board]
    curves = pd.read_csv(ctx.qs_dir / "curves.csv")
    wc = curves[curves["attack"] == "worst-case"]
    res["curves"] = {str(d): {f"{float(e):g}": float(a) for e, a in zip(g["eps"], g["robust_acc"])}
                     for d, g in wc.groupby("defense")}
    ctx.save()
    return folders


def quickstart_compare(ctx: Context, res: dict[str, Any], raw: dict[str, Any], folders: dict[str, Path]) -> None:
    """The same PGD sweep on --compare-samples points: the device (deterministic cuDNN), then the CPU."""
    from robustbench_er.core.text import parse_eps

    pgd_params: dict[str, Any] = {}
    for a in raw["attacks"]:
        if (a if isinstance(a, str) else a.get("name")) == "pgd":
            pgd_params = {} if isinstance(a, str) else dict(a.get("params") or {})
    grid = parse_eps(str(raw["eps"]))
    n = min(ctx.sizes.compare_samples, ctx.sizes.quickstart_samples)
    sides: list[tuple[str, torch.device, bool | None]] = [("device", ctx.device, None)]
    if ctx.device.type == "cuda":
        sides.append(("device, TF32 off", ctx.device, False))
    sides.append(("cpu", torch.device("cpu"), None))
    comparison: dict[str, Any] = {"points": n, "grid": grid, "sides": [s[0] for s in sides], "defenses": {},
                                  "note": "random starts are drawn on the CPU from the same seeds on every side; what"
                                          " differs comes from floating point (cuDNN algorithms, TF32 convolutions,"
                                          " reduction order) flipping points on a decision boundary"}
    res["comparison"] = comparison
    outcomes: dict[str, dict[str, Any]] = {}
    stores: dict[str, Path] = {}
    for label, dev, tf32 in sides:
        per: dict[str, Any] = {}
        sub = ctx.fresh("compare_" + label.replace(", ", "_").replace(" ", "_"))
        stores[label] = sub
        with cudnn_settings(deterministic=True, tf32=tf32):
            for defense in ("none", "madry"):
                if defense not in folders:
                    raise RuntimeError(f"the quickstart left no {defense} checkpoint in {ctx.qs_dir / 'checkpoints'}")
                cell, store = sweep_cell(ctx, sub / defense, defense, folders[defense], "pgd", pgd_params, grid, n, dev)
                try:
                    seconds, _, out = run_one_cell(ctx, cell, store, 128)
                finally:
                    store.close()
                per[defense] = {"seconds": seconds, "out": out.set_index("sample_id").sort_index()}
        outcomes[label] = per
        comparison["defenses"] = compare_sides(outcomes, grid)  # after every side: a stop keeps the sides done
        ctx.save()
    comparison["paired_tests"] = paired_tests(stores)
    ctx.save()


def paired_tests(stores: dict[str, Path]) -> dict[str, Any]:
    """``robustbench_er.compare`` of each later side's store with the first side's, per defense:
    the robust accuracies, their difference and the exact McNemar p-value at each eps."""
    import robustbench_er

    labels = list(stores)
    out: dict[str, Any] = {}
    for defense in ("none", "madry"):
        for label in labels[1:]:
            table = robustbench_er.compare(stores[labels[0]] / defense, stores[label] / defense)
            rows = table[table["attack"] != "worst-case"].sort_values("eps")
            out.setdefault(defense, {})[f"vs {label}"] = [
                {"eps": float(r["eps"]), "acc_a": float(r["acc_a"]), "acc_b": float(r["acc_b"]),
                 "diff": float(r["diff"]), "test": str(r["test"]), "p": float(r["p"])} for _, r in rows.iterrows()]
    return out


def compare_sides(outcomes: dict[str, dict[str, Any]], grid: list[float]) -> dict[str, Any]:
    """Per defense: each side's robust accuracy at each eps, and each later side's per-point
    agreement with the first (the device as the sweep runs it)."""
    labels = list(outcomes)
    result: dict[str, Any] = {}
    for defense in outcomes[labels[0]]:
        a = outcomes[labels[0]][defense]["out"]
        acc = {}
        for label in labels:
            b = outcomes[label][defense]["out"]
            acc[label] = [float(robust_at(b["clean_correct"].to_numpy(), b["broken_at"].to_numpy(dtype=float), e).mean())
                          for e in grid]
        entry: dict[str, Any] = {"seconds": {label: outcomes[label][defense]["seconds"] for label in labels},
                                 "robust_acc": acc}
        for label in labels[1:]:
            b = outcomes[label][defense]["out"].reindex(a.index)
            ca, cb = a["clean_correct"].to_numpy().astype(bool), b["clean_correct"].to_numpy().astype(bool)
            ba, bb = a["broken_at"].to_numpy(dtype=float), b["broken_at"].to_numpy(dtype=float)
            same_ba = np.where(np.isnan(ba) | np.isnan(bb), np.isnan(ba) & np.isnan(bb),
                               np.abs(np.nan_to_num(ba) - np.nan_to_num(bb)) < 1e-9)
            per_eps = [float((robust_at(ca, ba, e) == robust_at(cb, bb, e)).mean()) for e in grid]
            differ = np.flatnonzero(~(same_ba & (ca == cb)))
            entry[f"vs {label}"] = {
                "clean_agreement": float((ca == cb).mean()),
                "broken_at_agreement": float(same_ba.mean()),
                "verdict_agreement_per_eps": per_eps,
                "min_verdict_agreement": min(per_eps),
                "max_robust_acc_diff_points": 100 * max(abs(x - y) for x, y in zip(acc[labels[0]], acc[label])),
                "differing_points": [{"sample_id": int(a.index[i]), "broken_at": {labels[0]: ba[i], label: bb[i]},
                                      "clean_correct": {labels[0]: bool(ca[i]), label: bool(cb[i])}}
                                     for i in differ[:20]],
            }
        result[defense] = entry
    return result


# ----------------------------------------------------------------------------- part 2

def pgd_throughput(ctx: Context, defense: str, dataset: str, row: dict[str, Any]) -> None:
    """Images per second of our PGD and of the plain loop on one network, into ``row``."""
    from sweep_efficiency import plain_pgd as untyped_plain_pgd

    from robustbench_er.plugins.registry import get_attack

    plain_pgd: Callable[..., torch.Tensor] = untyped_plain_pgd
    s = ctx.sizes
    model, target, spec, hp = build_network(defense, dataset, ctx.device)
    row.update(backbone=getattr(hp, "backbone", None), input=list(spec.shape), params_m=n_params(model))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((s.pgd_batch, *spec.shape), generator=gen).to(ctx.device)
    y = torch.randint(0, spec.classes, (s.pgd_batch,), generator=gen).to(ctx.device)
    eps = 0.3 if spec.shape[0] == 1 else 8 / 255
    eps_t = torch.full((s.pgd_batch,), eps, device=ctx.device)
    attack = get_attack("pgd")(norm="Linf", steps=s.pgd_steps, early_stop=False)

    def ours() -> Any:
        return attack.run(target, x, y, eps_t, generator=torch.Generator().manual_seed(1))

    def plain() -> Any:
        return plain_pgd(target, x, y, eps, s.pgd_steps, eps * 2.5 / s.pgd_steps)

    timed(ctx, ours)  # warm-up (kernels, cuDNN's choices, the allocator)
    timed(ctx, plain)
    t = {"ours": 0.0, "plain": 0.0}
    reps = 0
    while reps < 2 or min(t.values()) < s.min_time:  # alternated, so drift hits both alike
        t["ours"] += timed(ctx, ours)[0]
        t["plain"] += timed(ctx, plain)[0]
        reps += 1
        row.update(reps=reps, ours_img_s=reps * s.pgd_batch / t["ours"], plain_img_s=reps * s.pgd_batch / t["plain"])
    row["ratio"] = row["ours_img_s"] / row["plain_img_s"]
    row["meets_target"] = row["ratio"] >= 0.95


def part_pgd_throughput(ctx: Context, res: dict[str, Any]) -> None:
    s = ctx.sizes
    res.update(batch=s.pgd_batch, steps=s.pgd_steps, target=">= 0.95", networks=[])
    for label in s.networks:
        defense, dataset = NETWORKS[label]
        row: dict[str, Any] = {"network": label, "defense": defense, "dataset": dataset}
        res["networks"].append(row)
        try:
            pgd_throughput(ctx, defense, dataset, row)
        except PartTimeout:
            raise
        except Exception as exc:  # an out-of-memory network is a result, not the end of the part
            row["error"] = _err(exc)
        finally:
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
            ctx.save()
    ratios = [r["ratio"] for r in res["networks"] if "ratio" in r]
    res["worst_ratio"] = min(ratios) if ratios else None
    res["errors"] = sum("error" in r for r in res["networks"])


# ----------------------------------------------------------------------------- part 3

def part_autoattack_cell(ctx: Context, res: dict[str, Any]) -> None:
    from robustbench_er.plugins.attack import verify

    s = ctx.sizes
    eps = 0.3
    params = dict(s.aa_params, batch_size=500)
    trained = ctx.checkpoint("madry")
    sub = ctx.fresh("autoattack_cell")
    res.update(defense="madry", eps=eps, points=s.aa_samples, params=params, target="<= 1.05",
               checkpoint=str(trained.folder))
    cell, store = sweep_cell(ctx, sub, "madry", trained.folder, "autoattack", params, [eps], s.aa_samples, ctx.device,
                             batch_size=500)
    model = cell.trained.model.eval()
    ids = torch.as_tensor(cell.sample_ids)
    data = cell.dataset
    x, y = data.x_test[ids].to(ctx.device), data.y_test[ids].to(ctx.device)
    # warm-up on a few points with a short APGD-CE, so neither side pays for the first kernels
    timed(ctx, lambda: direct_autoattack(model, x[:8], y[:8], eps, 0, ctx.device,
                                         {"version": "custom", "attacks": ["apgd-ce"], "n_iter": 2, "n_restarts": 1}))
    seeds = record_seeds(cell.attack)
    try:
        t_ours, _, out = run_one_cell(ctx, cell, store, 500)
    finally:
        store.close()
    out = out.set_index("sample_id").loc[[int(i) for i in cell.sample_ids]]
    robust_ours = robust_at(out["clean_correct"].to_numpy(), out["broken_at"].to_numpy(dtype=float), eps)
    res["harness"] = {"seconds": t_ours, "robust_acc": float(robust_ours.mean()),
                      "clean_acc": float(out["clean_correct"].mean()), "seeds": seeds}
    ctx.save()

    seed = seeds[0] if seeds else 0
    t_direct, x_adv = timed(ctx, lambda: direct_autoattack(model, x, y, eps, seed, ctx.device, params))
    with torch.no_grad():
        clean_ok = model.predict_label(x) == y
        aa_says = model.predict_label(x_adv) == y
    ok, _ = verify(model, x, x_adv, y, "Linf", torch.full((len(x),), eps, device=ctx.device))
    robust_direct = (clean_ok & ~ok).cpu().numpy()
    res["direct"] = {"seconds": t_direct, "robust_acc": float(robust_direct.mean()),
                     "robust_acc_own_count": float(aa_says.float().mean()), "seed": seed}
    res["agreement"] = float((robust_direct == robust_ours).mean())
    res["disagreeing_points"] = [int(cell.sample_ids[i]) for i in np.flatnonzero(robust_direct != robust_ours)][:20]
    res["time_ratio"] = t_ours / t_direct
    res["meets_target"] = res["time_ratio"] <= 1.05


# ----------------------------------------------------------------------------- part 4

def part_autoattack_sweep(ctx: Context, res: dict[str, Any]) -> None:
    """The measurement of benchmarks/autoattack_sweep.py (bisection vs K independent runs, the
    same seeds from the cell id, the same verification), on the device."""
    from robustbench_er.core.text import parse_eps
    from robustbench_er.engine.spec import seed_for
    from robustbench_er.plugins.attack import verify

    s = ctx.sizes
    grid = parse_eps("0:0.4:0.05")
    params = dict(s.aa_params, batch_size=500)
    trained = ctx.checkpoint("madry")
    sub = ctx.fresh("autoattack_sweep")
    res.update(defense="madry", grid=grid, k=len(grid), points=s.sweep_samples, params=params, target="<= 0.5")
    cell, store = sweep_cell(ctx, sub, "madry", trained.folder, "autoattack", params, grid, s.sweep_samples, ctx.device,
                             search="bisect", batch_size=500)
    t0 = time.perf_counter()
    try:
        t_ours, summary, _ = run_one_cell(ctx, cell, store, 500)
        rounds = int(len(store.steps(cell.cell_id)))
    except PartTimeout:  # keep how far the bisection got
        with contextlib.suppress(Exception):
            done = store.steps(cell.cell_id)
            res["bisect"] = {"seconds": time.perf_counter() - t0, "rounds": int(len(done)), "complete": False,
                             "attacked_per_round": [int(a) for a in done["attacked"]]}
        raise
    finally:
        store.close()
    ours = [float(summary.robust[e]) for e in grid]
    res["bisect"] = {"seconds": t_ours, "rounds": rounds, "robust_acc": ours, "complete": True}
    ctx.save()

    model = cell.trained.model.eval()
    ids = torch.as_tensor(cell.sample_ids)
    x, y = cell.dataset.x_test[ids].to(ctx.device), cell.dataset.y_test[ids].to(ctx.device)
    indep: list[float] = []
    survived = []
    t0 = time.perf_counter()
    with torch.no_grad():
        clean_ok = model.predict_label(x) == y
    for i, e in enumerate(grid):
        if e <= 0:
            indep.append(float(clean_ok.float().mean()))
            continue
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(seed_for(cell.cell_id, i))))
        x_adv = direct_autoattack(model, x, y, e, seed, ctx.device, params)
        ok, _ = verify(model, x, x_adv, y, "Linf", torch.full((len(x),), e, device=ctx.device))
        indep.append(float((clean_ok & ~ok).float().mean()))
        survived.append(clean_ok & ~ok)
        res["independent"] = {"seconds": time.perf_counter() - t0, "robust_acc": list(indep), "complete": False}
    ctx.sync()
    t_indep = time.perf_counter() - t0
    res["independent"] = {"seconds": t_indep, "robust_acc": indep, "complete": True}
    full_indep = int(torch.stack(survived).sum()) if survived else 0
    full_min = int(torch.stack(survived).any(0).sum()) if survived else 0
    res["full_evaluations"] = {"independent": full_indep, "least_any_search_needs": full_min,
                               "floor": full_min / full_indep if full_indep else None}
    res["time_ratio"] = t_ours / t_indep
    res["weaker_by_points"] = max(0.0, max(a - b for a, b in zip(ours, indep))) * 100
    res["stronger_by_points"] = max(0.0, max(b - a for a, b in zip(ours, indep))) * 100
    res["meets_target"] = res["time_ratio"] <= 0.5 and res["weaker_by_points"] == 0


# ----------------------------------------------------------------------------- part 5

def config_defenses(paths: list[Path]) -> list[tuple[str, str, dict[str, Any]]]:
    """(defense, dataset, overrides) for every defense the experiment files name, as
    ``benchmarks/paper_cost.py`` keys them."""
    import yaml

    keys: dict[str, tuple[str, str, dict[str, Any]]] = {}

    def add(entry: Any, dataset: str) -> None:
        if isinstance(entry, str):
            name, over = entry, {}
        elif isinstance(entry, dict) and "name" in entry:
            name, over = str(entry["name"]), dict(entry.get("overrides") or {})
        else:
            return
        keys.setdefault(json.dumps([name, dataset, over], sort_keys=True), (name, dataset, over))

    for path in paths:
        raw = yaml.safe_load(path.read_text())
        for sec in [raw, *(raw.get("sweeps") or [])]:
            dataset = str(sec.get("dataset") or raw["dataset"])
            defenses = sec.get("defenses") or []
            if isinstance(defenses, dict):
                defenses = [{"name": k, "overrides": v} for k, v in defenses.items()]
            for entry in defenses:
                add(entry, dataset)
    return list(keys.values())


def seconds_per_evaluation(ctx: Context, target: Any, spec: Any, batch: int) -> dict[str, Any]:
    """``paper_cost.seconds_per_evaluation``'s measure (cross-entropy forward and backward to the
    input on random images; seconds / (repetitions x 2 x batch)) with peak memory."""
    dev = ctx.device

    def step(n: int) -> None:
        x = torch.rand((n, *spec.shape), device=dev)
        y = torch.arange(n, device=dev) % spec.classes
        xr = x.clone().requires_grad_(True)
        loss = F.cross_entropy(target(xr), y)
        torch.autograd.grad(loss, xr)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    first, _ = timed(ctx, lambda: step(2))
    if first > 1.0:  # the first call may be loading kernels or choosing algorithms: look again
        first, _ = timed(ctx, lambda: step(2))
    row: dict[str, Any] = {"batch": batch}
    if first > 1.0:  # a forward pass that is an optimisation (Defense-GAN): timed on these two, as paper_cost does
        row.update(batch=2, seconds_per_evaluation=first / 4, reps=1, note="timed on 2 images (slow forward)")
    else:
        timed(ctx, lambda: step(batch))
        reps, total = 0, 0.0
        while reps < 3 or total < ctx.sizes.min_time:
            total += timed(ctx, lambda: step(batch))[0]
            reps += 1
        row.update(seconds_per_evaluation=total / (reps * 2 * batch), reps=reps)
    row["evaluations_per_second"] = 1 / row["seconds_per_evaluation"]
    if dev.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return row


def part_evaluations(ctx: Context, res: dict[str, Any]) -> None:
    s = ctx.sizes
    keys: list[tuple[str, str, dict[str, Any]]] = [(NETWORKS[n][0], NETWORKS[n][1], {}) for n in s.networks]
    try:
        keys += config_defenses(s.cost_configs)
    except Exception as exc:  # the part-2 networks are still measured
        res["config_error"] = _err(exc)
    res.update(batches=s.eval_batches, configs=[p.name for p in s.cost_configs], networks=[], entries=[])
    # one measurement per distinct network: defenses that build the same architecture share it
    groups: dict[str, dict[str, Any]] = {}
    from paper_cost import paper_network

    from robustbench_er.plugins.registry import get_defense

    for defense, dataset, over in keys:
        try:
            cls = get_defense(defense)
            model, target, spec, hp = paper_network(defense, dataset, torch.device("cpu"), over or None)
            # the architecture decides the cost; a randomized or BPDA forward also its settings
            extra = repr(hp) if getattr(cls, "randomized", False) or getattr(cls, "bpda", False) else ""
            sig = hashlib.sha256(f"{dataset}|{target!r}|{extra}".encode()).hexdigest()[:12]
        except Exception as exc:
            res["entries"].append({"defense": defense, "dataset": dataset, "overrides": over, "error": _err(exc)})
            continue
        g = groups.setdefault(sig, {"network": f"{getattr(hp, 'backbone', type(model).__name__)}", "dataset": dataset,
                                    "params_m": n_params(model), "keys": [], "model": (model, target, spec)})
        if (defense, dataset, over) not in g["keys"]:
            g["keys"].append((defense, dataset, over))
    ctx.save()
    for sig, g in groups.items():
        model, target, spec = g.pop("model")
        net = {"network": g["network"], "dataset": g["dataset"], "params_m": g["params_m"], "signature": sig,
               "defenses": [k[0] + (f" {k[2]}" if k[2] else "") for k in g["keys"]], "batches": []}
        res["networks"].append(net)
        if ctx.remaining() < 2:
            net["skipped"] = "budget spent"
            ctx.save()
            continue
        model.to(ctx.device).eval()
        target = target.to(ctx.device).eval()  # a BPDA twin shares the network but has its own buffers
        for batch in s.eval_batches:
            try:
                row = seconds_per_evaluation(ctx, target, spec, batch)
            except PartTimeout:
                raise
            except Exception as exc:  # an out-of-memory batch is a result, not the end of the part
                row = {"batch": batch, "error": _err(exc)}
            net["batches"].append(row)
            for defense, dataset, over in g["keys"]:
                res["entries"].append(dict(row, defense=defense, dataset=dataset, overrides=over, network=g["network"],
                                           signature=sig))
            if "note" in row:  # one timing stands for every batch size
                break
        model.cpu()
        del model, target
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        ctx.save()
    res["errors"] = sum("error" in e for e in res["entries"]) + ("config_error" in res)


PARTS: dict[str, Callable[[Context, dict[str, Any]], None]] = {
    "quickstart": part_quickstart,
    "pgd_throughput": part_pgd_throughput,
    "autoattack_cell": part_autoattack_cell,
    "autoattack_sweep": part_autoattack_sweep,
    "evaluations": part_evaluations,
}


# ----------------------------------------------------------------------------- markdown

def _section_quickstart(r: dict[str, Any]) -> list[str]:
    lines = []
    if "command" in r:
        lines += [f"`{r['command']}`: {r.get('samples')} points, {_f(r.get('wall_s'), '{:.1f}')} s in all.", ""]
    rows = [[t["defense"], "training" + (" (reused: not timed here)" if t.get("reused") else ""),
             _f(t["seconds"], "{:.1f}"), f"clean accuracy {_pct(t.get('clean_acc'))}%"] for t in r.get("training", [])]
    rows += [[st["defense"], st["attack"], _f(st["seconds"], "{:.1f}"), f"{st['steps']} steps, n = {st['n']}"]
             for st in r.get("stages", [])]
    if rows:
        rows.append(["", "everything else (start-up, data, clean passes, checks, reports)", _f(r.get("other_s"), "{:.1f}"), ""])
        lines += _table(["defense", "stage", "seconds", ""], rows) + [""]
    board = r.get("leaderboard") or []
    if board:
        attacks = list(dict.fromkeys(a for row in board for a in (row.get("robust_acc_per_attack") or {})))
        lines += _table(["defense", "clean %", "robust % @ 0.3", *[f"{a} %" for a in attacks], "AUC", "n", "flags"],
                        [[row["name"], _pct(row.get("clean_acc")), _pct(row.get("robust_acc")),
                          *[_pct((row.get("robust_acc_per_attack") or {}).get(a)) for a in attacks],
                          _f(row.get("auc")), row.get("n"), ";".join(row.get("flags") or []) or ""] for row in board]) + [""]
    cmp_ = r.get("comparison") or {}
    if cmp_.get("defenses"):
        lines += [f"PGD sweep of the same checkpoints on {cmp_['points']} points, per side ({cmp_['note']}):", ""]
        rows = []
        for defense, e in cmp_["defenses"].items():
            for key, v in e.items():
                if not key.startswith("vs "):
                    continue
                label = key[3:]
                rows.append([defense, f"device vs {label}", _pct(v["clean_agreement"]), _pct(v["broken_at_agreement"]),
                             _pct(v["min_verdict_agreement"]), _f(v["max_robust_acc_diff_points"], "{:.1f}"),
                             " / ".join(_f(e["seconds"].get(s_), "{:.1f}") for s_ in cmp_["sides"])])
        lines += _table(["defense", "sides", "clean verdicts agree %", "broken_at agrees %", "worst eps: verdicts agree %",
                         "largest robust-accuracy gap (points)", f"seconds ({' / '.join(cmp_['sides'])})"], rows) + [""]
        grid = cmp_.get("grid") or []
        header = ["eps"] + [f"{d} ({s_})" for d in cmp_["defenses"] for s_ in cmp_["sides"]]
        rows = [[_f(eps_, "{:g}")] + [_pct((cmp_["defenses"][d]["robust_acc"].get(s_) or [None] * len(grid))[i])
                                      for d in cmp_["defenses"] for s_ in cmp_["sides"]] for i, eps_ in enumerate(grid)]
        lines += ["Robust accuracy (%) of the PGD sweep at each eps, per side:", ""] + _table(header, rows) + [""]
    return lines


def _section_pgd(r: dict[str, Any]) -> list[str]:
    rows = [[n["network"], n["dataset"], "x".join(str(v) for v in n.get("input", [])), _f(n.get("params_m"), "{:.2f}"),
             _f(n.get("ours_img_s"), "{:,.0f}"), _f(n.get("plain_img_s"), "{:,.0f}"),
             _f(n.get("ratio"), "{:.3f}") if "error" not in n else f"error: {n['error']}"] for n in r.get("networks", [])]
    lines = [f"Batch {r.get('batch')}, {r.get('steps')} steps, no early stop, on random images; target ours/plain"
             f" {r.get('target')}; worst {_f(r.get('worst_ratio'), '{:.3f}')}.", ""]
    return lines + _table(["network", "dataset", "input", "params (M)", "ours img/s", "plain img/s", "ours/plain"], rows) + [""]


def _section_aa_cell(r: dict[str, Any]) -> list[str]:
    h, d = r.get("harness") or {}, r.get("direct") or {}
    lines = [f"madry (quickstart checkpoint), eps {r.get('eps')}, {r.get('points')} points, AutoAttack {r.get('params')}.", ""]
    lines += _table(["side", "seconds", "robust %", ""],
                    [["harness cell (clean pass, AutoAttack, verification, store)", _f(h.get("seconds"), "{:.1f}"),
                      _pct(h.get("robust_acc")), f"seeds {h.get('seeds')}"],
                     ["pyautoattack directly", _f(d.get("seconds"), "{:.1f}"), _pct(d.get("robust_acc")),
                      f"its own count {_pct(d.get('robust_acc_own_count'))}%"]])
    return lines + ["", f"Per-point agreement {_pct(r.get('agreement'))}%; time ratio harness/direct"
                        f" {_f(r.get('time_ratio'), '{:.3f}')} (target {r.get('target')}).", ""]


def _section_aa_sweep(r: dict[str, Any]) -> list[str]:
    b, i = r.get("bisect") or {}, r.get("independent") or {}
    grid = r.get("grid") or []
    def at(values: list[Any] | None, k: int) -> Any:
        return values[k] if values and k < len(values) else None

    rows = [[_f(e, "{:g}"), _pct(at(b.get("robust_acc"), k)), _pct(at(i.get("robust_acc"), k))]
            for k, e in enumerate(grid)]
    fe = r.get("full_evaluations") or {}
    lines = [f"madry, {r.get('points')} points, K = {r.get('k')}, AutoAttack {r.get('params')}.", ""]
    lines += _table(["eps", "bisect robust %", "independent robust %"], rows) + [""]
    return lines + [f"bisect {_f(b.get('seconds'), '{:.1f}')} s in {b.get('rounds')} rounds, independent"
                    f" {_f(i.get('seconds'), '{:.1f}')} s: ratio {_f(r.get('time_ratio'), '{:.2f}')} (target {r.get('target')});"
                    f" weaker by at most {_f(r.get('weaker_by_points'), '{:.1f}')} points, stronger by up to"
                    f" {_f(r.get('stronger_by_points'), '{:.1f}')}; floor of the survivors' part {_f(fe.get('floor'), '{:.2f}')}.", ""]


def _section_evaluations(r: dict[str, Any]) -> list[str]:
    rows = []
    for n in r.get("networks", []):
        short = [d if len(d) <= 30 else d[:28] + "…]" for d in n["defenses"]]
        names = ", ".join(short[:4]) + (f" (+{len(short) - 4})" if len(short) > 4 else "")
        if n.get("skipped"):
            rows.append([n["network"], n["dataset"], names, "–", n["skipped"], "", ""])
        for b in n.get("batches", []):
            rows.append([n["network"], n["dataset"], names, b.get("batch"),
                         _f(b.get("evaluations_per_second"), "{:,.0f}") if "error" not in b else f"error: {b['error']}",
                         _f(None if "seconds_per_evaluation" not in b else 1e3 * b["seconds_per_evaluation"], "{:.4f}"),
                         _f(b.get("peak_memory_mib"), "{:,.0f}")])
    lines = ["A forward and a backward pass of one image through the `paper` preset's network (random images);"
             " `python benchmarks/paper_cost.py --throughput gpu_check.json` reads these.", ""]
    return lines + _table(["network", "dataset", "defenses", "batch", "evaluations/s", "ms per evaluation",
                           "peak memory (MiB)"], rows) + [""]


SECTIONS = {"quickstart": _section_quickstart, "pgd_throughput": _section_pgd, "autoattack_cell": _section_aa_cell,
            "autoattack_sweep": _section_aa_sweep, "evaluations": _section_evaluations}


def _headline(key: str, r: dict[str, Any]) -> str:
    try:
        if key == "quickstart":
            board = {row["name"]: row for row in r.get("leaderboard", [])}
            cmp_ = (r.get("comparison") or {}).get("defenses") or {}
            agree = [v["broken_at_agreement"] for e in cmp_.values() for k, v in e.items() if k == "vs cpu"]
            return (f"madry robust {_pct((board.get('madry') or {}).get('robust_acc'))}% @ 0.3;"
                    f" broken_at agrees with the CPU on {_pct(min(agree)) if agree else '–'}% of points")
        if key == "pgd_throughput":
            return f"worst ours/plain {_f(r.get('worst_ratio'), '{:.3f}')} (target >= 0.95)"
        if key == "autoattack_cell":
            return f"time ratio {_f(r.get('time_ratio'), '{:.3f}')} (<= 1.05), agreement {_pct(r.get('agreement'))}%"
        if key == "autoattack_sweep":
            return (f"ratio {_f(r.get('time_ratio'), '{:.2f}')} (<= 0.5), weaker by"
                    f" {_f(r.get('weaker_by_points'), '{:.1f}')} points")
        if key == "evaluations":
            return f"{len(r.get('networks', []))} networks, {len(r.get('entries', []))} (defense, batch) entries"
    except Exception as exc:  # a headline never breaks the report
        return f"({type(exc).__name__})"
    return ""


def render_markdown(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = ["# GPU check", "",
             f"`{data['command']}`, {data['created']}; {_f(data.get('total_seconds'), '{:.1f}')} s"
             f" of a {data['options'].get('budget_s')} s budget{'' if data.get('finished') else ' (still running or stopped)'}.", ""]
    lines += _table(["device", "name", "torch", "CUDA", "cuDNN", "memory (GiB)", "CPU threads", "smoke"],
                    [[env.get("device"), env.get("device_name"), env.get("torch"), env.get("cuda") or "–",
                      env.get("cudnn") or "–", _f(env.get("memory_gib"), "{:.1f}"), env.get("torch_threads"),
                      _f(data["options"].get("smoke"))]]) + [""]
    lines += ["## Summary", ""]
    lines += _table(["part", "status", "seconds", "headline"],
                    [[p["title"], p["status"] + (" (earlier run)" if p.get("earlier_run") else ""), _f(p.get("seconds"), "{:.1f}"),
                      _headline(k, p.get("results") or {}) if p["status"] in ("ok", "partial", "timeout") else (p.get("error") or "")]
                     for k, p in data["parts"].items()]) + [""]
    for key, p in data["parts"].items():
        earlier = (f" (kept from the run of {p['earlier_run']} on {p.get('earlier_device')})"
                   if p.get("earlier_run") else "")
        lines += [f"## {p['title']}", "", f"Status: **{p['status']}**{earlier}"
                  + (f", {p['seconds']:.1f} s" if p.get("seconds") else "")
                  + (f". Error: `{p['error']}`" if p.get("error") else "") + ".", ""]
        if p.get("results"):
            try:
                lines += SECTIONS[key](p["results"])
            except Exception as exc:  # a half-filled part still renders its status
                lines += [f"(partial results; the table could not be drawn: {type(exc).__name__}: {exc})", ""]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main

def environment(device: torch.device) -> dict[str, Any]:
    cudnn: Any = torch.backends.cudnn
    env: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
                           "cudnn": cudnn.version() if cudnn.is_available() else None,
                           "python": platform.python_version(), "platform": platform.platform(),
                           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                           "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}",
                   memory_gib=props.total_memory / 2**30, multiprocessors=props.multi_processor_count)
        t0 = time.perf_counter()  # the context and cuDNN's first load, outside every part's timing
        conv = torch.nn.Conv2d(1, 4, 3).to(device)
        conv(torch.rand(2, 1, 8, 8, device=device, requires_grad=True)).sum().backward()
        torch.cuda.synchronize(device)
        env["cuda_init_s"] = time.perf_counter() - t0
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    ap.add_argument("--out", type=Path, default=Path("results/gpu_check"),
                    help="gpu_check.json/.md go here; its subfolders quickstart/, compare_*/, autoattack_* are rewritten")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="seconds for the parts (start-up not counted): each runs under what is left less a reserve"
                         " for each later part, is stopped when that is spent, and is skipped when nothing is left")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: every part on a CPU in well under a minute")
    ap.add_argument("--parts", default=None, help="comma-separated part numbers or names (default: all five)")
    ap.add_argument("--quickstart-samples", type=int, default=None, help="points of the quickstart (default 1000)")
    ap.add_argument("--compare-samples", type=int, default=None, help="points of the device/CPU comparison (default 200)")
    ap.add_argument("--pgd-batch", type=int, default=None, help="images per PGD batch in part 2 (default 256 on a GPU)")
    ap.add_argument("--pgd-steps", type=int, default=None, help="PGD steps in part 2 (default 10)")
    ap.add_argument("--aa-samples", type=int, default=None, help="points of the AutoAttack cell, part 3 (default 200)")
    ap.add_argument("--sweep-samples", type=int, default=None, help="points of the AutoAttack sweep, part 4 (default 100)")
    ap.add_argument("--eval-batches", default=None, help="batch sizes of part 5, comma-separated (default 64,256 on a GPU)")
    ap.add_argument("--networks", default=None, help=f"networks of parts 2 and 5, from {', '.join(NETWORKS)}")
    ap.add_argument("--reuse-checkpoints", type=Path, default=None,
                    help="a results folder whose checkpoints/ holds the quickstart's none and madry checkpoints: reuse"
                         " them instead of training (--smoke: results/mnist5k_reference when it has them)")
    ap.add_argument("--min-time", type=float, default=None,
                    help="seconds each timed side runs at least in parts 2 and 5 (default 0.5)")
    return ap.parse_args(argv)


def select_parts(text: str | None) -> list[str]:
    keys = list(PARTS)
    if not text:
        return keys
    chosen = []
    for item in text.split(","):
        item = item.strip()
        if item.isdigit() and 1 <= int(item) <= len(keys):
            chosen.append(keys[int(item) - 1])
        elif item in keys:
            chosen.append(item)
        elif item:
            raise ValueError(f"unknown part {item!r}; use 1-{len(keys)} or {', '.join(keys)}")
    return [k for k in keys if k in chosen]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        device = torch.device(args.device)
        sizes = sizes_for(args, device)
        parts = select_parts(args.parts)
    except (RuntimeError, ValueError) as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: error: --device {args.device} but no CUDA device is usable here (torch {torch.__version__},"
              f" built for CUDA {torch.version.cuda}); pass --device cpu to run on the CPU.", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if args.smoke and device.type == "cpu":
        torch.set_num_threads(1)  # tiny batches gain nothing from threads, and a busy machine loses to them
    try:
        return run(args, device, sizes, parts)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace, device: torch.device, sizes: Sizes, parts: list[str]) -> int:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    options = {"budget_s": args.budget_s, "smoke": args.smoke, "parts": parts, **vars(sizes)}
    options["cost_configs"] = [Path(p).name for p in sizes.cost_configs]
    report = Report(out, environment(device), options, parts)
    report.save()
    ctx = Context(args, device, sizes, out, report, args.budget_s)

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated("terminated (SIGTERM)")

    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, on_term) if in_main else None
    try:
        status = run_parts(ctx, parts)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, old_term)
    if status == 130:
        return status
    report.data["finished"] = True
    report.save()
    print((out / "gpu_check.md").read_text())
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}", file=sys.stderr)
    return status


def run_parts(ctx: Context, parts: list[str]) -> int:
    """Run the parts in order, each under what is left of the budget; 1 if one failed, 130 if stopped."""
    report, status = ctx.report, 0
    for key in parts:
        entry = report.data["parts"][key]
        left = ctx.remaining()
        if left < MIN_PART_S:
            entry.update(status="skipped", error=f"the {ctx.budget_s:.0f} s budget was spent")
            report.save()
            print(f"[gpu_check] {entry['title']}: skipped (budget spent)", file=sys.stderr, flush=True)
            continue
        later = sum(RESERVE_S[k] for k in parts[parts.index(key) + 1:])
        allowed = max(min(left, RESERVE_S[key]), left - later)
        entry["status"] = "running"
        report.save()
        print(f"[gpu_check] {entry['title']}: running (at most {allowed:.0f} s of the {left:.0f} s left)",
              file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            with deadline(allowed):
                PARTS[key](ctx, entry["results"])
            entry["status"] = "partial" if entry["results"].get("errors") else "ok"
        except PartTimeout as exc:
            entry.update(status="timeout", error=str(exc))
        except (KeyboardInterrupt, Terminated) as exc:
            entry.update(status="interrupted", error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
            for later in parts[parts.index(key) + 1:]:
                report.data["parts"][later].update(status="skipped", error="the run was interrupted before it")
            report.save()
            print(f"[gpu_check] interrupted; partial results in {ctx.out / 'gpu_check.json'}", file=sys.stderr)
            return 130
        except Exception as exc:
            entry.update(status="error", error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc().strip().splitlines()[-12:])
            status = 1
        finally:
            if entry["seconds"] is None:
                entry["seconds"] = time.perf_counter() - t0
            if ctx.device.type == "cuda":
                with contextlib.suppress(Exception):
                    torch.cuda.empty_cache()
            report.save()
        print(f"[gpu_check] {entry['title']}: {entry['status']} in {entry['seconds']:.1f} s"
              + (f" ({entry['error']})" if entry.get("error") else ""), file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
