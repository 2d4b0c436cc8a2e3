"""The papers' experiment files (configs/paper_*.yaml), checked before anyone spends GPU hours on
them: each one's `--dry-run` plans every training job, cell, detection job and analysis job, and
each one runs end to end on a tiny dataset written in the real folder format
(tests/tiny_folders.py), with the schedules shrunk (one epoch on two images, a few attack steps,
a few points) and every section's outputs checked: leaderboards and per-eps tables, hyper-parameter
studies, analyses and detection tables. Architectures, defenses, attacks, norms, grids, modes,
seeds, detectors and analyses are the file's own."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from threadpoolctl import threadpool_limits
from tiny_folders import SHRINK as SHRINK_TRAIN
from tiny_folders import WRITERS

from robustbench_er.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("paper_*.yaml"))

#: attack parameters that set an attack's length, and their caps
SHRINK_ATTACK = {"steps": 2, "query_budget": 30, "binary_search_steps": 1, "n_queries": 30,
                 "init_directions": 5, "n_restarts": 1}
#: points per cell
POINTS = 4
#: a detection job's defenses in a tiny run. The paper networks trained one step on two images
#: answer every input alike (their logits vary by about 1e-8 from one image to another), so no
#: attack moves them and no detector can be fitted; the job runs instead on the same defenses'
#: ``quick`` networks, trained for seconds on the tiny folder's 100 images to tell its classes
#: apart, with set I at half the points (on the file's 20% it would hold two or three
#: examples). Detectors, attacks, norms, bounds and l2_unit stay the file's.
DETECT_TRAIN = {"epochs": 5, "train_samples": 100, "batch_size": 10, "lr": 0.01, "attack_steps": 1}
DETECT_SPLIT = 0.5
#: C&W as a detection job's training attack must succeed within the file's bound on set I: a few
#: steps from a large constant (the attack's other uses keep two steps)
DETECT_CW = {"steps": 50, "binary_search_steps": 2, "initial_const": 1.0, "stepsize": 0.05}
#: analysis parameters that set an analysis's length, and their caps (t-SNE's perplexity must stay
#: below its 2 x samples points, its knn below samples; intrinsic-dim keeps its samples: its k-NN
#: needs more than k2 points; a grid of budgets keeps its first, middle and last eps); an analysis
#: named twice in a job (t-SNE at several eps) runs once
SHRINK_ANALYSIS = {"samples": 2, "steps": 2, "grid": 3, "perplexity": 3.0, "knn": 1}
#: values of a hyper-parameter study: the first and the last (the sweep's other variants dropped)
STUDY_VALUES = 2


def _raw(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _dataset_folder(raw: dict[str, Any], root: Path) -> Path:
    name = raw["dataset"]
    folder = root / name
    if not folder.exists():
        WRITERS[name](folder)
    return folder


def _shrunk_name(name: str) -> str:
    """A defense or variant with the schedule values its name carries shrunk (a variant's own
    values win over overrides)."""
    from robustbench_er.plugins.registry import split_variant, variant_label

    base, values = split_variant(name)
    if not values:
        return name
    return variant_label(base, {k: SHRINK_TRAIN.get(k, v) for k, v in values.items()})


def _defense_entry(entry: Any) -> dict[str, Any]:
    from robustbench_er.plugins.registry import get_defense

    name, overrides = (entry, {}) if isinstance(entry, str) else (entry["name"], dict(entry.get("overrides") or {}))
    fields = {f.name for f in dataclasses.fields(get_defense(name).HParams)}
    overrides.update({k: v for k, v in SHRINK_TRAIN.items() if k in fields})
    return {"name": _shrunk_name(name), "overrides": overrides}


def _attack_entry(entry: Any) -> Any:
    if isinstance(entry, str):
        entry = {"name": entry}
    entry = dict(entry)
    params = dict(entry.get("params") or {})
    for k, cap in SHRINK_ATTACK.items():
        if k in params:
            params[k] = min(params[k], cap)
    name = entry.get("name")
    inner = params.get("attack", "pgd") if name == "transfer" else name
    if inner in ("pgd", "mim", "ddn", "deepfool", "cw", "boundary", "fab"):
        params["steps"] = min(params.get("steps", SHRINK_ATTACK["steps"]), SHRINK_ATTACK["steps"])
    if name == "transfer" and isinstance(params.get("surrogate"), str):
        params["surrogate"] = _shrunk_name(params["surrogate"])
    if name == "rays":
        params["query_budget"] = min(params.get("query_budget", SHRINK_ATTACK["query_budget"]),
                                     SHRINK_ATTACK["query_budget"])
    if name == "cw":
        params["binary_search_steps"] = min(params.get("binary_search_steps", 1), 1)
    if name == "autoattack":  # APGD-CE alone, 2 iterations: the adapter's whole path, a fraction of the time
        params.update(version="custom", attacks=["apgd-ce"], n_iter=2, n_restarts=1)
    entry["params"] = params
    return entry


def _jobs(raw: dict[str, Any], section: str) -> list[dict[str, Any]]:
    """The jobs of a ``detect:`` or ``analyze:`` section (a mapping or a list of them)."""
    jobs = raw.get(section) or []
    return [jobs] if isinstance(jobs, dict) else list(jobs)


def _test_split(raw: dict[str, Any]) -> int:
    from robustbench_er.data.datasets import load_dataset

    return len(load_dataset(raw["dataset"], raw["data_dir"], False).y_test)


def _cap_samples(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with every sample count (the file's, each sweep's, each attack's) at most POINTS,
    and each detection job's at most the (tiny) test split."""
    raw["samples"] = POINTS
    for level in [raw, *(raw.get("sweeps") or [])]:
        if level is not raw and level.get("samples") is not None:
            level["samples"] = min(int(level["samples"]), POINTS)
        for a in level.get("attacks") or []:
            if isinstance(a, dict) and a.get("samples") is not None:
                a["samples"] = min(int(a["samples"]), POINTS)
    for job in _jobs(raw, "detect"):
        job["samples"] = min(int(job.get("samples", 500)), _test_split(raw))
    return raw


def _shrunk_variant(name: str) -> str:
    """A defense of a detection or analysis job as the variant whose hyper-parameters are those
    the shrunk sweeps train it with (a job's ``set`` is shared by all its defenses, whose
    hyper-parameters differ), so the job reuses the sweep's checkpoint."""
    from robustbench_er.plugins.registry import get_defense, split_variant, variant_label

    base, values = split_variant(name)
    fields = {f.name for f in dataclasses.fields(get_defense(name).HParams)}
    merged = {k: v for k, v in SHRINK_TRAIN.items() if k in fields}
    merged.update({k: SHRINK_TRAIN.get(k, v) for k, v in values.items()})
    return variant_label(base, merged)


def _param_text(params: dict[str, Any]) -> str:
    """``k=v,...`` as the attack and analysis strings take them (strings quoted, so that YAML
    reads ``'0:1:0.1'`` as text, not as a base-60 number)."""
    return ",".join(f"{k}='{v}'" if isinstance(v, str) else f"{k}={v}" for k, v in params.items())


def _detect_defense(name: str) -> str:
    """A detection job's defense for a tiny run (DETECT_TRAIN): its quick network, trained to
    separate the tiny classes."""
    from robustbench_er.plugins.registry import get_defense, split_variant, variant_label

    base, _ = split_variant(name)
    fields = {f.name for f in dataclasses.fields(get_defense(base).HParams)}
    return variant_label(base, {k: v for k, v in DETECT_TRAIN.items() if k in fields})


def _attack_text(text: str, train: bool = False) -> str:
    """An attack of a detection job (``cw(eps=0.004,confidence=20)``) with its length capped
    (a training C&W: DETECT_CW)."""
    from robustbench_er.core.text import parse_attack_text

    a = _attack_entry(parse_attack_text(text))
    if train and a["name"] == "cw":
        a["params"].update(DETECT_CW)
    return f"{a['name']}({_param_text(a['params'])})" if a["params"] else a["name"]


def _analysis_text(text: str) -> str:
    """An analysis (``tsne(eps=0.03)``) with its length capped (SHRINK_ANALYSIS)."""
    from robustbench_er.core.text import parse_attack_text, parse_eps
    from robustbench_er.plugins.registry import get_analysis

    a = parse_attack_text(text)
    fields = {f.name: f.default for f in dataclasses.fields(get_analysis(a["name"]).Params)}
    params = dict(a["params"])
    for k, cap in SHRINK_ANALYSIS.items():
        if k in fields and not (k == "samples" and a["name"] == "intrinsic-dim"):
            params[k] = type(cap)(min(params.get(k, fields[k]), cap))
    if isinstance(params.get("eps"), str):  # a grid of budgets (sensitivity)
        top = max(parse_eps(params["eps"]))
        params["eps"] = f"0:{top:.9g}:{top / 2:.9g}"
    return f"{a['name']}({_param_text(params)})" if params else a["name"]


def shrink(raw: dict[str, Any], data_dir: Path, out: Path) -> dict[str, Any]:
    """The experiment file with its schedules shrunk for a CPU smoke run on a tiny folder."""
    from robustbench_er.core.text import parse_attack_text

    raw = copy.deepcopy(raw)
    # escalation off: the shrunk models' flags would add Square and RayS stages, which test
    # nothing about the file (tests/test_escalate.py tests escalation)
    raw.update(data_dir=str(data_dir), out=str(out), samples=POINTS, batch_size=8, escalate=False)
    if raw.get("eot"):
        raw["eot"] = 2
    if raw.get("seeds"):  # two seeds on MNIST (the mean ± std rows), one elsewhere
        raw["seeds"] = raw["seeds"][: 2 if raw["dataset"] == "mnist" else 1]
    for level in [raw, *(raw.get("sweeps") or [])]:
        if "defenses" in level:
            level["defenses"] = [_defense_entry(d) for d in level["defenses"]]
        if "attacks" in level:
            level["attacks"] = [_attack_entry(a) for a in level["attacks"]]
    for job in _jobs(raw, "analyze"):
        job["defenses"] = [_shrunk_variant(d) for d in job.get("defenses") or []]
        once = {parse_attack_text(a)["name"]: a for a in reversed(job["analyses"])}
        job["analyses"] = [_analysis_text(a) for a in job["analyses"] if once[parse_attack_text(a)["name"]] == a]
    studies = raw.get("study") or []
    for st in [studies] if isinstance(studies, dict) else studies:
        dropped = _study_variants({"study": st})
        st["values"] = [st["values"][0], st["values"][-1]][:STUDY_VALUES]
        dropped -= _study_variants({"study": st})
        for level in raw.get("sweeps") or []:
            if "defenses" in level:
                level["defenses"] = [d for d in level["defenses"] if _label(d) not in dropped]
    for job in _jobs(raw, "detect"):
        job.update(profile="quick", split=DETECT_SPLIT, adaptive_steps=SHRINK_ATTACK["steps"])
        job["defenses"] = [_detect_defense(d) for d in job["defenses"]]
        job["train_attacks"] = [_attack_text(a, train=True) for a in job["train_attacks"]]
        job["test_attacks"] = [_attack_text(a) for a in job["test_attacks"]]
    return _cap_samples(raw)


def _label(entry: Any) -> str:
    from robustbench_er.plugins.registry import defense_label

    return defense_label(entry if isinstance(entry, str) else entry["name"])


def _defenses_of(raw: dict[str, Any]) -> set[str]:
    from robustbench_er.plugins.registry import defense_label

    names = set()
    for level in [raw, *(raw.get("sweeps") or [])]:
        for d in level.get("defenses") or []:
            names.add(defense_label(d if isinstance(d, str) else d["name"]))
    return names


def _study_variants(raw: dict[str, Any]) -> set[str]:
    from robustbench_er.report.study import study_variants

    studies = raw.get("study") or []
    return {v for st in ([studies] if isinstance(studies, dict) else studies) for v in study_variants(st)}


def _table_attacks(raw: dict[str, Any]) -> set[str]:
    """Every attack label a sweep of the file asks a per-eps table of its own for."""
    labels = set()
    for level in [raw, *(raw.get("sweeps") or [])]:
        labels |= set(level.get("table_attacks") or [])
    return labels


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_paper_config_states_its_cost_and_plans_every_job(path, tmp_path, capsys):
    raw = _raw(path)
    assert re.search(r"^# Expected cost", path.read_text(), re.M), "the file states its expected GPU cost"
    assert raw["profile"] == "paper"
    folder = _dataset_folder(raw, tmp_path / "data")
    run = _cap_samples(dict(copy.deepcopy(raw), data_dir=str(folder)))
    file = tmp_path / path.name
    file.write_text(yaml.safe_dump(run))
    out = tmp_path / "out"
    assert main(["run", str(file), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists() and "Nothing was written." in text
    trains = {t.split(" (")[0].split(", seed")[0].strip()
              for t in re.findall(r"^  train (.+?)\s+(?:cached|to train)\s", text, re.M)}
    assert _defenses_of(raw) | _study_variants(raw) <= trains
    cells = re.findall(r"^  cell  (.+?) x (.+?)\s+(?:cached|new|partial|after training)", text, re.M)
    n_sweeps = max(1, len(raw.get("sweeps") or []))
    assert len(re.findall(r"^sweep \d+ \(", text, re.M)) == n_sweeps
    assert len(cells) >= n_sweeps
    # every detection and analysis job is planned, each with its cells
    for section in ("detect", "analyze"):
        assert len(re.findall(rf"^{section}: ", text, re.M)) == len(_jobs(raw, section))
    for job in _jobs(raw, "analyze"):
        for a in job["analyses"]:
            assert any(what == a for _, what in cells), f"analysis {a} is not planned"
    for job in _jobs(raw, "detect"):
        for det in job["detectors"]:
            for train in job["train_attacks"]:
                assert any(what.startswith(f"{det} trained on {train} -> ") for _, what in cells)
    assert re.search(r"at most [\d,]+ model evaluations", text)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_paper_config_runs_end_to_end_on_a_tiny_folder(path, tmp_path, capsys):
    from robustbench_er.plugins.registry import defense_label

    raw = _raw(path)
    out = tmp_path / "out"
    file = tmp_path / path.name
    shrunk = shrink(raw, _dataset_folder(raw, tmp_path / "data"), out)
    file.write_text(yaml.safe_dump(shrunk))
    # one OpenMP thread: scikit-learn's t-SNE on a dozen points otherwise spends tens of seconds
    # spinning whenever the cores are shared (the networks here are too small to gain from more)
    with threadpool_limits(limits=1, user_api="openmp"):
        assert main(["run", str(file), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    board = pd.read_csv(out / "leaderboard.csv")
    assert _defenses_of(shrunk) <= set(board["defense"])
    assert board["clean_acc"].between(0, 1).all() and board["robust_acc"].between(0, 1).all()
    assert (out / "leaderboard.md").is_file() and (out / "curves.csv").is_file()
    if len(shrunk.get("seeds") or []) > 1:
        assert board["aggregate"].any()  # mean ± std rows over the seeds
    curves = pd.read_csv(out / "curves.csv")
    for level in shrunk.get("sweeps") or [shrunk]:  # every sweep's every attack has a curve per defense
        for d in level.get("defenses") or shrunk["defenses"]:
            label = defense_label(d if isinstance(d, str) else d["name"])
            for a in level.get("attacks") or shrunk["attacks"]:
                name = a.get("label") or a["name"]
                assert len(curves[(curves["defense"] == label) & (curves["attack"] == name)]), (label, name)
    md = (out / "leaderboard.md").read_text()
    for label in _table_attacks(shrunk):  # a per-eps table of that attack alone
        assert f"{label} alone at chosen epsilons" in md, label
    studies = shrunk.get("study") or []
    for st in [studies] if isinstance(studies, dict) else studies:
        table = pd.read_csv(out / f"study_{st['defense']}_{st['param']}.csv")
        assert set(table["value"]) == set(st["values"]) and (out / f"study_{st['defense']}_{st['param']}.png").is_file()
        assert table["robust_acc"].between(0, 1).all()
    if _jobs(shrunk, "analyze"):
        summary = pd.read_csv(out / "analyses" / "summary.csv")
        for job in _jobs(shrunk, "analyze"):
            targets = [defense_label(d) for d in job["defenses"]] or [shrunk["dataset"]]
            for a in job["analyses"]:
                for target in targets:
                    assert len(summary[(summary["analysis"] == a) & (summary["defense"] == target)]), (a, target)
    for job in _jobs(shrunk, "detect"):
        det = pd.read_csv(out / "detection.csv")
        assert (out / "detection.md").is_file()
        for d in job["defenses"]:
            part = det[det["defense"] == defense_label(d)]
            assert set(job["detectors"]) <= set(part["detector"]), d
            assert part["acc_nadv"].between(0, 1).all()
