"""Each sanity check fires on a model or attack built to trigger it and stays silent on the
undefended digits model with a working attack (robustbench_er/checks.py)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_er import checks
from robustbench_er.attack import Attack, AttackParams
from robustbench_er.defense import DefendedModel, Defense, HParams
from robustbench_er.pgd import pgd
from robustbench_er.registry import ATTACKS, DEFENSES, register_attack, register_defense
from robustbench_er.store import Store
from robustbench_er.sweep import AttackConfig, SweepConfig, run_sweep

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


# ---- cross-attack checks on curves --------------------------------------------------------

def test_single_step_stronger():
    g = [0.0, 0.1, 0.2]
    curves = {"pgd": (g, np.array([0.9, 0.5, 0.2])), "fgsm": (g, np.array([0.9, 0.4, 0.3]))}
    flags = checks.cross_attack_flags(curves, {"pgd": "gradient", "fgsm": "gradient"},
                                      {"pgd": "fixed", "fgsm": "fixed"})
    assert set(flags) == {"single-step-stronger"} and "eps 0.1" in flags["single-step-stronger"]
    curves["fgsm"] = (g, np.array([0.9, 0.6, 0.3]))
    assert checks.cross_attack_flags(curves, {}, {}) == {}


def test_black_box_stronger():
    g = [0.0, 0.1, 0.2]
    acc = {"pgd": (g, np.array([0.9, 0.5, 0.2])), "rays": (g, np.array([0.9, 0.3, 0.1])),
           "fgsm": (g, np.array([0.9, 0.7, 0.6]))}
    access = {"pgd": "gradient", "rays": "decision", "fgsm": "gradient"}
    kinds = {"pgd": "fixed", "rays": "min", "fgsm": "fixed"}
    flags = checks.cross_attack_flags(acc, access, kinds)
    assert set(flags) == {"black-box-stronger"} and flags["black-box-stronger"].startswith("rays")
    # beating only the single-step attack is expected of a black-box attack
    acc["rays"] = (g, np.array([0.9, 0.6, 0.3]))
    assert checks.cross_attack_flags(acc, access, kinds) == {}
    # recognised by label too (an adapter that does not declare its access)
    acc2 = {"pgd": (g, np.array([0.9, 0.5, 0.2])), "square-5000": (g, np.array([0.9, 0.5, 0.1]))}
    assert "black-box-stronger" in checks.cross_attack_flags(acc2, {}, {})


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
    cfg = SweepConfig(dataset="digits", defenses=["none"], eps=GRID, samples=64, out=out, progress=False,
                      attacks=[AttackConfig("pgd"), AttackConfig("fgsm"), AttackConfig("test-identity"),
                               AttackConfig("test-warner")])
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
    assert f["autoattack-check"] == ("it seems that the output is a probability distribution, please return logits")
    assert "autoattack-check" not in flags["pgd"]


def test_fgsm_not_stronger_than_pgd_in_the_leaderboard(none_sweep):
    import pandas as pd

    out, _ = none_sweep
    board = pd.read_csv(out / "leaderboard.csv")
    row = board.iloc[0]
    assert "single-step-stronger" not in str(row["flags"])
    assert "noise-stronger" in str(row["flags"])  # the group's flags include the weak attack's


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
