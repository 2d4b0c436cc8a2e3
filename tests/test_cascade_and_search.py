"""The cascade (each attack on the points the earlier ones left standing), headlines that never
mix sample sets, and the per-sample grid search (bisection) with its resume."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest
from interrupt import Interrupted, stop_after

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.metrics import curve
from robustbench_er.engine.search import bisect_state
from robustbench_er.engine.spec import AttackConfig, SweepConfig
from robustbench_er.jobs.sweep import run_sweep
from robustbench_er.store.results import Store

GRID = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3]


def _cfg(out, **kw):
    base = dict(dataset="digits", defenses=["none"], eps=GRID, samples=120, out=out, progress=False,
                attacks=[AttackConfig("fgsm"), AttackConfig("pgd", {"steps": 10})])
    base.update(kw)
    return SweepConfig(**base)


def _tables(out):
    con = sqlite3.connect(out / "store.sqlite")
    cells = pd.read_sql_query("SELECT * FROM cells ORDER BY created", con)
    outcomes = pd.read_sql_query("SELECT * FROM outcomes", con)
    steps = pd.read_sql_query("SELECT * FROM steps", con)
    con.close()
    return cells, outcomes, steps


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    out = tmp_path_factory.mktemp("cascade")
    run_sweep(_cfg(out, search="ascending"))
    return out


def test_cascade_stage_attacks_only_what_earlier_stages_left(cascade):
    cells, outcomes, steps = _tables(cascade)
    first, second = cells["cell_id"].tolist()
    spec2 = json.loads(cells.iloc[1]["spec"])
    assert spec2["upstream"] == first and spec2["mode"] == "cascade"
    o1 = outcomes[outcomes.cell_id == first].set_index("sample_id")
    o2 = outcomes[outcomes.cell_id == second].set_index("sample_id")
    s2 = steps[steps.cell_id == second].sort_values("eps_index")
    for i, e in enumerate(GRID):
        # PGD at eps e attacks exactly what FGSM left standing there, less what PGD broke below e
        by_pgd_below = (o2["broken_by"] == "pgd") & (o2["broken_at"] < e - 1e-9)
        standing = int((o1["clean_correct"].astype(bool) & (o1["broken_at"].fillna(np.inf) > e + 1e-9)
                        & ~by_pgd_below).sum())
        assert s2["attacked"].iloc[i] == standing
    # cumulative: a point broken by the first stage stays broken, at the same or a smaller eps
    b1, b2 = o1["broken_at"].fillna(np.inf), o2["broken_at"].fillna(np.inf)
    assert (b2 <= b1).all() and (b2 < b1).sum() > 0  # and PGD breaks points FGSM could not
    assert set(o2["broken_by"].dropna()) == {"fgsm", "pgd"}


def test_cascade_headline_is_the_last_stage_and_never_above_any_attack(cascade):
    board = pd.read_csv(cascade / "leaderboard.csv").iloc[0]
    curves = pd.read_csv(cascade / "curves.csv")
    at = curves[curves.eps == board["headline_eps"]].set_index("attack")["robust_acc"]
    assert board["robust_acc"] == pytest.approx(at["pgd"])  # after the last stage
    assert board["robust_acc"] <= at.min() + 1e-12
    assert board["n"] == 120
    md = (cascade / "leaderboard.md").read_text()
    assert "after fgsm" in md and "after pgd" in md


def test_cascade_refuses_a_stage_on_more_points_than_the_one_before(tmp_path):
    with pytest.raises(UserInputError, match="cascade mode"):
        run_sweep(_cfg(tmp_path, attacks=[AttackConfig("fgsm", samples=50), AttackConfig("pgd")]))
    assert not (tmp_path / "store.sqlite").exists()


def test_headline_on_the_points_a_stronger_subset_attack_ran_on(tmp_path):
    """A weak attack on every point and a strong one on a subset: the headline must use the subset."""
    out = tmp_path / "subset"
    run_sweep(_cfg(out, mode="independent", attacks=[AttackConfig("pgd", {"steps": 1, "random_start": False}),
                                                     AttackConfig("pgd", {"steps": 20}, samples=40, label="pgd20")]))
    curves = pd.read_csv(out / "curves.csv")
    hl = 0.1
    store = Store(out)
    try:
        from robustbench_er.report.tables import build_tables

        t = build_tables(store, headline=hl)
    finally:
        store.close()
    row = t.board.iloc[0]
    per = t.attacks.set_index("attack")["robust_acc"]
    assert per["pgd"] > per["pgd20"] + 0.05  # the subset attack is clearly stronger here
    assert row["robust_acc"] <= per["pgd20"] + 1e-12 and row["robust_acc"] <= per["pgd"] + 1e-12
    assert row["n"] == 40 and "40 points" in row["sample_note"]
    wc = curves[curves.attack == "worst-case"].set_index("eps")
    assert wc.loc[0.1, "n"] == 40


def test_bisection_resolves_every_point_and_tracks_ascending(tmp_path):
    attacks = [AttackConfig("pgd", {"steps": 10})]
    grid = [round(0.025 * i, 12) for i in range(17)]
    run_sweep(_cfg(tmp_path / "asc", attacks=attacks, search="ascending", eps=grid))
    run_sweep(_cfg(tmp_path / "bis", attacks=attacks, search="bisect", eps=grid))
    asc = pd.read_csv(tmp_path / "asc" / "curves.csv").query("attack == 'pgd'").set_index("eps")["robust_acc"]
    bis = pd.read_csv(tmp_path / "bis" / "curves.csv").query("attack == 'pgd'").set_index("eps")["robust_acc"]
    assert (bis - asc).max() <= 0.05, (asc, bis)  # never clearly weaker than the ascending sweep
    cells, outcomes, steps = _tables(tmp_path / "bis")
    assert len(steps) <= 8  # about log2(17) rounds and a retry, not 17 epsilons
    out = outcomes.sort_values("sample_id")
    lo, hi = bisect_state(out, grid)
    cc = out["clean_correct"].astype(bool).to_numpy()
    assert ((hi - lo)[cc] <= 1).all()
    assert set(out["broken_at"].dropna()) <= set(grid)  # verified examples counted at grid epsilons


def test_bisection_resumes_at_its_round_with_identical_results(tmp_path):
    full = tmp_path / "full"
    run_sweep(_cfg(full))
    part = tmp_path / "part"
    with pytest.raises(Interrupted):
        run_sweep(_cfg(part), on_step=stop_after(2))
    run_sweep(_cfg(part))
    a = _tables(full)[1].drop(columns="cell_id").sort_values(["sample_id", "broken_by"]).reset_index(drop=True)
    b = _tables(part)[1].drop(columns="cell_id").sort_values(["sample_id", "broken_by"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(pd.read_csv(full / "curves.csv"), pd.read_csv(part / "curves.csv"))


def test_l2_rms_unit_converts_and_is_recorded(tmp_path):
    rms = [0.0, 0.05, 0.1]
    run_sweep(_cfg(tmp_path, norm="L2", eps=rms, l2_unit="rms", headline=0.1, attacks=[AttackConfig("pgd")]))
    curves = pd.read_csv(tmp_path / "curves.csv")
    pgd = curves[curves.attack == "pgd"].sort_values("eps")
    assert pgd["eps"].tolist() == pytest.approx([e * 8.0 for e in rms])  # digits: 64 pixels, sqrt = 8
    assert pgd["eps_in_unit"].tolist() == pytest.approx(rms) and set(pgd["eps_unit"]) == {"rms"}
    board = pd.read_csv(tmp_path / "leaderboard.csv").iloc[0]
    assert board["headline_eps"] == pytest.approx(0.8) and board["headline_in_unit"] == pytest.approx(0.1)
    with pytest.raises(UserInputError, match="L2"):
        run_sweep(_cfg(tmp_path / "x", l2_unit="rms"))


def test_l2_mse_unit_is_the_mean_squared_distortion_per_pixel(tmp_path):
    """MSE (L2^2 / pixels), the reading of the C&W bounds of Li et al. 2021: L2 = sqrt(mse * d)."""
    mse = [0.0, 0.01, 0.04]
    run_sweep(_cfg(tmp_path, norm="L2", eps=mse, l2_unit="mse", headline=0.04, attacks=[AttackConfig("pgd")]))
    pgd = pd.read_csv(tmp_path / "curves.csv").query("attack == 'pgd'").sort_values("eps")
    assert pgd["eps"].tolist() == pytest.approx([(e * 64) ** 0.5 for e in mse])  # digits: 64 pixels
    assert pgd["eps_in_unit"].tolist() == pytest.approx(mse) and set(pgd["eps_unit"]) == {"mse"}
    board = pd.read_csv(tmp_path / "leaderboard.csv").iloc[0]
    assert board["headline_eps"] == pytest.approx(1.6) and board["headline_in_unit"] == pytest.approx(0.04)


def test_curve_reads_cumulative_outcomes():
    out = pd.DataFrame({"sample_id": [1, 2, 3], "clean_correct": [1, 1, 0], "broken_at": [0.1, np.nan, np.nan]})
    assert curve(out, [0.0, 0.1]).tolist() == pytest.approx([2 / 3, 1 / 3])


def test_a_break_at_a_small_eps_carries_to_every_larger_eps(tmp_path):
    """A planted pair: a strong attack that only checks a small eps, a weak one that only checks
    larger ones. The worst case at the larger eps counts the strong attack's breaks too."""
    out = tmp_path / "carry"
    # escalation off: the weak attack's flags would add stages to the worst case computed here
    run_sweep(_cfg(out, mode="independent", escalate=False,
                   attacks=[AttackConfig("pgd", {"steps": 20}, eps=[0.05], label="strong"),
                            AttackConfig("pgd", {"steps": 1, "rel_stepsize": 0.01, "random_start": False},
                                         eps=[0.1, 0.2], label="weak")]))
    cells, outcomes, _ = _tables(out)
    by = {lab: outcomes[outcomes.cell_id == cid].set_index("sample_id").sort_index()
          for cid, lab in zip(cells["cell_id"], cells["attack_label"])}
    strong, weak = by["strong"], by["weak"]
    ok = strong["clean_correct"].astype(bool)
    curves = pd.read_csv(out / "curves.csv")
    wc = curves[curves.attack == "worst-case"].set_index("eps")["robust_acc"]
    for e in (0.1, 0.2):
        union = (strong["broken_at"].fillna(np.inf) <= e + 1e-9) | (weak["broken_at"].fillna(np.inf) <= e + 1e-9)
        expected = float((ok & ~union).mean())
        weak_alone = float(curve(weak.reset_index(), [e])[0])
        assert wc.loc[e] == pytest.approx(expected)
        assert expected < weak_alone - 0.05  # the strong attack's breaks at 0.05 really moved it
