"""An analysis job: the ``analyze`` command and an experiment file's ``analyze:`` section, one path.

:func:`plan_analysis` reads a mapping of the command's keys (``dataset``, ``defenses`` (none for
analyses of the dataset alone), ``analyses`` (names, each optionally with parameters:
``sensitivity(samples=100)``), ``profile``, ``seed``, ``set``, ``data_dir``, ``device``,
``out``) and checks every input before anything trains or writes. :func:`run_analysis_job`
trains or loads each checkpoint, runs each analysis whose result is not in the results store
of ``out`` yet (results are keyed by analysis, parameters, dataset and checkpoint), and writes
under ``<out>/analyses/``: ``<analysis>/<defense>.csv`` and ``.png`` per pair and
``summary.csv`` / ``summary.md`` with every pair's summary numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustbench_er.core.device import resolve_device
from robustbench_er.core.errors import UserInputError
from robustbench_er.core.files import atomic_path, write_text_atomic
from robustbench_er.core.text import name_list, parse_attack_text, parse_sets
from robustbench_er.data.datasets import load_dataset
from robustbench_er.engine.trained import get_or_train
from robustbench_er.inputs.config import check_device, check_output_folder
from robustbench_er.plugins.analysis import AnalysisContext, AnalysisResult, result_key
from robustbench_er.plugins.registry import get_analysis, get_defense
from robustbench_er.store.results import Store

ANALYZE_KEYS = ("dataset", "defenses", "analyses", "profile", "seed", "set", "data_dir", "device", "out")
CLI_FLAGS = {"defenses": "--defense", "analyses": "--analysis", "set": "--set"}

#: stands for "no defense" in a job's targets: the analysis of the dataset alone
DATASET_ONLY = ""


@dataclass
class AnalysisPlan:
    data: Any
    defenses: list[str]
    analyses: list[Any]  # Analysis instances
    labels: list[str]
    profile: str
    seed: int
    overrides: dict[str, Any] | None
    device: str
    out: Path


def _parsed_analyses(raw: Mapping[str, Any],
                     at: Callable[[str], str]) -> tuple[list[Any], list[str]]:
    """The analyses the job names, built with their parameters, and their labels."""
    analyses, labels = [], []
    for text in name_list(raw["analyses"], at("analyses")):
        try:
            parsed = parse_attack_text(text)
        except ValueError as exc:
            msg = str(exc).replace("attack", "analysis")
            raise UserInputError(f"{at('analyses')}: {msg}.") from exc
        cls = get_analysis(parsed["name"])
        try:
            analyses.append(cls(**parsed["params"]))
        except UserInputError as exc:
            raise UserInputError(f"{at('analyses')}: {exc}") from None
        except TypeError as exc:
            raise UserInputError(f"{at('analyses')}: {parsed['name']}: {exc}.") from None
        labels.append(parsed.get("label") or parsed["name"])
    return analyses, labels


def _check_models(defenses: list[str], analyses: list[Any], data: Any, profile: str,
                  overrides: dict[str, Any] | None, at: Callable[[str], str]) -> None:
    """Refuse an analysis that reads an embedding a defense's model lacks, or a model none names."""
    for d in defenses:
        cls = get_defense(d)
        hp = cls.hparams(data.spec.models_on, profile, overrides)
        net = cls().build(data.spec, hp)
        has_embed = hasattr(net, "embed") or hasattr(net, "features")
        for a in analyses:
            if a.uses_embedding() and not has_embed:
                raise UserInputError(f"{at('analyses')}: {a.name} reads the model's embedding,"
                                     f" which {d!r} lacks.")
    for a in analyses:
        if a.uses_model() and not defenses:
            raise UserInputError(f"{at('analyses')}: {a.name} analyses a model;"
                                 f" name one with {at('defenses')}.")


def plan_analysis(raw: Mapping[str, Any], where: str = "", cli: bool = False) -> AnalysisPlan:
    """Check an analysis job's keys; one sentence on the first bad one, nothing written."""

    def at(key: str) -> str:
        return CLI_FLAGS.get(key, "--" + key.replace("_", "-")) if cli else f"{where}{key}"

    unknown = sorted(set(raw) - set(ANALYZE_KEYS))
    if unknown:
        raise UserInputError(f"{at(unknown[0])}: not an analysis key (known: {', '.join(ANALYZE_KEYS)}).")
    for key in ("dataset", "analyses"):
        if raw.get(key) in (None, "", []):
            raise UserInputError(f"{at(key)}: missing.")
    defenses = name_list(raw["defenses"], at("defenses")) if raw.get("defenses") not in (None, "", []) else []
    analyses, labels = _parsed_analyses(raw, at)
    for d in defenses:
        get_defense(d)
    profile = str(raw.get("profile") or "quick")
    if profile not in ("quick", "paper"):
        raise UserInputError(f"{at('profile')}: quick or paper; got {profile!r}.")
    try:
        seed = int(raw.get("seed") or 0)
    except (TypeError, ValueError):
        raise UserInputError(f"{at('seed')}: must be an integer; got {raw.get('seed')!r}.") from None
    device = str(raw.get("device") or "auto")
    check_device(device, at("device"))
    data = load_dataset(str(raw["dataset"]), raw.get("data_dir"), False)
    sets = raw.get("set")
    overrides = (dict(parse_sets([sets] if isinstance(sets, str) else sets)) if isinstance(sets, (str, list))
                 else dict(sets) if isinstance(sets, Mapping) else None)
    _check_models(defenses, analyses, data, profile, overrides, at)
    out = raw.get("out") or "results/analyses"
    check_output_folder(out, at("out"))
    return AnalysisPlan(data, defenses, analyses, labels, profile, seed, overrides, device, Path(out))


def analysis_identity(analysis: Any, plan: AnalysisPlan, checkpoint: str) -> dict[str, Any]:
    """What an analysis result is keyed on: the analysis and its parameters, the dataset, and the
    identity of the checkpoint it read ("" for an analysis of the dataset alone)."""
    return {**analysis.identity(), "dataset": plan.data.spec.name, "checkpoint": checkpoint}


def run_analysis_job(plan: AnalysisPlan, command: str, progress: bool = True,
                     say: Callable[[str], None] = print) -> dict[str, Path]:
    """Train or load each defense, run every analysis not in the store yet, write the outputs."""
    import time


    results: list[tuple[Any, str, str, AnalysisResult]] = []
    store = Store(plan.out)
    try:
        models: dict[str, Any] = {}
        for a, label in zip(plan.analyses, plan.labels):
            # an analysis of the dataset alone runs once, whatever the defenses
            targets = plan.defenses if a.uses_model() else [DATASET_ONLY]
            for d in targets:
                model, ckpt = None, ""
                if d != DATASET_ONLY:
                    if d not in models:
                        models[d] = get_or_train(d, plan.data, profile=plan.profile, seed=plan.seed, out=plan.out,
                                                 overrides=plan.overrides, device=resolve_device(plan.device),
                                                 progress=progress)
                    model, ckpt = models[d].model.eval(), models[d].identity
                    a.check_model(model, d)
                identity = analysis_identity(a, plan, ckpt)
                key = result_key(identity)
                name = d or plan.data.spec.name  # an analysis of the dataset alone is filed under its name
                identity.update(defense=name, label=label)  # for the summary, not part of the key
                got = store.analysis_result(key)
                if got is not None:
                    res, how = AnalysisResult.from_json(got), "stored"
                else:
                    t0 = time.perf_counter()
                    res = a.run(AnalysisContext(plan.data, model, d, progress))
                    store.put_analysis_result(key, identity, res.to_json())
                    how = f"{time.perf_counter() - t0:.1f} s"
                results.append((a, label, name, res))
                summary = ", ".join(f"{k} {v:.4g}" for k, v in res.summary.items())
                say(f"[{label} / {name}] {summary} ({how})")
        everything = store.analyses_frame()
    finally:
        store.close()
    return write_analyses(results, plan.out, command, everything)


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "x"


def write_analyses(results: list[tuple[Any, str, str, Any]], out: Path, command: str,
                   everything: Any = None) -> dict[str, Path]:
    """Per (analysis, defense) of this job: a CSV of its rows and its PNG; summary.csv and
    summary.md over ``everything`` in the store (every job that wrote to ``out``)."""
    import pandas as pd


    root = Path(out) / "analyses"
    paths: dict[str, Path] = {}
    summary = []
    for a, label, d, res in results:
        folder = root / _slug(label)
        folder.mkdir(parents=True, exist_ok=True)
        csv, png = folder / f"{_slug(d)}.csv", folder / f"{_slug(d)}.png"
        with atomic_path(csv) as tmp:
            pd.DataFrame(res.rows).to_csv(tmp, index=False, float_format="%.6g")
        a.plot(res, png, title=f"{label}: {d} on {out.name}")
        paths[f"{label}/{d}"] = png
        if everything is None:
            for k, v in res.summary.items():
                summary.append({"analysis": label, "dataset": "", "defense": d, "quantity": k, "value": v})
    if everything is not None:
        summary = everything.to_dict("records")
    root.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(summary, columns=["analysis", "dataset", "defense", "quantity", "value"])
    with atomic_path(root / "summary.csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    lines = ["# Analyses", "", f"Made by `{command}`.", "",
             "Each analysis's numbers per defense; its rows are in `<analysis>/<defense>.csv` and its plot"
             " in `<analysis>/<defense>.png`.", ""]
    for label, part in df.groupby("analysis", sort=False):
        table = part.pivot_table(index=["dataset", "defense"], columns="quantity", values="value", sort=False)
        lines += [f"## {label}", "", "| dataset | defense | " + " | ".join(table.columns) + " |",
                  "|---|---|" + "---|" * len(table.columns)]
        for (dataset, defense), r in table.iterrows():
            lines.append(f"| {dataset} | {defense} | " + " | ".join(f"{v:.4g}" for v in r.values) + " |")
        lines.append("")
    write_text_atomic(root / "summary.md", "\n".join(lines))
    paths["summary"] = root / "summary.md"
    return paths
