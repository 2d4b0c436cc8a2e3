"""Long stages say where they are: AutoAttack per component with the points left and an ETA, and
the cell's bar counts its steps against a known bound."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from robustbench_er.data.datasets import load_dataset
from robustbench_er.engine.spec import Cell
from robustbench_er.engine.sweep import step_bound
from robustbench_er.models.defended import DefendedModel
from robustbench_er.plugins.registry import get_attack

LINE = re.compile(r"eps 0\.05: (APGD-CE|APGD-T|FAB-T|SQUARE) \((\d)/4\), (\d+) of (\d+) points left, ETA (\S+)")


@pytest.fixture(scope="module")
def model_and_points():
    d = load_dataset("digits")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(d.x_train), d.y_train).backward()
        opt.step()
    return DefendedModel(net, 10).eval(), d.x_test[:40], d.y_test[:40]


def test_autoattack_reports_each_component_with_points_left_and_an_eta(model_and_points):
    model, x, y = model_and_points
    attack = get_attack("autoattack")(norm="Linf", n_iter=5)
    lines: list[str] = []
    attack.progress = lines.append
    x_adv = attack.run(attack.target(model), x, y, torch.full((40,), 0.05), generator=torch.Generator().manual_seed(0))
    parsed = [LINE.match(s) for s in lines]
    assert lines and all(parsed), lines
    components = [m.group(1) for m in parsed if m]
    assert components[0] == "APGD-CE" and sorted(set(components), key=components.index) == \
        ["APGD-CE", "APGD-T", "FAB-T", "SQUARE"]
    left = [int(m.group(3)) for m in parsed if m]
    assert left == sorted(left, reverse=True)  # points only ever break
    standing = int((model.predict(x_adv).argmax(1) == y).sum())
    assert left[-1] == standing and left[0] <= int((model.predict(x).argmax(1) == y).sum())
    assert any(m.group(5) != "?" for m in parsed if m)  # an ETA once a batch has been timed
    assert attack.progress is not None and "progress" not in {k for k, v in attack.__getstate__().items() if v}


@pytest.mark.parametrize("search, grid, retry, bound", [
    ("ascending", [0, 0.1, 0.2, 0.3], False, 4),
    ("once", [0, 0.1, 0.2], False, 1),
    ("bisect", [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], False, 4),  # ceil(log2(10))
    ("bisect", [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], True, 5),
])
def test_a_cells_bar_counts_steps_against_a_bound(search, grid, retry, bound):
    cell = Cell.__new__(Cell)
    cell.search, cell.grid, cell.spec = search, grid, {"retry": retry}
    assert step_bound(cell) == bound
