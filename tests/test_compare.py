"""robustbench-er compare and robustbench_er.compare on tiny real runs (digits, FGSM and PGD-3)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import robustbench_er
from robustbench_er.cli import main
from robustbench_er.core.metrics import mcnemar_p, mcnemar_two_sided_p
from robustbench_er.report.compare import (
    compare_runs,
    paired_interval,
    read_run,
    unpaired_interval,
    unpaired_stats,
    wilson,
)
from robustbench_er.store.results import Store

ATTACKS = "fgsm,pgd(steps=3)"
REFERENCE = Path(__file__).resolve().parents[1] / "results" / "mnist5k_reference"


def _sweep(out: Path, defense: str, folder: Path, samples: int) -> Path:
    assert main(["sweep", "--dataset", "digits", "--defense", defense, "--checkpoint", str(folder), "--attack",
                 ATTACKS, "--eps", "0:0.3:0.1", "--samples", str(samples), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, none_digits, madry_digits) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    return {"none": _sweep(root / "none", "none", none_digits.folder, 60),
            "madry": _sweep(root / "madry", "madry", madry_digits.folder, 60),
            "none50": _sweep(root / "none50", "none", none_digits.folder, 50)}


def _ids(folder: Path) -> set[int]:
    s = Store(folder)
    try:
        return set(s.outcomes_frame()["sample_id"])
    finally:
        s.close()


def test_the_exact_tests_and_the_interval():
    assert mcnemar_p(9, 1) == pytest.approx(11 / 1024)
    assert mcnemar_two_sided_p(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_two_sided_p(4, 4) == 1.0
    assert mcnemar_p(3000, 2900) < 0.2  # large counts stay exact, no overflow
    lo, hi = wilson(0.5, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    s = unpaired_stats(0.5, 100, 0.3, 100)
    assert s["ci_low"] < -0.2 < s["ci_high"] < 0 and s["p_worse"] < 0.01 and s["test"] == "unpaired"


def test_the_paired_interval():
    # Newcombe's square-and-add interval on a published paired table (complete response before and
    # after consolidation therapy, Cavo et al. 2012: 59 both, 16 before only, 6 after only, 80
    # neither), as in Fagerland, Lydersen and Laake's "Statistical Analysis of Contingency Tables"
    assert paired_interval(59, 16, 6, 80) == pytest.approx((-0.1186, -0.0046), abs=1e-4)
    # no correlation (a product difference within n/2): the unpaired interval of the same proportions
    assert paired_interval(1, 7, 1, 12) == pytest.approx(unpaired_interval(8 / 21, 21, 2 / 21, 21))
    # positively correlated verdicts narrow it: the same margins, most points agreeing
    lo, hi = paired_interval(40, 10, 0, 50)
    ulo, uhi = unpaired_interval(0.5, 100, 0.4, 100)
    assert ulo < lo < -0.1 < hi < uhi and hi < 0
    lo, hi = paired_interval(50, 0, 0, 50)  # identical verdicts: an interval around 0
    assert lo < 0 < hi and hi - lo < 0.05


def test_a_store_against_itself_differs_nowhere(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(runs["none"]), str(runs["none"]), "--out", str(out), "--fail-if-worse"]) == 0
    t = pd.read_csv(out / "compare.csv")
    assert len(t) == 12 and set(t["attack"]) == {"fgsm", "pgd(steps=3)", "worst-case"}  # 3 curves x 4 eps
    assert (t["diff"] == 0).all() and (t["test"] == "mcnemar").all() and (t["p"] == 1).all()
    assert ((t["ci_low"] <= 0) & (t["ci_high"] >= 0)).all()
    for name in ("compare.md", "compare.html", "compare_digits_Linf.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "compare.md").read_text()
    assert md.count("run 1: `robustbench-er") == 2 and "versions:" in md and "device:" in md  # a line per run
    assert "worse:" not in capsys.readouterr().out


def test_madry_against_none_is_significantly_worse(runs, tmp_path, capsys):
    t = robustbench_er.compare(runs["madry"], runs["none"], pair="1:madry=2:none")
    wc = t[(t["attack"] == "worst-case")].set_index("eps")
    print(wc[["acc_a", "acc_b", "diff", "p", "p_worse", "broken_b_only", "broken_a_only"]].to_string())
    at = wc.loc[0.1]
    assert at["test"] == "mcnemar" and at["diff"] < -0.1 and at["p"] < 0.01 and at["p_worse"] < 0.01
    assert at["broken_b_only"] > at["broken_a_only"]
    # madry first (the baseline), none last: the last is worse -> exit 1, one sentence per point
    argv = ["compare", str(runs["madry"]), str(runs["none"]), "--pair", "1:madry=2:none", "--out", str(tmp_path / "a"),
            "--fail-if-worse"]
    assert main(argv) == 1
    worse = [line for line in capsys.readouterr().out.splitlines() if line.startswith("worse:")]
    assert worse and any("eps 0.1 (worst-case)" in line for line in worse)
    assert main(argv + ["--by", "90"]) == 0  # no drop of more than 90 points
    # --by is a margin of non-inferiority: a drop whose point estimate passes the margin fails only
    # when its one-sided confidence bound does too
    r = wc.loc[0.1]
    assert r["ci_low"] < r["diff"] < r["ci_high"] < 0  # the paired 95% interval
    drop = -100 * r["diff"]
    capsys.readouterr()
    main(argv + ["--by", f"{drop - 0.5:.2f}"])  # past the margin, but not significantly
    assert not any("eps 0.1 (worst-case)" in line for line in capsys.readouterr().out.splitlines())
    assert main(argv + ["--by", f"{-100 * r['ci_high'] - 2:.2f}"]) == 1  # significantly past it
    assert any("eps 0.1 (worst-case)" in line and "at 95% confidence at least" in line
               for line in capsys.readouterr().out.splitlines())
    assert main(argv + ["--alpha", "1e-12"]) == 0
    # none first, madry last: madry is better under attack, but its clean accuracy (eps 0) is
    # significantly lower (80.0% vs 91.7% here): that is the only drop
    capsys.readouterr()
    argv = ["compare", str(runs["none"]), str(runs["madry"]), "--pair", f"{runs['madry']}:madry=1:none",
            "--out", str(tmp_path / "b"), "--fail-if-worse"]
    assert main(argv) == 1
    worse = [line for line in capsys.readouterr().out.splitlines() if line.startswith("worse:")]
    assert worse and all(" at eps 0 (" in line for line in worse)
    t = robustbench_er.compare(runs["none"], runs["madry"], pair="1:none=2:madry")
    assert (t.loc[t["eps"] > 0, "p_worse"] > 0.05).all()
    assert main(argv + ["--by", "20"]) == 0


def test_two_attacks_of_one_run(runs, tmp_path, capsys):
    """--pair-attack compares attacks, not runs: FGSM against PGD-3 on the same points of one store."""
    folder = str(runs["none"])
    t = robustbench_er.compare(folder, folder, pair_attack="1:fgsm=2:pgd(steps=3)")
    assert len(t) == 4 and set(t["attack"]) == {"fgsm"} and set(t["attack_b"]) == {"pgd(steps=3)"}
    assert (t["test"] == "mcnemar").all() and (t["diff"] <= 0).all()  # PGD breaks what FGSM does, and more
    at = t.set_index("eps").loc[0.2]  # k points only PGD breaks, none only FGSM: p = 1/2^k
    assert at["diff"] < 0 and at["broken_a_only"] == 0 and at["p_worse"] == pytest.approx(0.5 ** at["broken_b_only"])
    out = tmp_path / "atk"
    argv = ["compare", folder, folder, "--pair-attack", "1:fgsm=2:pgd(steps=3)", "--out", str(out), "--fail-if-worse"]
    assert main(argv) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("worse:") and "(fgsm / pgd(steps=3))" in line for line in lines)
    assert "| fgsm / pgd(steps=3) |" in (out / "compare.md").read_text()
    assert (out / "compare_digits_Linf.png").stat().st_size > 0


def test_transfer_against_white_box_on_the_reference():
    """The committed reference, PGD transferred from ``none`` against white-box PGD on the same
    1,000 points: every Linf defense is matched, a defense swept at three seeds under its seed-0
    name in both norms (the weights' name must not change with the norm), and transfer never
    breaks more than white-box PGD."""
    ref = read_run(REFERENCE)
    t = compare_runs([ref, ref], attack_pairs=["1:pgd=2:pgd transferred from none"]).table
    at = t[(t["eps"] - 0.3).abs() < 1e-9].set_index("model")
    assert {"madry@seed0", "afd@seed0", "trades", "er-classifier"} <= set(at.index) and len(at) == 11
    assert (at["test"] == "mcnemar").all() and (at["diff"] >= 0).all()
    assert at.loc["madry@seed0", "p"] < 1e-10 and at.loc["madry@seed0", "ci_low"] > 0.1
    # one seed's model against another's in the same folder: the pair, not the seed-0 model itself
    t = compare_runs([ref, ref], pairs=["1:madry@seed0=2:madry@seed1"]).table
    wc = t[(t["attack"] == "worst-case") & (t["model"] == "madry@seed0") & ((t["eps"] - 0.3).abs() < 1e-9)]
    assert len(wc) == 1 and wc.iloc[0]["model_b"] == "madry@seed1" and wc.iloc[0]["diff"] != 0


def test_other_sample_ids_use_the_unpaired_test(runs):
    assert _ids(runs["none"]) != _ids(runs["none50"])  # another --samples, another seeded subset
    t = robustbench_er.compare(runs["none"], runs["none50"])
    assert len(t) == 12 and (t["test"] == "unpaired").all()
    assert (t["n_a"] == 60).all() and (t["n_b"] == 50).all()
    assert ((t["ci_low"] <= t["diff"] + 1e-12) & (t["diff"] <= t["ci_high"] + 1e-12)).all()
    assert t["broken_b_only"].isna().all()


def test_a_robustbench_json_is_matched_with_the_worst_case(runs, tmp_path):
    f = tmp_path / "digits" / "Linf" / "Someone2024Robust.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({"name": "A paper title", "dataset": "digits", "eps": "0.1", "clean_acc": "99.00",
                             "autoattack_acc": 12.5, "reported": "13.0", "additional_data": False}))
    t = robustbench_er.compare(runs["none"], f, pair="1:none=2:Someone2024Robust")
    assert len(t) == 1
    r = t.iloc[0]
    assert (r["attack"], r["eps"], r["norm"], r["test"]) == ("worst-case", 0.1, "Linf", "unpaired")
    assert r["acc_b"] == pytest.approx(0.125) and r["n_a"] == 60 and pd.isna(r["n_b"])
    assert r["diff"] == pytest.approx(0.125 - r["acc_a"]) and r["ci_low"] <= r["diff"] <= r["ci_high"]
    # 8/255-style eps, "threat_model" and a list of entries are read too
    g = tmp_path / "board.json"
    g.write_text(json.dumps([{"model_id": "m", "dataset": "DIGITS", "threat_model": "linf", "eps": "51/255",
                              "clean_acc": 90, "autoattack_acc": "0.0"}]))
    assert robustbench_er.compare(runs["none"], g, pair="1:none=2:m").iloc[0]["eps"] == pytest.approx(0.2)
    # our own leaderboard.json: matched on the weights, the headline eps, the worst case and each attack
    t = robustbench_er.compare(runs["none"], runs["none"] / "leaderboard.json")
    assert set(t["attack"]) == {"worst-case", "fgsm", "pgd(steps=3)"} and (t["diff"].abs() < 1e-12).all()
    assert (t["test"] == "unpaired").all() and (t["eps"] == 0.3).all()


@pytest.mark.parametrize("make, match", [
    (lambda d, r: [str(d), str(r["none"])], "No results store"),
    (lambda d, r: [str(d / "missing.json"), str(r["none"])], "does not exist"),
    (lambda d, r: [str(_write(d / "x.json", {"foo": 1})), str(r["none"])], "neither"),
    (lambda d, r: [str(_write(d / "y.json", "not json")), str(r["none"])], "not a readable JSON"),
    (lambda d, r: [str(r["none"]), str(r["madry"])], "Nothing of"),
    (lambda d, r: [str(r["none"]), str(r["madry"]), "--pair", "3:none=1:madry"], "--pair"),
    (lambda d, r: [str(r["none"]), str(r["none"]), "--pair-attack", "1:fgsm=2:cw"], "does not have"),
    (lambda d, r: [str(r["none"]), str(r["none"]), str(r["none"]), "--pair-attack", "2:fgsm=3:fgsm"],
     "--pair-attack"),
])
def test_bad_inputs_exit_2_with_one_sentence(make, match, runs, tmp_path, capsys):
    argv = ["compare", *make(tmp_path, runs), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def _write(path: Path, value: object) -> Path:
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return path
