"""Flags that act (robustbench_er/engine/escalate.py): planted models whose flags name a remedy get
it as a further cascade stage, the worst case includes it, and a clean model costs nothing extra."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_er import benchmark
from robustbench_er.engine.escalate import REMEDIES, remedy_names
from robustbench_er.engine.spec import AttackConfig, SweepConfig
from robustbench_er.jobs.sweep import run_sweep
from robustbench_er.plugins.defense import Defense, HParams
from robustbench_er.plugins.registry import ATTACKS, DEFENSES, register_defense
from robustbench_er.store.results import Store

GRID = "0:0.3:0.1"


class _Planted(nn.Module):
    """The trained undefended digits net behind a planted fault."""

    def __init__(self, net: nn.Module, fault: str) -> None:
        super().__init__()
        self.net = net
        self.fault = fault

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fault == "quantized":  # piecewise constant: zero input gradients almost everywhere
            return self.net(torch.round(x * 2) / 2)
        if self.fault == "softmax":  # probabilities: a saturated cross-entropy
            return F.softmax(8 * self.net(x), dim=1)
        if self.fault == "noise":  # randomness not declared
            out = self.net(x)
            return out + 2.0 * torch.randn_like(out)
        return self.net(x)


def _cells(out: Path) -> pd.DataFrame:
    store = Store(out)
    try:
        cells = store.cells_frame()
    finally:
        store.close()
    return cells.assign(spec=[json.loads(s) for s in cells["spec"]])


def _run(none_digits, tmp_path: Path, fault: str, samples: int = 60, eps: str = GRID, **kw):
    out = tmp_path / fault
    result = benchmark(_Planted(none_digits.model, fault), dataset="digits", attacks="pgd(steps=10)", eps=eps,
                       samples=samples, out=out, name=fault, eot=4, **kw)
    return result, _cells(out)


def test_quantized_input_is_escalated_to_black_box_attacks(none_digits, tmp_path):
    result, cells = _run(none_digits, tmp_path, "quantized", samples=30, eps="0,0.15,0.3")
    row = result.leaderboard.iloc[0]
    assert "zero-gradients" in row["flags"].split(";")
    escalated = cells[[bool(s.get("escalated")) for s in cells["spec"]]]
    assert {"square", "rays"} <= set(escalated["attack"])
    assert all("zero-gradients" in s["escalated"] for s in escalated["spec"])
    assert "after square (escalated:" in row["escalated"]
    curves = result.curves
    pgd = curves[(curves["attack"] == "pgd(steps=10)") & (curves["eps"] == 0.3)]["robust_acc"].iloc[0]
    # the worst case comes from the escalated black-box stages and is far below PGD's
    assert row["robust_acc"] <= pgd - 0.2
    assert "zero-gradients" not in str(row["flags_open"] or "")
    assert "[remedied by " in row["flag_details"]


def test_no_escalate_keeps_the_flag_open_and_adds_nothing(none_digits, tmp_path):
    result, cells = _run(none_digits, tmp_path, "quantized", escalate=False)
    row = result.leaderboard.iloc[0]
    assert len(cells) == 1
    assert "zero-gradients" in row["flags_open"].split(";")
    assert not row["escalated"] or pd.isna(row["escalated"])


def test_softmax_output_gets_the_margin_loss_on_log_probabilities(none_digits, tmp_path):
    result, cells = _run(none_digits, tmp_path, "softmax")
    row = result.leaderboard.iloc[0]
    assert "probabilities" in row["flags"].split(";")
    stages = cells.sort_values("cell_id").set_index("cell_id")
    (stage,) = [s for s in cells["spec"] if "probabilities" in (s.get("escalated") or ())]
    assert stage["attack"]["attack"] == "pgd" and stage["attack"]["params"]["loss"] == "log_margin"
    # the gradient remedy runs first, before any black-box one, straight after the flagged PGD
    assert stages.loc[stage["upstream"], "attack_label"] == "pgd(steps=10)"
    curves = result.curves[result.curves["eps"] > 0].pivot(index="eps", columns="attack", values="robust_acc")
    label = next(a for a in curves.columns if a.startswith("pgd (escalated: probabilities"))
    # the stage found examples PGD on the probabilities missed, and never loses any
    assert (curves[label] <= curves["pgd(steps=10)"]).all() and (curves[label] < curves["pgd(steps=10)"]).any()
    assert "probabilities" not in str(row["flags_open"] or "")


def test_undeclared_noise_is_rerun_with_eot(none_digits, tmp_path):
    result, cells = _run(none_digits, tmp_path, "noise")
    row = result.leaderboard.iloc[0]
    assert "nondeterministic" in row["flags"].split(";")
    (stage,) = [s for s in cells["spec"] if "nondeterministic" in (s.get("escalated") or ())]
    assert stage["attack"]["attack"] == "pgd" and stage["eot"] >= 4 and stage["attack"]["params"]["eot"] >= 4
    assert "nondeterministic" not in str(row["flags_open"] or "")


def test_clean_control_gets_no_escalation(none_digits, tmp_path):
    result, cells = _run(none_digits, tmp_path, "clean")
    row = result.leaderboard.iloc[0]
    assert not row["flags"] or pd.isna(row["flags"])
    assert len(cells) == 1


@pytest.fixture
def own_remedy(none_digits):
    net = none_digits.model.net

    @register_defense("test-own-remedy")
    class OwnRemedy(Defense):
        """The quantized digits net, declaring its own remedy for its masked gradients."""

        HParams = HParams
        presets = {"digits": {"quick": {}}}
        trainable = True
        remedies = {"zero-gradients": [{"attack": "square", "params": {"n_queries": 300, "p_init": 0.3}}]}

        def build(self, spec, hp):
            return _Planted(net, "quantized")

        def train(self, model, data, hp, seed, progress=True):
            return {}

    yield "test-own-remedy"
    DEFENSES.unregister("test-own-remedy")


def test_a_plugin_declares_its_own_remedy(own_remedy, tmp_path):
    assert remedy_names(own_remedy, "zero-gradients", "Linf")[0] == ("square", {"n_queries": 300, "p_init": 0.3})
    cfg = SweepConfig(dataset="digits", defenses=[own_remedy], attacks=[AttackConfig("pgd", {"steps": 5})],
                      eps=[0.0, 0.2], samples=30, out=tmp_path, progress=False)
    run_sweep(cfg)
    specs = list(_cells(tmp_path)["spec"])
    assert any(s["attack"]["attack"] == "square" and s["attack"]["params"]["n_queries"] == 300
               and "zero-gradients" in s.get("escalated", ()) for s in specs)


@pytest.mark.parametrize("flag", sorted(REMEDIES))
def test_every_declared_remedy_names_a_registered_attack_that_accepts_it(flag):
    # an attack declaring a remedy must accept its own parameters (checked as the sweep would)
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        params = (getattr(cls, "remedies", {}) or {}).get(flag)
        if params is not None:
            cls(norm=cls.norms[0], **params)


def test_dry_run_lists_what_a_flag_would_add_and_no_escalate_lists_nothing(none_digits, tmp_path):
    from robustbench_er.jobs.dryrun import plan_rows

    cfg = SweepConfig(dataset="digits", defenses=["none"], attacks=[AttackConfig("pgd", {"steps": 5})],
                      eps=[0.0, 0.2], samples=30, out=tmp_path, progress=False, escalate=False)
    run_sweep(cfg)  # trains the model: stages are planned on its weights
    assert "if" not in set(plan_rows(cfg)["job"])
    rows = plan_rows(dataclasses.replace(cfg, escalate=True))
    maybe = rows[rows["job"] == "if"]
    assert {"pgd (if flagged: probabilities)", "square (if flagged: attack-warnings)"} <= set(maybe["attack"])
    assert (maybe["evaluations"] > 0).all() and (maybe["state"] == "if flagged").all()
    assert len(_cells(tmp_path)) == 1  # nothing was run or written by the plan
