"""The committed references answer their own configs: a dry run of each plans no new work.

A change that alters results (a new cell identity, a new job in a reference config) fails here
until the reference is regenerated in the same submission (``robustbench-er run CONFIG``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from robustbench_er.cli import main

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = ["mnist5k_reference", "mnist5k_detection", "mnist5k_analyses"]
STATES = r"(cached|to train|new|partial \(\d+ steps\)|after training)"


def _tree(folder: Path) -> dict[str, int]:
    # SQLite's shared-memory index of a WAL store is touched even by a read-only connection
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
            if not p.name.endswith(("-shm", "-wal"))}


@pytest.mark.parametrize("name", REFERENCES)
def test_committed_reference_answers_its_config(name, capsys):
    out = ROOT / "results" / name
    before = _tree(out)
    assert main(["run", str(ROOT / "configs" / f"{name}.yaml"), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert _tree(out) == before  # read only
    jobs = re.findall(rf"^  (train|cell) +(.+?) +{STATES} ", text, re.M)
    assert jobs, text
    stale = [f"{kind} {what.strip()}: {state}" for kind, what, state in jobs if state != "cached"]
    assert not stale, f"{len(stale)} of {len(jobs)} jobs of configs/{name}.yaml are not in results/{name}: {stale[:5]}"
    assert "at most 0 model evaluations" in text
