"""RayS (attacks/rays.py) on the tiny undefended digits model: real runs, real numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustbench_er.attacks.rays import RayS
from robustbench_er.core.errors import UserInputError
from robustbench_er.core.norms import perturbation_norm
from robustbench_er.models.pgd import pgd
from robustbench_er.plugins.attack import verify
from robustbench_er.plugins.defense import DefendedModel
from robustbench_er.plugins.registry import get_attack

N = 32
BUDGET = 2000


def robust_acc(model, x, y, x_adv, eps: float) -> float:
    clean = model.predict_label(x) == y
    ok, _ = verify(model, x, x_adv, y, "Linf", torch.full((len(x),), eps))
    return float((clean & ~ok).float().mean())


@pytest.fixture(scope="module")
def batch(digits):
    return digits.x_test[:N], digits.y_test[:N]


@pytest.fixture(scope="module")
def full_run(none_digits, batch):
    x, y = batch
    attack = RayS(query_budget=BUDGET)
    x_adv = attack.run(none_digits.model, x, y)
    return attack, x_adv


def test_registered_as_hard_label_min_attack():
    cls = get_attack("rays")
    assert cls is RayS
    assert (cls.kind, cls.access, cls.norms) == ("min", "decision", ("Linf",))


def test_distance_never_increases_and_budget_holds(full_run):
    attack, _ = full_run
    q, d = attack.last_history
    assert q.shape == d.shape and q.shape[1] == N and q.shape[0] > 10
    assert bool((d[1:] <= d[:-1]).all()), "a sample's best distance went up"
    assert bool((q[1:] >= q[:-1]).all())
    assert torch.equal(q[-1].long(), attack.last_queries)
    assert int(attack.last_queries.max()) <= BUDGET
    assert torch.equal(d[-1], attack.last_distances.float())
    # the search really improves on the first ray it finds (distance 1)
    finite = torch.isfinite(attack.last_distances)
    assert float(attack.last_distances[finite].max()) < 0.5


def test_returned_points_are_adversarial_at_their_distance(none_digits, batch, full_run):
    attack, x_adv = full_run
    x, y = batch
    d = attack.last_distances
    found = torch.isfinite(d)
    assert int(found.sum()) >= N - 1
    norms = perturbation_norm(x_adv - x, "Linf")
    assert bool((norms[found] <= d[found] + 1e-6).all())
    assert torch.equal(x_adv[~found], x[~found])
    ok, _ = verify(none_digits.model, x[found], x_adv[found], y[found], "Linf", d[found])
    assert bool(ok.all())


def test_not_stronger_than_white_box_pgd_and_breaks_at_large_eps(none_digits, batch, full_run):
    _, x_adv = full_run
    x, y = batch
    model = none_digits.model
    for eps in (0.1, 0.2, 0.3):
        x_pgd = pgd(model, x, y, eps, steps=40, generator=torch.Generator().manual_seed(0))
        acc_pgd = robust_acc(model, x, y, x_pgd, eps)
        acc_rays = robust_acc(model, x, y, x_adv, eps)
        assert acc_rays >= acc_pgd - 0.05, (eps, acc_rays, acc_pgd)
        # a hard-label attack is weaker, but not useless: within 20 points of PGD
        assert acc_rays <= acc_pgd + 0.20, (eps, acc_rays, acc_pgd)
    assert robust_acc(model, x, y, x_adv, 0.6) < 0.10


def test_target_eps_stops_early(none_digits, batch, full_run):
    full, _ = full_run
    x, y = batch
    early = RayS(query_budget=BUDGET, target_eps=0.3)
    early.run(none_digits.model, x, y)
    reached = early.last_distances <= 0.3
    assert int(reached.sum()) >= N - 1
    assert int(early.last_queries.sum()) < int(full.last_queries.sum()) // 2
    assert bool((early.last_queries <= full.last_queries).all())


class _NoisyNet(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.inner = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out + 0.5 * torch.randn_like(out)


def test_randomized_model_counts_every_eot_pass(none_digits, batch):
    x, y = batch
    base = none_digits.model
    model = DefendedModel(_NoisyNet(base.net), base.classes, randomized=True).eval()
    attack = RayS(query_budget=301, eot=3)
    attack.run(model, x[:8], y[:8])
    q = attack.last_queries
    assert bool((q % 3 == 0).all())
    assert int(q.max()) <= 301 and int(q.max()) >= 297  # randomized: no stop when stuck


@pytest.mark.parametrize("kwargs", [dict(query_budget=0), dict(query_budget=-5), dict(tol=0.0),
                                    dict(target_eps=-0.1), dict(norm="L2"), dict(steps=10)])
def test_bad_input_raises(kwargs):
    with pytest.raises(UserInputError):
        RayS(**kwargs)
