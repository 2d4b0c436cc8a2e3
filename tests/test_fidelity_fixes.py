"""BPDA for defenses with a declared approximation (Defense-GAN), plugin declarations as plain
class attributes, and the ER ablations' paper setting (no min-max)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_er.core.errors import UserInputError
from robustbench_er.engine import checks
from robustbench_er.engine.spec import AttackConfig, SweepConfig
from robustbench_er.engine.trained import get_or_train
from robustbench_er.jobs.sweep import run_sweep
from robustbench_er.plugins.attack import verify
from robustbench_er.plugins.defense import DefendedModel, Defense, HParams
from robustbench_er.plugins.registry import DEFENSES, get_attack, get_defense, register_defense
from robustbench_er.store.results import Store

#: a tiny Defense-GAN (about 57% clean accuracy on digits: a weak GAN, but enough points to attack)
GAN_OVERRIDES = {"epochs": 3, "train_samples": 512, "gan_iters": 120, "restarts": 2, "rec_steps": 15}


@pytest.fixture(scope="module")
def gan(digits, ckpt_root):
    torch.manual_seed(0)
    return get_or_train("defense-gan", digits, profile="quick", seed=0, out=ckpt_root, progress=False,
                        overrides=GAN_OVERRIDES)


# ---- BPDA -------------------------------------------------------------------------------------

def test_bpda_twin_has_the_real_outputs_and_gradients_through_the_classifier(gan, digits):
    model = gan.model
    twin = model.bpda_model()
    assert twin is not model and twin.approximate_gradients and twin.net is model.net
    x = digits.x_test[:16]
    torch.manual_seed(3)
    real = model.predict(x)
    torch.manual_seed(3)
    xg = x.clone().requires_grad_(True)
    approx = twin.predict(xg)
    assert torch.allclose(real, approx, atol=1e-4)  # forward = the real defense
    (g,) = torch.autograd.grad(F.cross_entropy(approx, digits.y_test[:16]), xg)
    # backward = the classifier's gradient at the reconstruction (projection as identity)
    net = model.net
    with torch.no_grad():
        torch.manual_seed(3)
        rec = net.project(x)
    r = rec.clone().requires_grad_(True)
    (g_clf,) = torch.autograd.grad(F.cross_entropy(net.classifier(net.to_normalised(r)), digits.y_test[:16]), r)
    assert g.abs().sum() > 0 and torch.allclose(g, g_clf, atol=1e-6)


def test_pgd_with_bpda_breaks_defense_gan_and_every_example_is_verified_on_the_real_model(gan, digits):
    model = gan.model
    pgd = get_attack("pgd")(norm="Linf", steps=10)
    pgd.check_model(model)
    assert pgd.bpda
    x, y = digits.x_test[:64], digits.y_test[:64]
    torch.manual_seed(0)
    clean = model.predict_label(x) == y
    eps = torch.full((64,), 0.3)
    x_adv = pgd.run(pgd.target(model), x, y, eps, generator=torch.Generator().manual_seed(0))
    ok, norms = verify(model, x, x_adv, y, "Linf", eps)
    broken = ok & clean
    assert int(clean.sum()) >= 25
    # clearly more than without gradients: at least 60% of the clean-correct points
    assert int(broken.sum()) >= 0.6 * int(clean.sum())
    assert bool((norms[broken] <= 0.3 + 1e-5).all())
    # counted examples are misclassified by the real defense (a fresh majority vote of 5 passes)
    torch.manual_seed(11)
    votes = model.predict_label(x_adv[broken], n_passes=5)
    assert float((votes != y[broken]).float().mean()) >= 0.8


def test_sweep_records_bpda_and_pgd_beats_a_small_rays(gan, digits, ckpt_root, tmp_path):
    out = tmp_path / "gan_bpda"
    cfg = SweepConfig(dataset="digits", defenses=["defense-gan"], eps=[0.0, 0.3], samples=32, out=out,
                      progress=False, eot=2, seed=0, checkpoints={"defense-gan": str(gan.folder)}, mode="independent",
                      attacks=[AttackConfig("pgd", {"steps": 10}), AttackConfig("rays", {"query_budget": 60})])
    run_sweep(cfg)
    store = Store(out)
    try:
        cells = store.cells_frame()
        specs = {r.attack_label: json.loads(r.spec) for r in cells.itertuples()}
        flags = store.flags_frame()
        acc = {r.attack_label: checks.attack_run(store.outcomes(r.cell_id), [0.3], specs[r.attack_label])
               for r in cells.itertuples()}
    finally:
        store.close()
    assert specs["pgd"]["attack"]["bpda"] is True and "bpda" not in specs["rays"]["attack"]
    pgd_flags = set(flags[flags["cell_id"] == cells.loc[cells["attack_label"] == "pgd", "cell_id"].iloc[0]]["flag"])
    assert "bpda-gradients" in pgd_flags
    standing = {lab: float((r.outcomes["clean_correct"].astype(bool)
                            & ~(r.outcomes["broken_at"].fillna(9) <= 0.3)).mean()) for lab, r in acc.items()}
    clean = float(acc["pgd"].outcomes["clean_correct"].mean())
    assert standing["pgd"] <= 0.5 * clean and standing["pgd"] < standing["rays"]
    board = pd.read_csv(out / "leaderboard.csv")
    assert "bpda-gradients" in str(board.iloc[0]["flags"])


def test_non_differentiable_defense_without_bpda_is_refused_and_bpda_needs_forward_bpda():
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    model = DefendedModel(net, 10, differentiable=False)
    pgd = get_attack("pgd")(norm="Linf")
    with pytest.raises(UserInputError, match="no BPDA approximation"):
        pgd.check_model(model)
    assert pgd.target(model) is model and model.bpda_model() is model
    rays = get_attack("rays")(norm="Linf")
    rays.check_model(model)  # decision-based: never uses the approximation
    with pytest.raises(UserInputError, match="forward_bpda"):
        DefendedModel(net, 10, differentiable=False, bpda=True)


# ---- plugin declarations as class attributes ------------------------------------------------

class _SoftmaxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.lin(x.flatten(1)), dim=1)


def test_output_probs_is_a_class_attribute(digits):
    @register_defense("test-probs")
    class Probs(Defense):
        HParams = HParams
        presets = {"digits": {"quick": {}}}
        output = "probs"
        trainable = False

        def build(self, spec, hp):
            return _SoftmaxNet()

    try:
        d = Probs()
        hp = Probs.hparams("digits", "quick")
        torch.manual_seed(0)
        model = d.wrap(d.build(digits.spec, hp), digits.spec, hp).eval()
        x, y = digits.x_test[:32], digits.y_test[:32]
        assert model.output == "probs"
        with torch.no_grad():
            out = model.predict(x)
        # log-probabilities: non-positive, exp sums to 1, same argmax as the network's
        assert bool((out <= 0).all()) and torch.allclose(out.exp().sum(1), torch.ones(32), atol=1e-5)
        assert torch.equal(out.argmax(1), model.net(model.normalize(x)).argmax(1))
        flags = checks.model_flags(model, x, y, "test-probs-attr")
        assert "probabilities" not in flags
        # the same network declared as logits is caught by the check
        raw = DefendedModel(model.net, 10, mean=digits.spec.mean, std=digits.spec.std)
        assert "probabilities" in checks.model_flags(raw, x, y, "test-probs-raw")
    finally:
        DEFENSES.unregister("test-probs")


def test_bad_class_declarations_are_refused_at_registration():
    for attrs, match in (({"output": "prob"}, "output"), ({"bpda": "yes"}, "bpda")):
        with pytest.raises(TypeError, match=match):
            register_defense("test-bad-decl")(type("Bad", (Defense,), {
                "presets": {}, "trainable": False, "build": lambda self, spec, hp: nn.Identity(), **attrs}))
    assert "test-bad-decl" not in DEFENSES.names("*")


def test_built_in_defense_gan_declares_bpda_and_fgsm_single_step():
    gan_cls = get_defense("defense-gan")
    assert gan_cls.bpda and not gan_cls.differentiable and gan_cls.output == "logits"
    assert get_attack("fgsm").single_step and not get_attack("pgd").single_step


# ---- Li et al. 2021, Figure 4: the ablations without min-max ------------------------------

@pytest.mark.parametrize("name", ["e-cla", "vae-cla"])
def test_er_ablations_train_without_min_max_by_default(name):
    cls = get_defense(name)
    for ds, per in cls.presets.items():
        for prof in per:
            assert cls.hparams(ds, prof).min_max is False
    assert cls.hparams("digits", "quick", {"min_max": True}).min_max is True
