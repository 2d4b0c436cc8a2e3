"""Hyper-parameter studies and defense variants: NAME[key=value] is a defense of its own in
sweeps and leaderboards; a study section adds one variant per value and plots them."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from robustbench_er.cli import main
from robustbench_er.plugins.registry import defense_label, get_defense, split_variant


def test_a_variant_carries_its_hyper_parameters():
    assert split_variant("er-classifier[embed_dim=8,prior=cauchy]") == (
        "er-classifier", {"embed_dim": 8, "prior": "cauchy"})
    cls = get_defense("none[epochs=3]")
    assert cls.name == "none" and defense_label("none[epochs=3]") == "none[epochs=3]"
    assert cls.hparams("digits", "quick").epochs == 3
    assert cls.hparams("digits", "quick", {"epochs": 9, "lr": 0.5}).epochs == 3  # the variant's own value wins
    assert get_defense("none").hparams("digits", "quick").epochs != 3


def _experiment(tmp_path, **study):
    exp = {"dataset": "digits", "attacks": ["fgsm"], "eps": "0:0.3:0.1", "samples": 60,
           "out": str(tmp_path / "o"), "study": study}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(exp))
    return str(tmp_path / "e.yaml")


@pytest.mark.parametrize("study, says", [
    ({"defense": "none", "param": "epoch", "values": [1, 2]}, "no hyper-parameter 'epoch'"),
    ({"defense": "none", "param": "epochs", "values": []}, "study.values"),
    ({"defense": "nonex", "param": "epochs", "values": [1]}, "unknown defense"),
    ({"defense": "none", "param": "epochs", "values": [1.5]}, "must be an integer"),
])
def test_bad_study(study, says, tmp_path, capsys):
    rc = main(["run", _experiment(tmp_path, **study), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and says.lower() in err.lower(), err
    assert not (tmp_path / "o").exists()


def test_study_plots_each_variant_from_its_own_leaderboard_row(tmp_path):
    assert main(["run", _experiment(tmp_path, defense="none", param="epochs", values=[1, 3], eps=[0.1, 0.3]),
                 "--quiet"]) == 0
    out = tmp_path / "o"
    study = pd.read_csv(out / "study_none_epochs.csv")
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(study["variant"].drop_duplicates()) == ["none[epochs=1]", "none[epochs=3]"]
    assert set(board["defense"]) == {"none[epochs=1]", "none[epochs=3]"}
    for _, r in study[study["eps"] == 0.3].iterrows():  # 0.3 is the headline: the same number as the board
        assert r["robust_acc"] == pytest.approx(board.loc[board["defense"] == r["variant"], "robust_acc"].item(), abs=1e-6)
    # more training changes the model: the two checkpoints differ
    assert study.groupby("variant")["clean_acc"].first().nunique() == 2
    assert (out / "study_none_epochs.png").stat().st_size > 5000


def test_per_eps_table_reads_the_worst_case_curve(tmp_path):
    out = tmp_path / "o"
    assert main(["sweep", "--dataset", "digits", "--defense", "none[epochs=1],none[epochs=3]", "--attack", "fgsm",
                 "--eps", "0:0.3:0.05", "--samples", "60", "--table-eps", "0,0.1,0.3", "--out", str(out),
                 "--quiet"]) == 0
    md = (out / "leaderboard.md").read_text()
    table = md[md.index("robust accuracy at chosen epsilons"):].splitlines()
    header = next(ln for ln in table if ln.startswith("| defense"))
    assert header == "| defense | 0 | 0.1 | 0.3 |"
    curves = pd.read_csv(out / "curves.csv")
    for variant in ("none[epochs=1]", "none[epochs=3]"):
        row = next(ln for ln in table if ln.startswith(f"| {variant} |")).strip("| ").split(" | ")
        wc = curves[(curves["defense"] == variant) & (curves["attack"] == "worst-case")].set_index("eps")
        assert [float(v) for v in row[1:]] == [round(100 * wc.loc[e, "robust_acc"], 1) for e in (0.0, 0.1, 0.3)]
    # report keeps the table the sweep asked for, and takes another on request
    assert main(["report", "--out", str(out), "--quiet"]) == 0
    assert "| defense | 0 | 0.1 | 0.3 |" in (out / "leaderboard.md").read_text()
    assert main(["report", "--out", str(out), "--table-eps", "0.2", "--quiet"]) == 0
    assert "| defense | 0.2 |" in (out / "leaderboard.md").read_text()


def test_per_eps_table_of_one_attack_alone(tmp_path):
    """--table-attacks adds a table of one attack's own curve (PGD alone, as Table 1 of Li et al.
    (ICLR submission) prints it) beside the worst case over the cascade."""
    out = tmp_path / "o"
    assert main(["sweep", "--dataset", "digits", "--defense", "none[epochs=1]", "--attack", "fgsm,pgd(steps=5)",
                 "--eps", "0:0.3:0.1", "--samples", "60", "--table-eps", "0.1,0.2", "--table-attacks", "fgsm",
                 "--out", str(out), "--quiet"]) == 0
    md = (out / "leaderboard.md").read_text()
    alone = md[md.index("fgsm alone at chosen epsilons"):].splitlines()
    row = next(ln for ln in alone if ln.startswith("| none[epochs=1] |")).strip("| ").split(" | ")
    curves = pd.read_csv(out / "curves.csv").set_index(["attack", "eps"])["robust_acc"]
    assert [float(v) for v in row[1:]] == [round(100 * curves.loc[("fgsm", e)], 1) for e in (0.1, 0.2)]
    assert curves.loc[("worst-case", 0.2)] < curves.loc[("fgsm", 0.2)]  # the cascade's PGD adds breaks
    assert main(["sweep", "--dataset", "digits", "--defense", "none[epochs=1]", "--attack", "fgsm",
                 "--eps", "0:0.3:0.1", "--table-attacks", "pgd", "--out", str(tmp_path / "x"), "--quiet"]) == 2
