"""Transfer (black-box) attacks from a surrogate checkpoint, and sweeps over several seeds with
mean ± std rows in the leaderboards (Bashivan et al. 2021, Table 1, report both)."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robustbench_er.cli import main

GRID = "0:0.3:0.05"
TRANSFER = ["sweep", "--dataset", "digits", "--defense", "none[epochs=2]", "--attack",
            "pgd(steps=20),transfer(surrogate=none)", "--eps", GRID, "--samples", "60", "--mode", "independent", "--quiet"]


def _specs(out: Path) -> list[dict]:
    con = sqlite3.connect(out / "store.sqlite")
    try:
        return [json.loads(s) for (s,) in con.execute("SELECT spec FROM cells ORDER BY created")]
    finally:
        con.close()


@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer")
    assert main([*TRANSFER, "--out", str(out)]) == 0
    return out


def test_transfer_is_weaker_than_white_box_pgd(transfer_run):
    curves = pd.read_csv(transfer_run / "curves.csv")
    acc = curves.pivot_table(index="eps", columns="attack", values="robust_acc")
    pgd, transfer = acc["pgd(steps=20)"], acc["transfer(surrogate=none)"]
    clean = float(curves["clean_acc"].iloc[0])
    assert (transfer >= pgd - 1e-12).all()  # black-box never stronger than white-box here
    assert transfer.iloc[-1] < clean  # but its examples do transfer at the largest eps
    assert transfer.iloc[0] == pytest.approx(clean)
    attacks = pd.read_csv(transfer_run / "attacks.csv").set_index("attack")
    assert attacks.loc["transfer(surrogate=none)", "access"] == "none"
    assert attacks.loc["pgd(steps=20)", "access"] == "gradient"


def test_cell_records_the_surrogate_checkpoint(transfer_run, digits):
    from robustbench_er.engine.trained import get_or_train

    surrogate = get_or_train("none", digits, profile="quick", seed=0, out=transfer_run, progress=False)
    target = get_or_train("none[epochs=2]", digits, profile="quick", seed=0, out=transfer_run, progress=False)
    assert surrogate.reused and target.reused  # both trained by the sweep's training step, then cached
    (spec,) = [s for s in _specs(transfer_run) if s["attack"]["attack"] == "transfer"]
    assert spec["attack"]["models"] == {"surrogate": surrogate.identity}
    assert spec["checkpoint"] == target.identity != surrogate.identity
    assert spec["attack"]["inner"]["attack"] == "pgd" and spec["attack"]["inner"]["params"]["early_stop"] is False
    assert "surrogate" not in spec["attack"]["params"]  # the model's identity, not the name or path, is the key


def test_surrogate_identity_is_part_of_the_cell_id():
    from types import SimpleNamespace

    from robustbench_er.models.checkpoints import spec_hash
    from robustbench_er.plugins.registry import get_attack

    ids = []
    for identity in ("aaaa", "bbbb"):
        attack = get_attack("transfer")(norm="Linf", surrogate="none", attack="fgsm")
        attack.use_models({"surrogate": SimpleNamespace(identity=identity, model=SimpleNamespace(randomized=False))})
        ids.append(spec_hash({"attack": attack.describe()}))
    assert ids[0] != ids[1]


def test_dry_run_lists_the_surrogate(transfer_run, tmp_path, capsys):
    fresh = tmp_path / "fresh"
    assert main([*TRANSFER, "--out", str(fresh), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not fresh.exists()
    trains = re.findall(r"^  train (.+?)\s{2,}(cached|to train)", text, re.M)
    assert [t.strip() for t, _ in trains] == ["none[epochs=2]", "none (surrogate)"]
    assert {state for _, state in trains} == {"to train"} and text.count("after training") == 2
    # a checkpoint folder as the surrogate: loaded, not trained, and its cells can be named
    (folder,) = [p for p in (transfer_run / "checkpoints").iterdir()
                 if p.is_dir() and json.loads((p / "meta.json").read_text())["hparams"]["epochs"] == 8]
    args = [*TRANSFER, "--out", str(transfer_run), "--dry-run"]
    args[args.index("--attack") + 1] = f"transfer(surrogate={folder},attack=fgsm)"
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"from {folder} (surrogate)" in text and "after training" not in text
    assert not re.search(r"^  train .*to train", text, re.M)


def _other_dataset_checkpoint(transfer_run: Path, tmp_path: Path) -> Path:
    src = next(p for p in (transfer_run / "checkpoints").iterdir() if (p / "meta.json").is_file())
    dst = tmp_path / "on-mnist5k"
    shutil.copytree(src, dst)
    meta = json.loads((dst / "meta.json").read_text())
    meta["dataset"] = "mnist5k"
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize("attack, words", [
    ("transfer(surrogate=madryx)", "did you mean 'madry'"),
    ("transfer(surrogate=none,attack=square)", "must be a fixed-epsilon gradient attack"),
    ("transfer(surrogate=none,attack=cw)", "must be a fixed-epsilon gradient attack"),
    ("transfer(surrogate=none,attack=fgsm,steps=5)", "has no parameter 'steps'"),
    ("OTHER-DATASET", "was trained on 'mnist5k'"),
])
def test_bad_surrogate_is_one_sentence_and_writes_nothing(transfer_run, tmp_path, capsys, attack, words):
    if attack == "OTHER-DATASET":
        attack = f"transfer(surrogate={_other_dataset_checkpoint(transfer_run, tmp_path)})"
    out = tmp_path / "out"
    args = [*TRANSFER, "--out", str(out)]
    args[args.index("--attack") + 1] = f"pgd,{attack}"
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustbench-er: error: --attack transfer(") and words in err, err
    assert "\n" not in err and err.endswith(".")
    assert not out.exists()


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds")
    args = ["sweep", "--dataset", "digits", "--defense", "none", "--set", "epochs=1", "--attack",
            "pgd(steps=5),transfer(surrogate=none,attack=fgsm)", "--eps", "0:0.3:0.1", "--samples", "60",
            "--headline", "0.1", "--seeds", "0,1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    return out


def test_seeds_train_and_sweep_each_seed(seeds_run):
    folders = [p for p in (seeds_run / "checkpoints").iterdir() if p.is_dir()]
    seeds = sorted(json.loads((p / "meta.json").read_text())["seed"] for p in folders)
    assert seeds == [0, 1]  # one checkpoint per seed; the surrogate is the sweep's own defense here
    specs = _specs(seeds_run)
    assert sorted(s["seed"] for s in specs) == [0, 0, 1, 1]
    for s in specs:
        if s["attack"]["attack"] == "transfer":  # each seed's surrogate is that seed's model
            assert s["attack"]["models"]["surrogate"] == s["checkpoint"]
    assert len({s["checkpoint"] for s in specs}) == 2


def test_leaderboards_have_per_seed_rows_and_mean_std(seeds_run):
    board = pd.read_csv(seeds_run / "leaderboard.csv")
    per = board[~board["aggregate"]].sort_values("seed")
    (agg,) = [r for _, r in board[board["aggregate"]].iterrows()]
    assert list(per["seed"]) == [0, 1] and agg["seeds"] == "0,1" and int(agg["n_seeds"]) == 2
    assert (per["robust_acc"] > 0).all() and per["robust_acc"].nunique() == 2  # a mean worth checking
    for k in ("clean_acc", "robust_acc", "auc"):
        assert agg[k] == pytest.approx(per[k].mean())
        assert agg[f"{k}_std"] == pytest.approx(np.std(per[k].to_numpy(), ddof=1))
    md = (seeds_run / "leaderboard.md").read_text()
    assert "| defense | seed | clean |" in md and "| none | mean ± std (2 seeds) |" in md
    assert f"{100 * agg['robust_acc']:.1f} ± {100 * agg['robust_acc_std']:.1f}" in md
    entries = json.loads((seeds_run / "leaderboard.json").read_text())
    assert sorted(e["seed"] for e in entries if not e["aggregate"]) == [0, 1]
    (ja,) = [e for e in entries if e["aggregate"]]
    assert ja["seeds"] == [0, 1] and ja["robust_acc"] == pytest.approx(per["robust_acc"].mean())
    assert "mean ± std (2 seeds)" in (seeds_run / "leaderboard.html").read_text()


def test_seeds_in_experiment_files(digits):
    from robustbench_er.core.errors import UserInputError
    from robustbench_er.inputs.config import parse_experiment

    base = {"dataset": "digits", "defenses": ["none"], "attacks": ["pgd"], "eps": "0:0.3:0.1", "samples": 20}
    (cfg,) = parse_experiment({**base, "seeds": [0, 1, 2]}).configs(progress=False)
    assert cfg.seeds == [0, 1, 2]
    # a sweep's own seeds replace the file's seed (and the other way round)
    exp = parse_experiment({**base, "seed": 5, "sweeps": [{"seeds": [1, 2]}, {}]})
    assert [(c.seeds, c.seed) for c in exp.configs(progress=False)] == [([1, 2], 1), (None, 5)]
    with pytest.raises(UserInputError, match=r"^seeds: give either seed or seeds, not both\.$"):
        parse_experiment({**base, "seed": 1, "seeds": [0, 1]}).configs(progress=False)
    with pytest.raises(UserInputError, match="a seed is repeated"):
        parse_experiment({**base, "seeds": [1, 1]})
