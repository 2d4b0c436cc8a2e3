"""The papers' experiment files (configs/paper_*.yaml), checked before anyone spends GPU hours on
them: each one's `--dry-run` plans every training job and cell, and each one runs end to end on
a tiny dataset written in the real folder format (tests/tiny_folders.py), with the schedules
shrunk (one epoch on two images, a few attack steps, a few points). Architectures, defenses,
attacks, norms, grids, modes and seeds are the file's own."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
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
    from robustbench_er.registry import split_variant, variant_label

    base, values = split_variant(name)
    if not values:
        return name
    return variant_label(base, {k: SHRINK_TRAIN.get(k, v) for k, v in values.items()})


def _defense_entry(entry: Any) -> dict[str, Any]:
    from robustbench_er.registry import get_defense

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
    if name == "autoattack":  # APGD-CE alone, 2 iterations: the adapter's whole path, a fraction of the time
        params.update(version="custom", attacks=["apgd-ce"], n_iter=2, n_restarts=1)
    entry["params"] = params
    return entry


def _cap_samples(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with every sample count (the file's, each sweep's, each attack's) at most POINTS."""
    raw["samples"] = POINTS
    for level in [raw, *(raw.get("sweeps") or [])]:
        if level is not raw and level.get("samples") is not None:
            level["samples"] = min(int(level["samples"]), POINTS)
        for a in level.get("attacks") or []:
            if isinstance(a, dict) and a.get("samples") is not None:
                a["samples"] = min(int(a["samples"]), POINTS)
    return raw


def shrink(raw: dict[str, Any], data_dir: Path, out: Path) -> dict[str, Any]:
    """The experiment file with its schedules shrunk for a CPU smoke run on a tiny folder."""
    raw = copy.deepcopy(raw)
    raw.update(data_dir=str(data_dir), out=str(out), samples=POINTS, batch_size=8)
    if raw.get("eot"):
        raw["eot"] = 2
    if raw.get("seeds"):  # two seeds on MNIST (the mean ± std rows), one elsewhere
        raw["seeds"] = raw["seeds"][: 2 if raw["dataset"] == "mnist" else 1]
    for level in [raw, *(raw.get("sweeps") or [])]:
        if "defenses" in level:
            level["defenses"] = [_defense_entry(d) for d in level["defenses"]]
        if "attacks" in level:
            level["attacks"] = [_attack_entry(a) for a in level["attacks"]]
    return _cap_samples(raw)


def _defenses_of(raw: dict[str, Any]) -> set[str]:
    from robustbench_er.registry import defense_label

    names = set()
    for level in [raw, *(raw.get("sweeps") or [])]:
        for d in level.get("defenses") or []:
            names.add(defense_label(d if isinstance(d, str) else d["name"]))
    return names


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
    assert _defenses_of(raw) <= trains
    cells = re.findall(r"^  cell  (.+?) x (.+?)\s+(?:cached|new|partial|after training)", text, re.M)
    n_sweeps = max(1, len(raw.get("sweeps") or []))
    assert len(cells) >= n_sweeps
    assert re.search(r"at most [\d,]+ model evaluations", text)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_paper_config_runs_end_to_end_on_a_tiny_folder(path, tmp_path, capsys):
    raw = _raw(path)
    out = tmp_path / "out"
    file = tmp_path / path.name
    shrunk = shrink(raw, _dataset_folder(raw, tmp_path / "data"), out)
    file.write_text(yaml.safe_dump(shrunk))
    assert main(["run", str(file), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    board = pd.read_csv(out / "leaderboard.csv")
    assert _defenses_of(shrunk) <= set(board["defense"])
    assert board["clean_acc"].between(0, 1).all() and board["robust_acc"].between(0, 1).all()
    assert (out / "leaderboard.md").is_file() and (out / "curves.csv").is_file()
    if len(shrunk.get("seeds") or []) > 1:
        assert board["aggregate"].any()  # mean ± std rows over the seeds
