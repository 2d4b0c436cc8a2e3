"""Each sanity check fires on a model or attack built to trigger it and stays silent on the
undefended digits model with a working attack (robustbench_er/engine/checks.py)."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_er.engine import checks
from robustbench_er.engine.spec import AttackConfig, SweepConfig
from robustbench_er.jobs.sweep import run_sweep
from robustbench_er.models.pgd import pgd
from robustbench_er.plugins.attack import Attack, AttackParams
from robustbench_er.plugins.defense import DefendedModel, Defense, HParams
from robustbench_er.plugins.registry import ATTACKS, DEFENSES, register_attack, register_defense
from robustbench_er.store.results import Store

GRID = [0.0, 0.1, 0.3, 0.6]


# ---- model-level checks on toy nets wrapped in DefendedModel ---------------------------------

class _Wrap(nn.Module):
    """The trained undefended net with a modified forward."""

    def __init__(self, net: nn.Module, mode: str) -> None:
        super().__init__()
        self.inner = net
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "softmax":
            return F.softmax(self.inner(x), dim=1)
        if self.mode == "random":
            out = self.inner(x)
            return out + torch.randn_like(out)
        if self.mode == "detach":
            return self.inner(x.detach())
        if self.mode == "round":  # quantisation: piecewise constant, zero gradient almost everywhere
            return self.inner(torch.round(x * 4) / 4)
        if self.mode == "sqrt":  # gamma correction: infinite slope at the many exact zeros of digits
            return self.inner(torch.sqrt(x))
        return self.inner(x)


def _flags(none_digits, digits, mode: str, **kw: Any) -> dict[str, str]:
    base = none_digits.model
    model = DefendedModel(_Wrap(base.net, mode), base.classes, **kw).eval()
    return checks.model_flags(model, digits.x_test[:64], digits.y_test[:64], key=f"test-{mode}-{sorted(kw)}")


def test_model_flags_silent_on_undefended(none_digits, digits):
    assert _flags(none_digits, digits, "plain") == {}
    assert checks.model_flags(none_digits.model, digits.x_test[:64], digits.y_test[:64], "test-none") == {}


def test_probabilities(none_digits, digits):
    flags = _flags(none_digits, digits, "softmax")
    assert set(flags) == {"probabilities"}
    # declared as probabilities, the adapter turns them into log-probabilities: no flag
    assert "probabilities" not in _flags(none_digits, digits, "softmax", output="probs")


def test_nondeterministic(none_digits, digits):
    assert "nondeterministic" in _flags(none_digits, digits, "random")
    assert "nondeterministic" not in _flags(none_digits, digits, "random", randomized=True, n_passes=5)


@pytest.mark.parametrize("mode", ["detach", "round"])
def test_zero_gradients(none_digits, digits, mode):
    flags = _flags(none_digits, digits, mode)
    assert "zero-gradients" in flags and "nan-gradients" not in flags


def test_nan_gradients(none_digits, digits):
    flags = _flags(none_digits, digits, "sqrt")
    assert "nan-gradients" in flags


def test_model_checks_leave_global_rng_alone(none_digits, digits):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _flags(none_digits, digits, "random", randomized=True, n_passes=3)
    assert torch.equal(torch.rand(3), expected)


# ---- cross-attack checks: exact McNemar on per-sample outcomes ------------------------------

def _run(broken_at: list[float], *, access: str = "gradient", kind: str = "fixed", single_step: bool = False,
         grid: list[float] | None = None, ids: list[int] | None = None) -> checks.AttackRun:
    """Outcomes of an attack: every point clean-correct; NaN = never broken."""
    ids = list(range(len(broken_at))) if ids is None else ids
    frame = pd.DataFrame({"sample_id": ids, "clean_correct": True, "broken_at": broken_at})
    return checks.AttackRun(frame, [0.0, 0.1, 0.2] if grid is None else grid, access, kind, single_step)


def _breaks(n: int, at: dict[int, float]) -> list[float]:
    return [at.get(i, math.nan) for i in range(n)]


def test_mcnemar_p_is_the_exact_binomial_tail():
    assert checks.mcnemar_p(0, 0) == 1.0
    assert checks.mcnemar_p(5, 0) == pytest.approx(1 / 32)
    assert checks.mcnemar_p(9, 1) == pytest.approx(11 / 1024)
    assert checks.mcnemar_p(1, 9) == pytest.approx(1 - 1 / 1024)
    assert checks.mcnemar_p(3, 3) == pytest.approx(42 / 64)


def test_one_sample_difference_does_not_flag():
    # at n = 200 the black-box attack leaves 76.0% vs PGD's 79.0%: 6 discordant points, all its way
    n = 200
    pgd_run = _run(_breaks(n, {i: 0.1 for i in range(42)}))
    sq = _run(_breaks(n, {i: 0.1 for i in range(40)} | {100: 0.1}), access="score")
    assert checks.cross_attack_flags({"pgd": pgd_run, "square": sq}) == {}  # 1 vs 3 discordant


def test_black_box_stronger_needs_significance_and_prints_b_c_p():
    n = 200
    pgd_run = _run(_breaks(n, {i: 0.1 for i in range(40)}))
    rays = _run(_breaks(n, {i: 0.05 for i in range(40)} | {i: 0.15 for i in range(100, 110)}),
                access="decision", kind="min")
    flags = checks.cross_attack_flags({"pgd": pgd_run, "rays": rays})
    detail = flags["black-box-stronger"]
    assert set(flags) == {"black-box-stronger"}
    assert "at eps 0.2" in detail and "b=10" in detail and "c=0" in detail and "p=0.00098" in detail
    # 5 of 10 extra breaks only: p = 1/32 < 0.05 still flags; 4 does not (p = 1/16)
    for extra, flagged in ((5, True), (4, False)):
        rays = _run(_breaks(n, {i: 0.1 for i in range(40)} | {i: 0.2 for i in range(100, 100 + extra)}),
                    access="score")
        assert ("black-box-stronger" in checks.cross_attack_flags({"pgd": pgd_run, "sq": rays})) == flagged
    # beating only the single-step attack is expected of a black-box attack
    fgsm = _run(_breaks(n, {i: 0.2 for i in range(10)}), single_step=True)
    assert checks.cross_attack_flags({"fgsm": fgsm, "rays": rays}) == {}


def test_single_step_stronger_from_attributes_not_names():
    n = 100
    it = _run(_breaks(n, {i: 0.2 for i in range(10)}))
    one = _run(_breaks(n, {i: 0.1 for i in range(30)}), single_step=True)
    # the labels say nothing: the declared attributes decide
    flags = checks.cross_attack_flags({"attack-a": it, "attack-b": one})
    assert set(flags) == {"single-step-stronger"}
    assert flags["single-step-stronger"].startswith("attack-b 0.700 < attack-a 1.000 at eps 0.1")
    # without the attribute both are iterative gradient attacks: nothing to compare
    assert checks.cross_attack_flags({"attack-a": it, "attack-b": _run(_breaks(n, {i: 0.1 for i in range(30)}))}) == {}


def test_cross_attack_uses_only_shared_points_and_shared_eps():
    # the black-box attack ran on points 0..49 only; there it breaks what PGD breaks
    pgd_run = _run(_breaks(200, {i: 0.1 for i in range(100, 200)}))
    sq = _run(_breaks(50, {}), access="score", grid=[0.1])
    assert checks.cross_attack_flags({"pgd": pgd_run, "sq": sq}) == {}
    sq2 = _run(_breaks(50, {i: 0.1 for i in range(20)}), access="score", grid=[0.1])
    flag = checks.cross_attack_flags({"pgd": pgd_run, "sq": sq2})["black-box-stronger"]
    assert "on 50 shared points" in flag and "eps 0.1" in flag
    # no shared eps (fixed grids that do not meet): nothing is compared
    sq3 = _run(_breaks(50, {i: 0.15 for i in range(20)}), access="score", grid=[0.15])
    assert checks.cross_attack_flags({"pgd": pgd_run, "sq": sq3}) == {}


# ---- cell-level checks from real sweeps ---------------------------------------------------

@dataclass
class _NoParams(AttackParams):
    pass


@pytest.fixture(scope="module")
def test_plugins():
    """Test-only plugins, registered for this module and unregistered afterwards."""
    names_a: list[str] = []
    names_d: list[str] = []

    @register_attack("test-identity")
    class Identity(Attack):
        """Returns the input: an attack that never works."""

        norms = ("Linf", "L2")
        kind = "fixed"
        access = "gradient"
        Params = _NoParams

        def run(self, model, x, y, eps, generator=None):
            return x.clone()

    names_a.append("test-identity")

    @register_attack("test-identity-min")
    class IdentityMin(Identity):
        kind = "min"

        def run(self, model, x, y, generator=None):
            return x.clone()

    names_a.append("test-identity-min")

    @register_attack("test-warner")
    class Warner(Attack):
        """A working PGD that also reports a warning, like the AutoAttack adapter."""

        norms = ("Linf",)
        kind = "fixed"
        access = "gradient"
        Params = _NoParams

        def run(self, model, x, y, eps, generator=None):
            self.warnings = ["it seems that the output is a probability distribution,\n please return logits"]
            return pgd(model, x, y, eps, steps=10, generator=generator)

    names_a.append("test-warner")

    class NoisyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.lin(x.flatten(1))
            return out + 5.0 * torch.randn_like(out)

    @register_defense("test-noisy")
    class Noisy(Defense):
        """A randomized model whose votes are mostly noise (no training)."""

        HParams = HParams
        presets = {"digits": {"quick": {}}}
        randomized = True

        def build(self, spec, hp):
            return NoisyNet()

        def train(self, model, data, hp, seed, progress=True):
            return {}

    names_d.append("test-noisy")
    yield
    for n in names_a:
        ATTACKS.unregister(n)
    for n in names_d:
        DEFENSES.unregister(n)


def _cell_flags(out: Path) -> dict[str, dict[str, str]]:
    store = Store(out)
    try:
        cells = store.cells_frame()
        flags = store.flags_frame()
    finally:
        store.close()
    label = dict(zip(cells["cell_id"], cells["attack_label"]))
    res: dict[str, dict[str, str]] = {lab: {} for lab in label.values()}
    for r in flags.itertuples():
        res[label[r.cell_id]][r.flag] = r.detail
    return res


@pytest.fixture(scope="module")
def none_sweep(test_plugins, tmp_path_factory):
    out = tmp_path_factory.mktemp("checks_none")
    # each attack on its own, ascending: the per-attack checks read each attack's own curve and
    # steps; escalation off, since the flags are the point here (tests/test_escalate.py runs remedies)
    cfg = SweepConfig(dataset="digits", defenses=["none"], eps=GRID, samples=64, out=out, progress=False,
                      attacks=[AttackConfig("pgd"), AttackConfig("fgsm"), AttackConfig("test-identity"),
                               AttackConfig("test-warner")], mode="independent", search="ascending",
                      escalate=False)
    run_sweep(cfg)
    return out, _cell_flags(out)


def test_cell_checks_silent_on_undefended_with_pgd(none_sweep):
    _, flags = none_sweep
    assert flags["pgd"] == {}


def test_weak_attack_is_flagged(none_sweep):
    _, flags = none_sweep
    f = flags["test-identity"]
    assert "no-break-at-large-eps" in f and "noise-stronger" in f
    assert "eps0-mismatch" not in f and "curve-rises" not in f
    # PGD breaks everything at eps 0.6, so the noise check is silent for it
    assert "noise-stronger" not in flags["pgd"]


def test_attack_warnings_become_a_flag(none_sweep):
    _, flags = none_sweep
    f = flags["test-warner"]
    assert f["attack-warnings"] == ("it seems that the output is a probability distribution, please return logits")
    assert "attack-warnings" not in flags["pgd"]


def test_fgsm_not_stronger_than_pgd_in_the_leaderboard(none_sweep):
    import json

    out, _ = none_sweep
    board = pd.read_csv(out / "leaderboard.csv")
    row = board.iloc[0]
    # FGSM is significantly stronger than the identity "attack" (declared iterative), not than PGD
    detail = str(row["flag_details"])
    assert "single-step-stronger: fgsm" in detail and "< test-identity 0.9" in detail
    assert "noise-stronger" in str(row["flags"])  # the group's flags include the weak attack's
    store = Store(out)
    try:
        cells = store.cells_frame()
        runs = {r.attack_label: checks.attack_run(store.outcomes(r.cell_id), json.loads(r.grid), json.loads(r.spec))
                for r in cells.itertuples() if r.attack_label in ("pgd", "fgsm")}
    finally:
        store.close()
    assert runs["fgsm"].single_step and not runs["pgd"].single_step
    assert checks.cross_attack_flags(runs) == {}


def test_store_tampering_is_caught(none_sweep, tmp_path):
    """A sample whose verdict was lost makes the outcomes disagree with the step counts."""
    out, _ = none_sweep
    shutil.copy(out / Store.FILENAME, tmp_path / Store.FILENAME)
    store = Store(tmp_path)
    try:
        cells = store.cells_frame()
        cid = cells[cells["attack_label"] == "pgd"]["cell_id"].iloc[0]
        outcomes = store.outcomes(cid)
        steps = checks.steps_frame(store, cid)
        assert checks.curve_flags(outcomes, steps, GRID, "fixed") == {}
        victim = int(outcomes[outcomes["broken_at"] == 0.1]["sample_id"].iloc[0])
        with store.transaction() as c:
            c.execute("UPDATE outcomes SET broken_at=NULL WHERE cell_id=? AND sample_id=?", (cid, victim))
        flags = checks.curve_flags(store.outcomes(cid), steps, GRID, "fixed")
        assert "curve-rises" in flags and "eps 0.1" in flags["curve-rises"]
        # a step replayed from another run: it attacked more points than survived the step before
        steps2 = steps.copy()
        steps2.loc[2, "attacked"] += 3
        flags = checks.curve_flags(outcomes, steps2, GRID, "fixed")
        assert flags["curve-rises"].startswith("rises: step 2")
    finally:
        store.close()


def test_randomized_defense_without_eot(test_plugins, tmp_path):
    cfg = SweepConfig(dataset="digits", defenses=["test-noisy"], eps=GRID, samples=64, out=tmp_path,
                      progress=False, eot=1, attacks=[AttackConfig("test-identity-min")])
    run_sweep(cfg)
    f = _cell_flags(tmp_path)["test-identity-min"]
    # a fresh single pass often disagrees with the clean verdict: "broken" at distance 0
    assert "eps0-mismatch" in f
    assert "randomized-no-eot" in f
    assert "nondeterministic" not in f


def test_randomized_defense_with_eot_is_not_flagged_for_it(test_plugins, tmp_path):
    cfg = SweepConfig(dataset="digits", defenses=["test-noisy"], eps=[0.0, 0.1], samples=16, out=tmp_path,
                      progress=False, eot=3, attacks=[AttackConfig("test-identity")])
    run_sweep(cfg)
    f = _cell_flags(tmp_path)["test-identity"]
    assert "randomized-no-eot" not in f


def test_attack_warnings_survive_a_rerun_with_more_work_and_a_report(test_plugins, tmp_path):
    """The warning an attack gave while computing a cell is stored with the cell: a rerun (which
    finds the cell cached and recomputes the checks), a rerun with more work added, and
    ``report`` all show the same flag with the same detail."""
    from robustbench_er.report.writers import write_reports

    def cfg(attacks):
        return SweepConfig(dataset="digits", defenses=["none"], eps=[0.0, 0.1, 0.2], samples=32, out=tmp_path,
                           progress=False, attacks=attacks, mode="independent", escalate=False)

    def board_details() -> str:
        return str(pd.read_csv(tmp_path / "leaderboard.csv").iloc[0]["flag_details"])

    run_sweep(cfg([AttackConfig("test-warner")]))
    first = _cell_flags(tmp_path)["test-warner"]["attack-warnings"]
    assert "probability distribution" in first and "attack-warnings: " + first in board_details()
    run_sweep(cfg([AttackConfig("test-warner"), AttackConfig("fgsm")]))  # cached cell + a new one
    assert _cell_flags(tmp_path)["test-warner"]["attack-warnings"] == first
    assert "attack-warnings: " + first in board_details()
    store = Store(tmp_path)
    try:
        cells = store.cells_frame()
        warner = cells.loc[cells["attack_label"] == "test-warner", "cell_id"].iloc[0]
        assert store.warnings(warner) == ["it seems that the output is a probability distribution,\n please return logits"]
        write_reports(store, tmp_path)
    finally:
        store.close()
    assert "attack-warnings: " + first in board_details()


def test_a_transfer_attack_stronger_than_white_box_is_its_own_flag():
    n = 200
    pgd_run = _run(_breaks(n, {i: 0.1 for i in range(40)}))
    moved = _run(_breaks(n, {i: 0.1 for i in range(60)}), access="none")
    hits = checks.cross_attack_hits({"pgd": pgd_run, "pgd transferred": moved})
    assert set(hits) == {"transfer-stronger"}
    weak, strong, hit = hits["transfer-stronger"]
    assert (weak, strong, hit["b"], hit["c"]) == ("pgd transferred", "pgd", 20, 0)
