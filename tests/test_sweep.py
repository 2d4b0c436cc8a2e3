"""The sweep: ascending survivors-only runs, verification, store, resume, reports."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest
from interrupt import Interrupted, stop_after

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.metrics import auc, worst_case
from robustbench_er.core.text import parse_eps
from robustbench_er.engine.spec import AttackConfig, SweepConfig, validate_grid
from robustbench_er.jobs.sweep import run_sweep

GRID = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3]


def _cfg(out, **kw):
    # each attack on its own over ascending epsilons; the cascade and the grid search have their own tests
    base = dict(dataset="digits", defenses=["none"], attacks=[AttackConfig("pgd", {"steps": 10}), AttackConfig("fgsm")],
                eps=GRID, samples=120, out=out, progress=False, mode="independent", search="ascending")
    base.update(kw)
    return SweepConfig(**base)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    summaries = run_sweep(_cfg(out))
    return out, summaries


def test_outputs_written(full_run):
    out, _ = full_run
    for name in ("curves.csv", "leaderboard.csv", "leaderboard.md", "leaderboard.json", "curves_digits_Linf.png",
                 "store.sqlite"):
        assert (out / name).is_file(), name
    curves = pd.read_csv(out / "curves.csv")
    assert {"dataset", "defense", "attack", "norm", "eps", "n", "clean_acc", "robust_acc"} <= set(curves.columns)
    assert set(curves["attack"]) == {"pgd", "fgsm", "worst-case"}
    board = json.loads((out / "leaderboard.json").read_text())
    assert isinstance(board[0]["robust_acc"], float) and isinstance(board[0]["eps"], float)
    assert board[0]["eps"] == 0.3 and board[0]["n"] == 120


def test_curves_are_real_and_consistent(full_run):
    out, summaries = full_run
    curves = pd.read_csv(out / "curves.csv")
    for attack, part in curves.groupby("attack"):
        acc = part.sort_values("eps")["robust_acc"].to_numpy()
        assert np.all(np.diff(acc) <= 1e-12), attack  # never rises
        assert acc[0] == pytest.approx(part["clean_acc"].iloc[0])  # eps 0 = clean
    pgd = curves[curves.attack == "pgd"].set_index("eps")["robust_acc"]
    fgsm = curves[curves.attack == "fgsm"].set_index("eps")["robust_acc"]
    wc = curves[curves.attack == "worst-case"].set_index("eps")["robust_acc"]
    assert pgd[0.0] > 0.85 and pgd[0.3] < 0.1  # undefended: broken at a large eps
    assert (pgd <= fgsm + 1e-9).all()  # iterative at least as strong as single-step here
    assert (wc <= np.minimum(pgd, fgsm) + 1e-12).all()
    board = pd.read_csv(out / "leaderboard.csv")
    assert board["auc"].iloc[0] == pytest.approx(auc(list(wc.index), list(wc.values)))


def test_survivors_only_and_clean_wrong_never_attacked(full_run):
    out, _ = full_run
    con = sqlite3.connect(out / "store.sqlite")
    cells = pd.read_sql_query("SELECT cell_id, attack FROM cells", con)
    for cid in cells["cell_id"]:
        steps = pd.read_sql_query("SELECT * FROM steps WHERE cell_id=? ORDER BY eps_index", con, params=(cid,))
        outc = pd.read_sql_query("SELECT * FROM outcomes WHERE cell_id=?", con, params=(cid,))
        attacked = steps["attacked"].to_numpy()
        broken = steps["broken"].to_numpy()
        n_correct = int(outc["clean_correct"].sum())
        assert attacked[0] == n_correct  # eps 0: everyone correct is a survivor, nobody attacked at 0
        assert broken[0] == 0
        # each step attacks exactly the survivors of the previous ones
        for i in range(1, len(attacked)):
            assert attacked[i] == attacked[i - 1] - broken[i - 1]
        assert outc.loc[outc.clean_correct == 0, "broken_at"].isna().all()
    con.close()


def test_worst_case_is_min_over_attacks():
    a = pd.DataFrame({"sample_id": [1, 2, 3], "label": [0, 1, 2], "clean_correct": [1, 1, 0], "broken_at": [0.1, np.nan, np.nan]})
    b = pd.DataFrame({"sample_id": [1, 2, 3], "label": [0, 1, 2], "clean_correct": [1, 1, 0], "broken_at": [0.3, 0.2, np.nan]})
    wc = worst_case([a, b])
    assert wc["broken_at"].tolist()[:2] == [0.1, 0.2] and np.isnan(wc["broken_at"].iloc[2])


def test_killed_run_resumes_to_identical_curves(full_run, tmp_path):
    out_full, _ = full_run
    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        run_sweep(_cfg(out), on_step=stop_after(3))
    con = sqlite3.connect(out / "store.sqlite")
    done_before = con.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
    con.close()
    assert done_before == 3
    summaries = run_sweep(_cfg(out))
    assert summaries[0].resumed
    a = pd.read_csv(out_full / "curves.csv")
    b = pd.read_csv(out / "curves.csv")
    pd.testing.assert_frame_equal(a, b)
    # a second rerun recomputes nothing
    con = sqlite3.connect(out / "store.sqlite")
    secs = con.execute("SELECT SUM(seconds) FROM steps").fetchone()[0]
    con.close()
    run_sweep(_cfg(out))
    con = sqlite3.connect(out / "store.sqlite")
    assert con.execute("SELECT SUM(seconds) FROM steps").fetchone()[0] == secs
    con.close()


def test_checkpoint_reused_between_sweeps(full_run):
    from robustbench_er.data.datasets import load_dataset
    from robustbench_er.engine.trained import get_or_train

    out, _ = full_run
    t = get_or_train("none", load_dataset("digits"), out=out, progress=False)
    assert t.reused


@pytest.mark.parametrize("text,expected", [
    ("0:0.4:0.1", [0.0, 0.1, 0.2, 0.3, 0.4]),
    ("0,8/255,16/255", [0.0, 8 / 255, 16 / 255]),
    ("0:0.4:0.025", [round(0.025 * i, 12) for i in range(17)]),
])
def test_parse_eps(text, expected):
    assert parse_eps(text) == pytest.approx(expected)


@pytest.mark.parametrize("grid,norm,msg", [
    ([0.0, -0.1], "Linf", ">= 0"),
    ([0.1, 0.05], "Linf", "ascending"),
    ([0.0, 0.1, 0.1], "Linf", "ascending"),
    ([0.0, 8.0], "Linf", "8/255"),
    ([], "Linf", "empty"),
])
def test_bad_grids(grid, norm, msg):
    with pytest.raises(UserInputError, match=msg):
        validate_grid(grid, norm)


def test_bad_inputs_change_nothing(tmp_path):
    for kw, msg in [
        (dict(defenses=["nonee"]), "Did you mean 'none'"),
        (dict(attacks=[AttackConfig("pgx")]), "Unknown attack"),
        (dict(dataset="digitz"), "Unknown dataset"),
        (dict(samples=100000), "samples must be between 1 and"),
        (dict(eps=[0.0, 2.0]), "8/255"),
        (dict(norm="L1"), "does not support the L1 norm"),
    ]:
        with pytest.raises(UserInputError, match=msg):
            run_sweep(_cfg(tmp_path, **kw))
    assert not (tmp_path / "store.sqlite").exists()


def test_attack_subsets_are_random_not_the_first_class():
    from robustbench_er.data.datasets import load_dataset

    data = load_dataset("mnist5k")
    ids = data.sample_ids(1000)
    assert sorted(ids.tolist()) == list(range(1000))  # the whole test split
    labels = data.y_test[ids[:100]]
    # the test split is stored by class; a prefix of the permutation must still cover them all
    assert len(set(labels.tolist())) == 10 and int(labels.bincount().max()) < 25
    assert (data.sample_ids(200)[:100] == ids[:100]).all()


def test_same_attack_twice_in_one_store_is_kept_apart(tmp_path):
    out = tmp_path / "twice"
    run_sweep(_cfg(out, attacks=[AttackConfig("fgsm")], samples=60))
    run_sweep(_cfg(out, attacks=[AttackConfig("fgsm")], samples=80))
    curves = pd.read_csv(out / "curves.csv")
    labels = set(curves["attack"])
    assert "fgsm" in labels and any(lab.startswith("fgsm#") for lab in labels)
    assert len(curves[curves.attack == "fgsm"]) == len(GRID)


def test_headline_of_one_norm_leaves_the_others_alone(tmp_path):
    out = tmp_path / "norms"
    run_sweep(_cfg(out, attacks=[AttackConfig("fgsm")], samples=40, headline=0.2))
    run_sweep(_cfg(out, attacks=[AttackConfig("fgsm")], samples=40, norm="L2", eps=[0.0, 0.5, 1.0], headline=1.0))
    board = pd.read_csv(out / "leaderboard.csv").set_index("norm")
    assert board.loc["L2", "headline_eps"] == 1.0
    assert board.loc["Linf", "headline_eps"] == 0.2  # what the Linf sweep asked for, not L2's 1.0


def test_plan_is_pure_and_training_is_its_own_step(full_run, tmp_path):
    from robustbench_er.engine.sweep import plan, prepare, train_defenses

    out, summaries = full_run
    cfg = _cfg(out)
    prep = prepare(cfg)  # checks and loads the data only
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and not p.name.endswith(("-wal", "-shm"))}
    trained = train_defenses(cfg, prep)  # reuses the finished checkpoint
    cells = plan(cfg, prep, trained)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and not p.name.endswith(("-wal", "-shm"))}
    assert before == after  # planning (and reusing a checkpoint) writes nothing
    assert [c.cell_id for c in cells] == [s.cell_id for s in summaries]  # the cells the sweep ran
    assert [c.attack_cfg.name for c in cells] == ["pgd", "fgsm"]
    with pytest.raises(UserInputError, match="samples"):
        prepare(_cfg(tmp_path / "bad", samples=10_000_000))
    assert not (tmp_path / "bad").exists()  # a bad input found before anything is written


def test_another_batch_size_gets_cells_of_its_own(tmp_path):
    """A random-start attack's noise is drawn per batch, so its outcomes follow the batch size:
    a sweep with another batch size is keyed on it, and the default keeps its ids."""
    from robustbench_er.engine.spec import DEFAULT_BATCH_SIZE
    from robustbench_er.engine.sweep import plan_sweep
    from robustbench_er.jobs.sweep import run_sweep
    from robustbench_er.store.results import Store

    def cfg(**kw):
        return SweepConfig(dataset="digits", defenses=["none"], attacks=[AttackConfig("pgd", {"steps": 5})],
                           eps=[0.0, 0.1, 0.15, 0.2], samples=100, out=tmp_path, progress=False, mode="independent",
                           search="ascending", defense_overrides={"none": {"epochs": 1}}, **kw)

    ids = {b: plan_sweep(cfg(batch_size=b))[0].cell_id for b in (16, 64, DEFAULT_BATCH_SIZE)}
    assert len(set(ids.values())) == 3
    assert plan_sweep(cfg())[0].cell_id == ids[DEFAULT_BATCH_SIZE]  # unchanged for the default
    got = {b: run_sweep(cfg(batch_size=b))[0].robust for b in (16, 64)}
    store = Store(tmp_path)
    try:
        assert {ids[16], ids[64]} <= set(store.outcomes_frame()["cell_id"])  # both kept, neither reused
    finally:
        store.close()
    assert got[16][0.0] == got[64][0.0] and got[16][0.2] <= got[16][0.1]
