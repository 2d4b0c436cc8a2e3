"""benchmarks/gpu_check.py, the one command a lent GPU runs, checked on the CPU: ``--smoke`` runs
every part at tiny sizes and its JSON holds real numbers; the budget stops a part and skips the
rest with what was measured kept; paper_cost.py reads the measured throughput back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PARTS = ["quickstart", "pgd_throughput", "autoattack_cell", "autoattack_sweep", "evaluations"]


def _import(name: str) -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _unit(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "gpu_check.json").read_text()), proc.stdout


def test_every_part_runs_and_the_environment_is_recorded(smoke: tuple[Path, dict[str, Any], str]) -> None:
    _, data, _ = smoke
    assert data["finished"] is True
    assert list(data["parts"]) == PARTS
    for key in PARTS:
        part = data["parts"][key]
        assert part["status"] == "ok", (key, part.get("error"), part.get("traceback"))
        assert part["error"] is None and part["seconds"] > 0
    env = data["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["torch_threads"] >= 1
    assert data["options"]["smoke"] is True and data["total_seconds"] > 0
    assert all(isinstance(b, int) for b in data["options"]["eval_batches"])  # numbers stay numbers


def test_quickstart_times_each_stage_and_agrees_with_the_cpu(smoke: tuple[Path, dict[str, Any], str]) -> None:
    out, data, _ = smoke
    r = data["parts"]["quickstart"]["results"]
    assert r["exit_status"] == 0 and r["wall_s"] > 0
    assert (out / "quickstart" / "leaderboard.md").is_file()
    assert {t["defense"] for t in r["training"]} == {"none", "madry"}
    assert all(t["seconds"] > 0 and _unit(t["clean_acc"]) for t in r["training"])
    stages = {(s["defense"], s["attack"]) for s in r["stages"]}
    assert stages == {(d, a) for d in ("none", "madry") for a in ("pgd", "autoattack")}
    assert all(s["seconds"] >= 0 and s["n"] == r["samples"] for s in r["stages"])
    board = {row["name"]: row for row in r["leaderboard"]}
    assert set(board) == {"none", "madry"}
    assert all(_unit(row["clean_acc"]) and _unit(row["robust_acc"]) for row in board.values())
    if r["reused_checkpoints"]:  # the committed reference checkpoints (else shrunk training): a real gap
        assert board["madry"]["robust_acc"] > board["none"]["robust_acc"]
    assert set(r["curves"]) == {"none", "madry"}
    cmp_ = r["comparison"]
    assert cmp_["sides"] == ["device", "cpu"] and cmp_["points"] > 0
    for defense in ("none", "madry"):
        e = cmp_["defenses"][defense]
        assert set(e["robust_acc"]) == {"device", "cpu"}
        assert all(len(v) == len(cmp_["grid"]) and all(_unit(a) for a in v) for v in e["robust_acc"].values())
        vs = e["vs cpu"]
        for field in ("clean_agreement", "broken_at_agreement", "min_verdict_agreement"):
            assert _unit(vs[field]), field
        assert all(_unit(a) for a in vs["verdict_agreement_per_eps"])
        assert vs["max_robust_acc_diff_points"] >= 0
        # the same seeds on the same device: every point agrees
        assert vs["broken_at_agreement"] == 1.0 and vs["differing_points"] == []
        assert all(s > 0 for s in e["seconds"].values())
        # and robustbench_er.compare reads the two sides' stores: paired, no difference, p = 1
        paired = cmp_["paired_tests"][defense]["vs cpu"]
        assert [row["eps"] for row in paired] == pytest.approx(cmp_["grid"])
        assert all(row["test"] == "mcnemar" and row["diff"] == 0 and row["p"] == 1 for row in paired)
        assert [row["acc_b"] for row in paired] == pytest.approx(e["robust_acc"]["cpu"])


def test_throughputs_are_measured(smoke: tuple[Path, dict[str, Any], str]) -> None:
    _, data, _ = smoke
    pgd = data["parts"]["pgd_throughput"]["results"]
    assert pgd["errors"] == 0 and len(pgd["networks"]) >= 2
    for n in pgd["networks"]:
        assert n["ours_img_s"] > 0 and n["plain_img_s"] > 0 and n["ratio"] > 0 and n["params_m"] > 0
        assert n["reps"] >= 2
    assert pgd["worst_ratio"] == min(n["ratio"] for n in pgd["networks"])
    ev = data["parts"]["evaluations"]["results"]
    assert ev["errors"] == 0 and ev["networks"]
    for n in ev["networks"]:
        assert n["batches"] and all(b["evaluations_per_second"] > 0 and b["seconds_per_evaluation"] > 0
                                    for b in n["batches"])
    # every network configs/paper_afd_mnist.yaml names has an entry paper_cost.py can read
    names = {e["defense"] for e in ev["entries"] if e["dataset"] == "mnist"}
    assert {"afd", "none[backbone=resnet5]", "madry[backbone=resnet5]", "trades[backbone=resnet5]"} <= names


def test_autoattack_parts_compare_with_pyautoattack(smoke: tuple[Path, dict[str, Any], str]) -> None:
    _, data, _ = smoke
    cell = data["parts"]["autoattack_cell"]["results"]
    assert _unit(cell["agreement"]) and cell["time_ratio"] > 0
    for side in ("harness", "direct"):
        assert _unit(cell[side]["robust_acc"]) and cell[side]["seconds"] > 0
    # the harness's seed handed to pyautoattack directly: the same verdict on every point
    assert cell["harness"]["seeds"] == [cell["direct"]["seed"]] and cell["agreement"] == 1.0
    sweep = data["parts"]["autoattack_sweep"]["results"]
    assert sweep["k"] == 9 and sweep["time_ratio"] > 0 and sweep["bisect"]["rounds"] >= 1
    for side in ("bisect", "independent"):
        accs = sweep[side]["robust_acc"]
        assert len(accs) == 9 and all(_unit(a) for a in accs)
        assert accs == sorted(accs, reverse=True)  # never rises with eps
    assert sweep["weaker_by_points"] >= 0 and sweep["independent"]["complete"] is True


def test_markdown_is_written_and_printed(smoke: tuple[Path, dict[str, Any], str]) -> None:
    out, _, stdout = smoke
    md = (out / "gpu_check.md").read_text()
    for n in range(1, 6):
        assert f"\n## {n}. " in md
    assert "| ours/plain |" in md and "evaluations/s" in md and "broken_at agrees" in md
    assert "## Summary" in stdout


def test_paper_cost_reads_the_measured_throughput(smoke: tuple[Path, dict[str, Any], str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out, _, _ = smoke
    paper_cost = _import("paper_cost")
    assert paper_cost.main([str(ROOT / "configs" / "paper_afd_mnist.yaml"), "--throughput",
                            str(out / "gpu_check.json")]) == 0
    text = capsys.readouterr().out
    assert "hours at the measured throughput" in text and "measured by gpu_check.py" in text
    listed = [line for line in text.splitlines() if line.startswith("  mnist")]
    assert listed and all(line.endswith("(gpu_check)") for line in listed)  # nothing measured again here


def test_the_budget_stops_a_part_and_skips_the_rest(tmp_path: Path) -> None:
    gpu_check = _import("gpu_check")
    # part 2 would time each network for 100 s: the 5 s budget stops it with what it measured
    rc = gpu_check.main(["--smoke", "--device", "cpu", "--out", str(tmp_path), "--parts", "2,5",
                         "--budget-s", "5", "--min-time", "100"])
    assert rc == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["parts"]["pgd_throughput"]["status"] == "timeout"
    assert "budget" in data["parts"]["pgd_throughput"]["error"]
    assert data["parts"]["pgd_throughput"]["results"]["networks"]  # kept, though unfinished
    assert data["parts"]["evaluations"]["status"] == "skipped"
    assert data["parts"]["quickstart"]["status"] == "not selected"
    assert "timeout" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_missing_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpu_check = _import("gpu_check")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "--device cpu" in capsys.readouterr().err
    assert not (tmp_path / "gpu_check.json").exists()
