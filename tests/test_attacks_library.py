"""Attack plugins against a tiny undefended model: every registered attack breaks it, stays in
its ball and in [0, 1]; the AutoAttack adapter equals a direct pyautoattack call; bad input is
refused with UserInputError."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustbench_er.core.errors import UserInputError
from robustbench_er.plugins.attack import LibraryModel, draw_seed, verify
from robustbench_er.plugins.defense import DefendedModel
from robustbench_er.plugins.registry import get_attack, list_attacks

N = 64
BIG_EPS = {"Linf": 0.3, "L2": 2.0, "L1": 8.0}
#: few steps / queries so the whole file stays fast on a CPU
FAST = {
    "cw": {"steps": 100, "binary_search_steps": 5, "initial_const": 0.01},
    "ddn": {"steps": 50},
    "deepfool": {"steps": 20},
    "boundary": {"steps": 500, "init_directions": 100},
    "square": {"n_queries": 300},
    "fab": {"steps": 20},
    "pgd": {"steps": 20},
}
#: a decision-based walk converges slowly: with 500 steps its curve is judged at a larger L2 radius
MIN_EPS = {"boundary": 3.5}


def _cases() -> list[tuple[str, str]]:
    return [(name, norm) for name in list_attacks() for norm in get_attack(name).norms]


@pytest.fixture(scope="module")
def batch(digits, none_digits):
    model = none_digits.model.eval()
    return model, digits.x_test[:N], digits.y_test[:N]


@pytest.mark.parametrize(("name", "norm"), _cases())
def test_attack_breaks_undefended_model(batch, name: str, norm: str) -> None:
    model, x, y = batch
    attack = get_attack(name)(norm=norm, **FAST.get(name, {}))
    gen = torch.Generator().manual_seed(0)
    big = MIN_EPS.get(name, BIG_EPS[norm]) if attack.kind == "min" else BIG_EPS[norm]
    eps = torch.full((N,), big)
    if attack.kind == "fixed":
        x_adv = attack.run(model, x, y, eps, generator=gen)
    else:
        x_adv = attack.run(model, x, y, generator=gen)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert torch.isfinite(x_adv).all()
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    ok, norms = verify(model, x, x_adv, y, norm, None)
    if attack.kind == "fixed":
        # never outside its ball, whether the point was broken or not
        assert bool((norms <= eps * (1 + 1e-4) + 1e-5).all()), f"max {norm} norm {float(norms.max())}"
    else:
        # a minimization attack minimizes: its typical verified norm is well inside the big ball
        assert float(norms[ok].median()) < 0.75 * big
    broken = ok & (norms <= eps * (1 + 1e-4) + 1e-5)
    clean_ok = model.predict_label(x) == y
    robust = float((clean_ok & ~broken).float().mean())
    assert robust < 0.10, f"{name}/{norm}: robust accuracy {robust:.3f} at eps {big}"
    if attack.access in ("score", "decision"):
        assert attack.queries >= int(clean_ok.sum())


def test_autoattack_adapter_equals_direct_call(batch) -> None:
    """At a moderate eps, the same per-sample verdicts as a direct pyautoattack call with the same seed.

    APGD-CE + APGD-DLR (custom version) on 16 points: the standard version's APGD-T, FAB-T and
    Square take 20-30 s here; the standard version itself runs in the registry test above.
    """
    import pyautoattack

    model, x, y = batch
    x, y = x[:16], y[:16]
    eps = 0.08
    comps = ["apgd-ce", "apgd-dlr"]
    attack = get_attack("autoattack")(norm="Linf", version="custom", attacks=comps)
    x_ours = attack.run(model, x, y, torch.full((16,), eps), generator=torch.Generator().manual_seed(7))
    seed = draw_seed(torch.Generator().manual_seed(7))
    aa = pyautoattack.AutoAttack(model, attacks=comps, device="cpu", eps=eps, norm="Linf", seed=seed, version="custom")
    aa.verbose = False
    x_direct, _ = aa.run_standard_evaluation(x, y, batch_size=500)
    e = torch.full((16,), eps)
    ours, _ = verify(model, x, x_ours, y, "Linf", e)
    direct, _ = verify(model, x, x_direct, y, "Linf", e)
    clean_ok = model.predict_label(x) == y
    assert torch.equal(ours, direct)
    # a moderate eps: some but not all clean-correct points break, so the comparison means something
    assert 0 < int((ours & clean_ok).sum()) < int(clean_ok.sum())


def test_autoattack_n_iter_sets_apgd_schedule_and_cost(batch) -> None:
    """``n_iter`` and ``n_restarts`` reach pyautoattack's APGD objects (with the schedule's
    checkpoints it derives from n_iter), cost less, and a 2-iteration APGD-CE breaks no more
    points than the 100-iteration one on the same points."""
    model, x, y = batch
    x, y = x[:16], y[:16]
    full = get_attack("autoattack")(norm="Linf", version="custom", attacks=["apgd-ce"], n_restarts=1)
    short = get_attack("autoattack")(norm="Linf", version="custom", attacks=["apgd-ce"], n_iter=2, n_restarts=1)
    aa = short.build(model, 0.08, 0, torch.device("cpu"))
    assert (aa.apgd.n_iter, aa.apgd.n_restarts, aa.apgd.n_iter_2) == (2, 1, 1)
    assert short.evaluations_per_point() == 4 < full.evaluations_per_point() == 200
    e = torch.full((16,), 0.08)
    broken = [verify(model, x, a.run(model, x, y, e, generator=torch.Generator().manual_seed(7)), y, "Linf", e)[0]
              for a in (short, full)]
    assert int(broken[0].sum()) <= int(broken[1].sum())
    with pytest.raises(UserInputError, match="n_iter must be at least 1"):
        get_attack("autoattack")(norm="Linf", n_iter=0)


class _NoisyNet(nn.Module):
    """A network whose logits carry random noise (a stand-in for a randomized defense)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out + 0.5 * torch.randn_like(out)


def test_autoattack_captures_its_checks_and_picks_rand(batch) -> None:
    model, x, y = batch
    undeclared = DefendedModel(_NoisyNet(model.net), model.classes, randomized=False).eval()
    attack = get_attack("autoattack")(norm="Linf", version="custom", attacks=["apgd-ce"])
    attack.run(undeclared, x[:16], y[:16], torch.full((16,), 0.05), generator=torch.Generator().manual_seed(0))
    assert any("randomized defense" in w for w in attack.warnings)

    declared = DefendedModel(_NoisyNet(model.net), model.classes, randomized=True, n_passes=3).eval()
    default = get_attack("autoattack")(norm="Linf", eot=3)
    assert default.resolved_version(declared) == "rand"
    assert default.resolved_version(model) == "standard"
    aa = default.build(declared, 0.1, 0, torch.device("cpu"))
    assert aa.version == "rand" and aa.apgd.eot_iter == 3


def test_library_model_eot_and_queries(batch) -> None:
    model, x, _ = batch
    noisy = DefendedModel(_NoisyNet(model.net), model.classes, randomized=True).eval()
    lm = LibraryModel(noisy, eot=4)
    with torch.no_grad():
        torch.manual_seed(0)
        a = lm(x[:8])
        torch.manual_seed(0)
        passes = [noisy.predict(x[:8]) for _ in range(4)]
    assert torch.allclose(a, torch.stack(passes).mean(0))
    assert lm.queries == 4 * 8
    assert LibraryModel(model, eot=4).eot == 1  # a deterministic model gets one pass


def test_library_attacks_reproduce_with_the_same_generator(batch) -> None:
    model, x, y = batch
    eps = torch.full((16,), 0.1)
    square = get_attack("square")(norm="Linf", n_queries=100)
    a = square.run(model, x[:16], y[:16], eps, generator=torch.Generator().manual_seed(3))
    b = square.run(model, x[:16], y[:16], eps, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_per_sample_eps_groups(batch) -> None:
    """torchattacks takes one eps: the adapter splits the batch into equal-eps groups."""
    model, x, y = batch
    eps = torch.tensor([0.02, 0.2] * 8)
    x_adv = get_attack("mim")(norm="Linf").run(model, x[:16], y[:16], eps)
    linf = (x_adv - x[:16]).abs().flatten(1).amax(1)
    assert bool((linf <= eps + 1e-6).all())
    assert float(linf[1::2].max()) > 0.1  # the large-eps group really used its larger ball


def test_l1_projection_matches_bisection() -> None:
    from robustbench_er.models.pgd import project_l1

    gen = torch.Generator().manual_seed(0)
    d = torch.randn(40, 30, generator=gen) * 2
    r = torch.rand(40, generator=gen) * 6
    p = project_l1(d, r)
    for i in range(40):
        v, rad = d[i], float(r[i])
        if float(v.abs().sum()) <= rad:
            ref = v
        else:
            lo, hi = 0.0, float(v.abs().max())
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if float((v.abs() - mid).clamp_min(0).sum()) > rad else (lo, mid)
            ref = v.sign() * (v.abs() - hi).clamp_min(0)
        assert torch.allclose(p[i], ref, atol=1e-5)


@pytest.mark.parametrize(("name", "norm", "params"), [
    ("autoattack", "Linf", {"version": "nightly"}),
    ("autoattack", "L1", {"version": "plus"}),
    ("autoattack", "Linf", {"version": "custom"}),
    ("autoattack", "Linf", {"version": "custom", "attacks": ["apgd-xyz"]}),
    ("autoattack", "Linf", {"attacks": ["apgd-ce"]}),
    ("cw", "Linf", {}),
    ("mim", "L2", {}),
    ("square", "L1", {}),
    ("cw", "L2", {"confidence": -1.0}),
    ("square", "Linf", {"n_queries": 0}),
    ("boundary", "L2", {"steps": 0}),
    ("pgd", "L1", {"eot": 0}),
    ("fab", "L1", {"eot": 0}),
    ("deepfool", "L2", {"eot": 0}),
    ("autoattack", "L2", {"eot": 0}),
])
def test_bad_input_raises_user_input_error(name: str, norm: str, params: dict) -> None:
    with pytest.raises(UserInputError):
        get_attack(name)(norm=norm, **params)
