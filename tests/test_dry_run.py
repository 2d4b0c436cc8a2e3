"""--dry-run: the plan, its cache states and its cost, with nothing written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from robustbench_er.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_reference_experiment_plan_lists_every_job(tmp_path, capsys):
    out = tmp_path / "ref"
    shutil.copytree(ROOT / "results" / "mnist5k_reference" / "checkpoints", out / "checkpoints",
                    ignore=shutil.ignore_patterns("leases.sqlite*"))
    before = _tree(out)
    assert main(["run", str(ROOT / "configs" / "mnist5k_reference.yaml"), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert _tree(out) == before  # nothing written: no store, no lease, no checkpoint touched
    trains = re.findall(r"^  train (\S+)(?: \(seed (\d)\))?\s+(cached|to train)", text, re.M)
    cells = re.findall(r"^  cell  (\S+) x (.+?)(?: \(seed (\d)\))?\s+(cached|new|partial \(\d+ steps\)|after training)",
                       text, re.M)
    assert {d for d, _, _ in trains} == {"none", "madry", "trades", "rse", "er-classifier", "er-classifier-", "er-trades",
                                         "e-cla", "vae-cla", "afd", "afd-matching", "defense-gan"}
    assert all(state == "cached" for _, _, state in trains)  # the committed checkpoints are the ones it asks for
    assert {(d, seed) for d, seed, _ in trains if seed} == {(d, s) for d in ("none", "madry", "afd") for s in "012"}
    # cascade pgd -> autoattack, C&W, Defense-GAN's pgd -> rays, the transfer sweep (pgd and fgsm
    # transferred, fgsm white-box), the seeds sweep (3 seeds x 3 defenses x 2) and the seeds FGSM
    # sweep (seeds 1 and 2 x 3 defenses x 2; seed 0 is the transfer sweep's)
    assert len(cells) == 11 * 2 + 11 + 2 + 11 * 3 + 3 * 3 * 2 + 2 * 3 * 2
    assert sum("transferred from none" in a for _, a, _, _ in cells) == 2 * 11 + 2 * 3
    assert "Nothing was written." in text


def test_plan_follows_the_store(tmp_path, capsys):
    out = tmp_path / "d"
    sweep = ["--dataset", "digits", "--defense", "none", "--attack", "fgsm,pgd(steps=3)", "--eps", "0:0.2:0.05",
             "--samples", "40", "--out", str(out), "--quiet", "--set", "epochs=1"]
    assert main(["sweep", *sweep, "--dry-run"]) == 0
    fresh = capsys.readouterr().out
    assert not out.exists()
    assert re.search(r"train none\s+to train", fresh) and fresh.count("after training") == 2
    assert main(["sweep", *sweep]) == 0
    capsys.readouterr()
    assert main(["sweep", *sweep, "--dry-run"]) == 0
    done = capsys.readouterr().out
    assert re.search(r"train none\s+cached", done) and len(re.findall(r"cell .* cached", done)) == 2
    assert "at most 0 model evaluations" in done


@pytest.mark.parametrize("attack, expected", [("pgd(steps=10)", 20), ("fgsm", 2), ("square(n_queries=300)", 300)])
def test_evaluations_per_point(attack, expected):
    from robustbench_er.cli import parse_attack
    from robustbench_er.engine.spec import make_attack

    a = parse_attack(attack)
    assert make_attack(a, "Linf", False, 1).evaluations_per_point() == expected
