"""The public Python API: :func:`benchmark`, :func:`load_defense` and :func:`compare`.

``benchmark`` evaluates any ``torch.nn.Module`` that maps images in [0, 1] to logits (or a
:class:`~robustbench_er.models.defended.DefendedModel`) with the same sweep as the CLI: the model is
saved as a harness checkpoint (safetensors + JSON) under ``out``, entered as a one-off defense,
and swept through the typed experiment schema, so the cascade, the per-sample search, the
store, the leases, the checks and the reports are exactly the CLI's. Its results are keyed on a
hash of its weights, so a second call with the same weights and ``out`` resumes.

``load_defense`` returns a registered defense trained (or loaded from its checkpoint).

``compare`` matches the points of several runs and tests their differences, as
``robustbench-er compare`` does (``docs/compare.md``).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from robustbench_er.core.device import resolve_device
from robustbench_er.core.errors import UserInputError
from robustbench_er.core.metrics import EPS_TOL
from robustbench_er.data.datasets import load_dataset
from robustbench_er.data.given import as_tensors, registered_test_set, test_set
from robustbench_er.engine.trained import get_or_train
from robustbench_er.inputs.config import parse_experiment
from robustbench_er.jobs.compare import compare_table
from robustbench_er.jobs.sweep import run_sweep
from robustbench_er.models.defended import DefendedModel, first_call
from robustbench_er.plugins.given import given_model, registered, save_given
from robustbench_er.plugins.registry import get_defense

__all__ = ["BenchmarkResult", "benchmark", "compare", "load_defense"]


@dataclass
class BenchmarkResult:
    """What :func:`benchmark` measured.

    Accuracies are fractions. ``leaderboard`` has one row per (model, norm) with the headline
    robust accuracy at ``headline_eps`` (per-sample
    worst case over every attack at the headline eps, on the points they all ran on), clean
    accuracy, AUC, ``n`` and flags; ``curves`` the robust accuracy per attack (or cascade stage)
    and epsilon, with a ``worst-case`` curve; ``attacks`` one row per attack (or stage).
    ``paths`` names the files written under ``out`` (empty when ``out`` was a temporary folder,
    which is removed once the result is built).
    """

    leaderboard: pd.DataFrame
    curves: pd.DataFrame
    attacks: pd.DataFrame
    out: Path | None
    paths: dict[str, Path] = field(default_factory=dict)
    checkpoint: Path | None = None

    def robust_accuracy(self, eps: float | None = None, norm: str | None = None) -> float:
        """The worst-case robust accuracy (a fraction) at ``eps`` (default: the headline eps)."""
        if eps is None:
            rows = self.leaderboard if norm is None else self.leaderboard[self.leaderboard["norm"] == norm]
            if rows.empty:
                raise UserInputError(f"No leaderboard row for norm {norm!r}.")
            return float(rows["robust_acc"].iloc[0])
        c = self.curves[self.curves["attack"] == "worst-case"]
        if norm is not None:
            c = c[c["norm"] == norm]
        hit = c[(c["eps"] - float(eps)).abs() < EPS_TOL]
        if hit.empty:
            raise UserInputError(f"eps {eps} is not a point of the sweep's grid ({sorted(set(c['eps']))}).")
        return float(hit["robust_acc"].iloc[0])


def benchmark(model: nn.Module, *, dataset: str | None = None, data: Any = None, attacks: str | Sequence[Any],
              eps: str | Sequence[float] | float,
              norm: str = "Linf", samples: int | str | None = None, out: str | Path | None = None, name: str = "model",
              randomized: bool = False, differentiable: bool = True, output: str = "logits",
              normalize: tuple[Sequence[float], Sequence[float]] | None = None, mode: str = "cascade",
              search: str = "bisect", headline: float | None = None, eot: int = 10, batch_size: int = 128,
              seed: int = 0, device: str = "auto", data_dir: str | Path | None = None,
              progress: bool = False, escalate: bool = True) -> BenchmarkResult:
    """Sweep ``attacks`` over ``eps`` against ``model`` on ``dataset`` or on your own test points
    ``data``; return the curves and leaderboard.

    ``data`` is ``(x, y)`` (tensors or arrays: images N x C x H x W in [0, 1], integer labels) or a
    DataLoader of such batches, in place of ``dataset``: the image shape comes from the data and
    the classes from the model's output width (labels beyond it are refused). Results are keyed
    on a hash of the points as they are on the model's weights, so a rerun in the same ``out``
    resumes and other points never reuse them. ``samples`` defaults to 500 points of a dataset,
    and to every point of ``data``.

    ``model`` maps images in [0, 1] (N x C x H x W) to logits, or to probabilities with
    ``output="probs"``; with ``normalize=(mean, std)`` it expects normalised images and the
    harness normalises inside. ``randomized=True`` declares a stochastic forward (EOT gradients,
    majority votes over ``eot`` passes); ``differentiable=False`` keeps gradient attacks off it.
    A :class:`~robustbench_er.models.defended.DefendedModel` is taken with its own declarations.

    With ``escalate=True`` (the default) a check's flag runs its remedy as a further cascade
    stage (Square and RayS after PGD on a model with zero gradients, ...; ``docs/flags.md``), and
    the worst case includes it; ``escalate=False`` keeps the listed attacks only.

    ``attacks`` is a string as on the command line (``"pgd,autoattack"``,
    ``"pgd(steps=100)"``) or a list of names and mappings ``{name, params, eps, samples, label}``;
    ``eps`` a grid (``"0:0.3:0.05"``, a list, or one number). Every input is checked before any
    work; a bad one raises :class:`~robustbench_er.core.errors.UserInputError` with one sentence.

    With ``out=None`` the store lives in a temporary folder that is removed afterwards; with a
    folder, everything is written there as the CLI writes it, and a rerun resumes.
    """

    if not isinstance(model, nn.Module):
        raise UserInputError(f"model must be a torch.nn.Module, not {type(model).__name__}.")
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\,()"):
        raise UserInputError(f"name must be a plain non-empty string; got {name!r}.")
    with contextlib.ExitStack() as stack:
        if (dataset is None) == (data is None):
            raise UserInputError("Give either dataset= (a registered dataset's name) or data= (your own"
                                 " (images, labels) or a DataLoader), not both or neither.")
        if data is not None:
            points = _test_set(model, data, normalize)
            dataset = stack.enter_context(registered_test_set(points))
            samples = len(points.y_test) if samples is None else samples
        return _benchmark(model, dataset=str(dataset), attacks=attacks, eps=eps, norm=norm,
                          samples=500 if samples is None else samples, out=out, name=name, randomized=randomized,
                          differentiable=differentiable, output=output, normalize=normalize, mode=mode,
                          search=search, headline=headline, eot=eot, batch_size=batch_size, seed=seed, escalate=escalate,
                          device=device, data_dir=data_dir, progress=progress)


def _test_set(model: nn.Module, data: Any, normalize: Any) -> Any:
    """``data=`` as a registered-able test set, its classes read from the model's output width."""
    x, y = as_tensors(data, "data")
    net = model.net if isinstance(model, DefendedModel) else model
    probe = x[:2]
    if normalize is not None and not isinstance(model, DefendedModel):
        with contextlib.suppress(TypeError, ValueError, IndexError, RuntimeError):
            mean = torch.as_tensor([float(v) for v in normalize[0]]).view(1, -1, 1, 1)
            std = torch.as_tensor([float(v) for v in normalize[1]]).view(1, -1, 1, 1)
            probe = (probe - mean) / std
    was = net.training
    net.eval()
    try:
        logits = first_call(net, probe.to(next(iter(net.parameters()), probe).device), "the data's images")
    finally:
        net.train(was)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise UserInputError(f"The model must return N x classes logits; it returned"
                             f" {tuple(getattr(logits, 'shape', ()))} for {len(probe)} images.")
    return test_set(x, y, classes=int(logits.shape[1]), where="data")


def _benchmark(model: nn.Module, *, dataset: str, attacks: str | Sequence[Any], eps: str | Sequence[float] | float,
               norm: str, samples: int | str, out: str | Path | None, name: str, randomized: bool,
               differentiable: bool, output: str, normalize: tuple[Sequence[float], Sequence[float]] | None,
               mode: str, search: str, headline: float | None, eot: int, batch_size: int, seed: int, escalate: bool,
               device: str,
               data_dir: str | Path | None, progress: bool) -> BenchmarkResult:
    """:func:`benchmark` on a registered dataset."""
    data = load_dataset(dataset, str(data_dir) if data_dir is not None else None, False)
    if isinstance(model, DefendedModel):
        net, mean, std = model.net, model.normalization[0], model.normalization[1]
        randomized, differentiable, output = model.randomized, model.differentiable, model.output
    else:
        net = model
        mean, std = ((), ())
        if normalize is not None:
            try:
                mean, std = tuple(float(v) for v in normalize[0]), tuple(float(v) for v in normalize[1])
            except (TypeError, ValueError, IndexError) as exc:
                raise UserInputError(f"normalize must be (mean, std), two sequences of numbers; got {normalize!r}.") from exc
            if len(mean) != len(std) or len(mean) not in (1, data.spec.shape[0]):
                raise UserInputError(
                    f"normalize needs one mean and one std per channel ({data.spec.shape[0]}); got {normalize!r}.")
    given = given_model(name, data.spec, net, mean=mean, std=std, randomized=bool(randomized),
                        differentiable=bool(differentiable), output=output)
    cls, ident = given.cls, given.identity
    with contextlib.ExitStack() as stack:
        if out is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="robustbench-er-")))
        else:
            root = Path(out)
        raw: dict[str, Any] = {"dataset": dataset, "defenses": [name], "attacks": attacks,
                               "eps": eps if isinstance(eps, (str, list, tuple)) else [eps],
                               "norm": norm, "samples": samples, "mode": mode, "search": search, "eot": eot, "escalate": escalate,
                               "batch_size": batch_size, "seed": seed, "out": str(root)}
        if isinstance(raw["eps"], tuple):
            raw["eps"] = list(raw["eps"])
        if headline is not None:
            raw["headline"] = headline
        if data_dir is not None:
            raw["data_dir"] = str(data_dir)
        stack.enter_context(registered(name, cls, origin="robustbench_er.benchmark"))
        folder = root / "checkpoints" / f"{cls.name}-{data.spec.name}-{ident}"
        raw["checkpoints"] = {name: str(folder)}
        # check every input before writing the checkpoint (the schema reads the folder's metadata
        # only when it exists, so check without it first)
        parse_experiment({k: v for k, v in raw.items() if k != "checkpoints"}, out=str(root), device=device,
                         source="benchmark()").configs(progress=progress)
        if not (folder / "meta.json").is_file():
            save_given(given, folder, source="robustbench_er.benchmark")
        (cfg,) = parse_experiment(raw, out=str(root), device=device, source="benchmark()").configs(progress=progress)
        loaded: list[str] = []
        run_sweep(cfg, command=f"robustbench_er.benchmark(<{type(net).__name__}>, dataset={dataset!r}, ...)",
                  on_train=lambda _name, t: loaded.append(t.identity))
        # the folder may hold other models' results: keep this model's rows (keyed on its weights)
        tables = {}
        for k in ("leaderboard", "curves", "attacks"):
            f = root / f"{k}.csv"
            df = pd.read_csv(f, dtype={"checkpoint": str}) if f.is_file() else pd.DataFrame()
            if "checkpoint" in df:
                df = df[df["checkpoint"].isin(loaded)]
            if "dataset" in df:  # and these points' rows: the folder may hold other test sets' too
                df = df[df["dataset"] == data.spec.name]
            df = df.reset_index(drop=True)
            tables[k] = df
        paths = {} if out is None else {p.name: p for p in sorted(root.iterdir()) if p.is_file()}
        return BenchmarkResult(tables["leaderboard"], tables["curves"], tables["attacks"],
                               None if out is None else root, paths, None if out is None else folder)


def load_defense(name: str, dataset: str, profile: str = "quick", checkpoint: str | Path | None = None, *,
                 out: str | Path = "results", seed: int = 0, overrides: dict[str, Any] | None = None,
                 device: str = "auto", data_dir: str | Path | None = None,
                 progress: bool = False) -> DefendedModel:
    """A registered defense as a :class:`~robustbench_er.models.defended.DefendedModel`, in eval mode.

    With ``checkpoint`` (a folder with ``model.safetensors`` and ``meta.json``) it is loaded as
    is; otherwise the checkpoint of (``name``, ``dataset``, ``profile``, ``overrides``, ``seed``)
    under ``out/checkpoints`` is reused, or trained there first.
    """

    cls = get_defense(name)
    data = load_dataset(dataset, str(data_dir) if data_dir is not None else None, False)
    if checkpoint is None:
        cls.hparams(data.spec.models_on, profile, overrides)  # checked before any training
    trained = get_or_train(cls.name, data, profile=profile, seed=seed, out=Path(out), overrides=overrides,
                           device=resolve_device(device), progress=progress,
                           checkpoint_dir=Path(checkpoint) if checkpoint is not None else None)
    return trained.model.eval()


def compare(a: str | Path, b: str | Path, *more: str | Path, pair: str | Sequence[str] | None = None,
            pair_attack: str | Sequence[str] | None = None) -> pd.DataFrame:
    """Compare runs as ``robustbench-er compare`` does, writing nothing: one row per matched point
    (dataset, norm, eps, attack or ``worst-case``, model) of every later input against the first.

    Each input is a results folder (``out`` of :func:`benchmark` or a sweep), a ``leaderboard.json``
    or a RobustBench ``model_info`` JSON file. ``pair`` ties models of different names, as
    ``"1:linear=2:mlp"`` (inputs by 1-based position or path), one string or several;
    ``pair_attack`` compares only the attacks it pairs, as ``"1:pgd=2:pgd transferred from none"``
    (one folder given twice compares two attacks of one run). Columns: ``acc_a``, ``acc_b``
    (fractions), ``diff`` (later minus first), ``test`` (``mcnemar`` on the same sample ids, else
    ``unpaired``), ``p`` (two-sided), ``p_worse`` (one-sided: the later is worse),
    ``ci_low``/``ci_high`` (95% interval of ``diff``, paired or unpaired) and more; see
    ``docs/compare.md``.
    """
    pairs = [pair] if isinstance(pair, str) else list(pair or [])
    attack_pairs = [pair_attack] if isinstance(pair_attack, str) else list(pair_attack or [])
    return compare_table([a, b, *more], pairs, attack_pairs)
