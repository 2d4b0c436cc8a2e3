"""Executors: where a sweep's training jobs and attack batches run.

``local`` (the default) runs everything in this process. ``ray`` (``--executor ray``; an extra,
``pip install 'robustbench-er[ray]'``) runs them as Ray tasks, on a laptop, one node or a
cluster the user started (``ray start``, Slurm, KubeRay), with the same code:

* **Training jobs** are tasks: each untrained model's checkpoint (the sweep's defenses and the
  models its attacks name, such as a transfer attack's surrogate) is trained by a task, under
  the same checkpoint lease as a local run, into ``<out>/checkpoints`` (on a cluster, ``--out``
  must be a folder every node sees).
* **Cells** are split into their batches (:func:`robustbench_er.engine.sweep.step_batches`): every
  step's batches are tasks, spread over the workers, so even one large cell uses them all. A
  batch draws only from its own seed, so the results are the local executor's, sample for
  sample.
* **The driver owns the store**: tasks return per-sample outcomes and the driver writes them
  through the same idempotent, lease-taking path as the local executor (``run_cell``,
  ``record_step``). A task whose worker died is retried by Ray (``max_retries``) and its
  result is still written once; a killed driver resumes, with ``--executor ray`` or without
  it, at the first unfinished step, with identical results.
* **GPUs**: each task asks for ``gpus_per_cell`` GPUs and Ray pins them
  (``CUDA_VISIBLE_DEVICES``); the task runs on ``cuda`` when it got one. A request for more GPUs
  than the cluster has is refused before anything is submitted.

The engine is Ray's (scheduling, retries, object transfer); we add nothing of our own there.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_er.core.errors import UserInputError
from robustbench_er.data.datasets import load_dataset
from robustbench_er.engine.search import attack_batch
from robustbench_er.engine.trained import checkpoint_folder, get_or_train


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserInputError("--executor ray needs Ray: pip install 'robustbench-er[ray]'.") from None
    return ray


class RayExecutor:
    """Starts or joins Ray, checks its resources, and runs batches and training jobs as tasks."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.ray = _ray()
        self.gpus = float(spec.get("gpus_per_cell") or 0)
        self.threads = int(spec.get("threads_per_task") or 1)
        self._models: dict[str, Any] = {}
        if not self.ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "ignore_reinit_error": True}
            if spec.get("address"):
                kwargs["address"] = spec["address"]
            elif spec.get("workers"):
                kwargs["num_cpus"] = int(spec["workers"])
            try:
                self.ray.init(**kwargs)
            except Exception as exc:  # an unreachable address, a bad option: the user's input
                raise UserInputError(f"executor: Ray could not start or connect ({type(exc).__name__}: {exc}).") from None
        have = float(self.ray.cluster_resources().get("GPU", 0))
        if self.gpus > have:
            raise UserInputError(f"executor: each task asks for {self.gpus:g} GPU(s) but the Ray cluster has {have:g};"
                                 " lower gpus_per_cell or add GPU nodes.")
        self._batch = self.ray.remote(num_gpus=self.gpus, max_retries=3)(_batch_task)
        self._train = self.ray.remote(num_gpus=self.gpus, max_retries=3)(_train_task)

    # ---- training jobs -------------------------------------------------------------------------
    def train(self, cfg: Any, prep: Any) -> None:
        """Train, as tasks, every model the sweep needs whose checkpoint is not there yet: its
        defenses, and the other models its attacks name (a transfer attack's surrogate, say);
        the driver then loads them all from their checkpoints."""

        wanted = [(d, cfg.defense_overrides.get(d)) for d in cfg.defenses if d not in cfg.checkpoints]
        wanted += [(r.defense, r.overrides) for r in prep.models.values()
                   if r.folder is None and r.key not in cfg.defenses]
        pending, seen = [], set()
        for defense, overrides in wanted:
            folder = checkpoint_folder(defense, prep.data, profile=cfg.profile, seed=cfg.seed, out=cfg.out,
                                       overrides=overrides)
            if folder in seen or (folder / "meta.json").is_file():
                continue
            seen.add(folder)
            pending.append(self._train.remote(defense, cfg.dataset, cfg.data_dir, cfg.profile, cfg.seed,
                                              str(cfg.out), overrides, self.threads))
        self.ray.get(pending)

    # ---- batches -------------------------------------------------------------------------------
    def runner(self, cell: Any, x_all: torch.Tensor, y_all: torch.Tensor, pos: np.ndarray,
               jobs: list[Any]) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
        """A :data:`robustbench_er.engine.sweep.BatchRunner`: every batch of the step as a task, in parallel."""
        ref = self._models.get(cell.cell_id)
        if ref is None:
            model = copy.deepcopy(cell.trained.model).cpu()  # the driver's copy stays where it is
            ref = self.ray.put((model, cell.attack, cell.eot))
            self._models = {cell.cell_id: ref}  # one cell's model held at a time
        x_cpu, y_cpu = x_all.cpu(), y_all.cpu()
        futures = []
        for job in jobs:
            sel = torch.as_tensor(pos[job.sel])
            futures.append(self._batch.remote(ref, x_cpu[sel], y_cpu[sel], job.eps, job.seed, self.threads))
        return list(self.ray.get(futures))


def _device() -> torch.device:
    import ray

    return torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")


def _batch_task(packed: Any, xb: torch.Tensor, yb: torch.Tensor, eps: np.ndarray | None, seed: int,
                threads: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    torch.set_num_threads(threads)
    model, attack, eot = packed
    dev = _device()
    model = model.to(dev).eval()
    return attack_batch(attack, model, xb.to(dev), yb.to(dev), eps, eot, seed)


def _train_task(defense: str, dataset: str, data_dir: str | None, profile: str, seed: int, out: str,
                overrides: dict[str, Any] | None, threads: int) -> str:

    torch.set_num_threads(threads)
    data = load_dataset(dataset, data_dir, False)
    t = get_or_train(defense, data, profile=profile, seed=seed, out=Path(out), overrides=overrides, device=_device(),
                     progress=False, measure=False)
    return str(t.folder)


def make_executor(spec: dict[str, Any] | None) -> RayExecutor | None:
    """None for the local executor, else the Ray executor (started or joined)."""
    if not spec or spec.get("kind", "local") == "local":
        return None
    if spec.get("kind") == "ray":
        return RayExecutor(spec)
    raise UserInputError(f"executor: unknown kind {spec.get('kind')!r}; use local or ray.")
