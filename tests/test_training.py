"""The core training helpers (robustbench_er/models/training.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustbench_er.models.training import adversarial_batch, eval_mode


def test_eval_mode_restores_every_submodule_also_on_error():
    a = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    b = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    a.train()
    b.train()
    b[1].eval()  # a frozen BatchNorm inside a training model keeps its mode
    with eval_mode(a, b):
        assert not any(m.training for m in (*a.modules(), *b.modules()))
    assert all(m.training for m in a.modules())
    assert b.training and b[0].training and not b[1].training
    with pytest.raises(RuntimeError, match="boom"), eval_mode(a):
        raise RuntimeError("boom")
    assert all(m.training for m in a.modules())


def test_adversarial_batch_stays_in_ball_and_restores_mode(none_digits, digits):
    model = none_digits.model
    x, y = digits.x_test[:32], digits.y_test[:32]
    model.train()
    try:
        torch.manual_seed(0)
        x_adv = adversarial_batch(model, x, y, eps=0.2, steps=5, step_size=0.05)
        assert model.training
    finally:
        model.eval()
    assert x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= 0.2 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    with torch.no_grad():
        acc_adv = float((model.predict(x_adv).argmax(1) == y).float().mean())
        acc = float((model.predict(x).argmax(1) == y).float().mean())
    assert acc_adv < acc  # the training attack does attack
