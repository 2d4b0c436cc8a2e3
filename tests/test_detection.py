"""Detectors: registered, fit and score on tiny models, separate PGD examples from natural ones;
the metrics of Li et al. 2021; bad input refused with one sentence and nothing written."""

from __future__ import annotations

import math

import pytest

from robustbench_er.cli import main
from robustbench_er.engine.detection import (
    Counts,
    DetectionSetup,
    acc_metrics,
    roc_metrics,
    run_detection,
)
from robustbench_er.engine.spec import AttackConfig
from robustbench_er.plugins.registry import DETECTORS, get_detector


def test_metrics_on_a_hand_made_case():
    # 10 adversarial examples, 6 detected, 2 of the 4 undetected still classified right;
    # 20 natural/noisy ones, 15 found non-adversarial
    m = acc_metrics(Counts(N=10, n_adv=6, n_cla=2, M=20, m_nadv=15))
    assert m == {"acc_adv": 0.6, "acc_nadv": 0.75, "acc_cla": 0.5, "acc_com": 0.8}
    assert math.isnan(acc_metrics(Counts(N=4, n_adv=4, n_cla=0, M=0, m_nadv=0))["acc_cla"])
    r = roc_metrics(__import__("numpy").array([0.9, 0.8, 0.7]), __import__("numpy").array([0.1, 0.2, 0.75]))
    assert r["roc_auc"] == pytest.approx(8 / 9)


def test_every_detector_is_listed(capsys):
    assert main(["list", "detectors"]) == 0
    listed = capsys.readouterr().out
    assert set(DETECTORS.names()) >= {"er1", "er2", "kd", "lid"}
    assert all(n in listed for n in DETECTORS.names())


@pytest.fixture(scope="module")
def models(tmp_path_factory, digits):
    from robustbench_er.engine.trained import get_or_train

    out = tmp_path_factory.mktemp("det")
    return {d: get_or_train(d, digits, out=out, progress=False, overrides={"epochs": 4}) for d in ("none", "er-classifier-")}


@pytest.mark.parametrize("name", DETECTORS.names())
def test_detector_separates_pgd_examples_from_natural_ones(name, models, digits):
    # an undefended model (the ER detectors read a code: er-classifier-, trained without min-max)
    defense = "er-classifier-" if get_detector(name).needs_embedding else "none"
    setup = DetectionSetup([name], AttackConfig("pgd", {"steps": 10}), [AttackConfig("pgd", {"steps": 10})],
                           eps=0.2, samples=300, split=0.3)
    row, adaptive = run_detection(defense, models[defense], digits, setup)
    assert row["test_attack"] == "pgd" and adaptive["test_attack"] == f"adaptive pgd vs {name}"
    assert row["successful"] > 20 and row["M"] == 2 * row["set2"]
    assert row["roc_auc"] > 0.6  # better than chance, non-adaptive protocol
    for k in ("acc_adv", "acc_nadv", "acc_cla", "acc_com"):
        assert 0 <= row[k] <= 1 or math.isnan(row[k])
    # the attack that knows the detector is there: on the same set II points, detected less often
    assert adaptive["N"] == row["N"] and adaptive["acc_adv"] < row["acc_adv"]


@pytest.mark.parametrize("args, says", [
    (["--detector", "nope"], "unknown detector"),
    (["--detector", "er1", "--defense", "net-without-embedding", "--plugin", "{plugin}"], "embedding"),
    (["--split", "1.5"], "--split"),
    (["--test-attack", "pgdx"], "unknown attack"),
])
def test_bad_detect_input(args, says, tmp_path, capsys):
    plugin = tmp_path / "plain.py"
    plugin.write_text(
        "from torch import nn\n"
        "from robustbench_er.plugins.defense import Defense\n"
        "from robustbench_er.plugins.registry import register_defense\n"
        "from robustbench_er.models.training import train_clean\n"
        "@register_defense('net-without-embedding')\n"
        "class Plain(Defense):\n"
        "    presets = {'digits': {'quick': {}, 'paper': {}}}\n"
        "    def build(self, spec, hp):\n"
        "        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # no embed() or features()\n"
        "    def train(self, model, data, hp, seed, progress=True):\n"
        "        return train_clean(model, data, hp, seed, progress, 'net')\n")
    args = [a.replace("{plugin}", str(plugin)) for a in args]
    base = {"--dataset": "digits", "--defense": "none", "--detector": "kd", "--train-attack": "fgsm",
            "--test-attack": "fgsm", "--samples": "50", "--out": str(tmp_path / "o")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    rc = main(["detect", *[x for kv in base.items() for x in kv], "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and says.lower() in err.lower(), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, says", [
    (["--test-attack", "cw"], "give its bound"),
    (["--l2-unit", "pixels"], "--l2-unit"),
    (["--test-attack", "fgsm(eps=abc)"], "--test-attack"),
])
def test_bad_threat_input(args, says, tmp_path, capsys):
    base = {"--dataset": "digits", "--defense": "none", "--detector": "kd", "--train-attack": "fgsm",
            "--test-attack": "fgsm", "--samples": "50", "--out": str(tmp_path / "o")}
    base.update(dict(zip(args[::2], args[1::2])))
    rc = main(["detect", *[x for kv in base.items() for x in kv], "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and says.lower() in err.lower(), err
    assert not (tmp_path / "o").exists()


def test_detection_cells_resume_and_experiment_files_share_them(tmp_path, monkeypatch):
    """An L2 C&W beside Linf FGSM in one run; rows are store cells, so an experiment file's
    ``detect:`` job with the same keys reads them back and crafts nothing."""
    import pandas as pd
    import yaml

    import robustbench_er.engine.detection as detection

    out = tmp_path / "o"
    keys = {"dataset": "digits", "defenses": "none", "detectors": "kd", "train_attacks": "fgsm",
            "test_attacks": "fgsm,cw(eps=0.2,steps=30,binary_search_steps=3)", "l2_unit": "rms",
            "samples": 100, "set": ["epochs=2"], "out": str(out)}
    assert main(["detect", "--dataset", "digits", "--defense", "none", "--detector", "kd", "--train-attack", "fgsm",
                 "--test-attack", keys["test_attacks"], "--l2-unit", "rms", "--samples", "100",
                 "--set", "epochs=2", "--out", str(out), "--quiet"]) == 0
    first = pd.read_csv(out / "detection.csv")
    cw = first[first["test_attack"].str.startswith("cw")].iloc[0]
    assert cw["norm"] == "L2" and cw["eps"] == 0.2 and 0 < cw["successful"] < cw["N"]
    assert set(first["test_attack"]) == {"fgsm", keys["test_attacks"].split(",", 1)[1], "adaptive pgd vs kd"}
    (out / "detection.csv").unlink()

    def no_crafting(*a, **k):
        raise AssertionError("a stored detection cell was crafted again")

    monkeypatch.setattr(detection, "craft", no_crafting)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"name": "detect only", "detect": keys}))
    assert main(["run", str(tmp_path / "exp.yaml"), "--quiet"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "detection.csv"), first)
