"""The ER-Classifier family and AFD: tiny real runs on digits (each a second or two)."""

from __future__ import annotations

import math

import pytest
import torch

from robustbench_er.core.errors import UserInputError
from robustbench_er.engine.trained import get_or_train
from robustbench_er.plugins.registry import get_defense

ER_NAMES = ["er-classifier", "er-classifier-", "er-trades", "e-cla", "vae-cla"]
AFD_NAMES = ["afd", "afd-matching"]
TINY = dict(epochs=1, train_samples=128, warmup_epochs=0, ramp_epochs=0, attack_steps=2)


class AttackCalled(RuntimeError):
    pass


@pytest.mark.parametrize("name", ER_NAMES + AFD_NAMES)
def test_trained_model_embeds_and_training_moved_the_weights(name, digits, tmp_path):
    # train / save / reload / predict for every defense: tests/test_defenses_registry.py
    torch.manual_seed(0)
    trained = get_or_train(name, digits, profile="quick", seed=0, out=tmp_path, overrides=TINY, progress=False)
    s1 = trained.model.state_dict()
    x = digits.x_test[:17]
    with torch.no_grad():
        emb = trained.model.embed(x)
    hp = get_defense(name).hparams("digits", "quick", TINY)
    width = hp.embed_dim if name in ER_NAMES else trained.model.net.feat_dim
    assert emb.shape == (17, width) and torch.isfinite(emb).all()
    # training moved the weights away from the seeded initialisation
    torch.manual_seed(0)
    fresh = get_defense(name)().build(digits.spec, hp)
    moved = [k for k, v in fresh.state_dict().items() if v.is_floating_point() and not torch.equal(v, s1["net." + k])]
    assert moved


@pytest.mark.parametrize("name", ["er-classifier", "er-trades"])
def test_critic_weights_clipped_after_every_step(name, digits, monkeypatch):
    from robustbench_er.defenses._er_nets import CodeDiscriminator

    before, after = [], []
    original = CodeDiscriminator.clip_

    def recording_clip(self, c):
        before.append(max(float(p.detach().abs().max()) for p in self.parameters()))
        original(self, c)
        after.append(max(float(p.detach().abs().max()) for p in self.parameters()))

    monkeypatch.setattr(CodeDiscriminator, "clip_", recording_clip)
    cls = get_defense(name)
    hp = cls.hparams("digits", "quick", dict(TINY, epochs=2, train_samples=96, batch_size=32))
    d = cls()
    model = d.wrap(d.build(digits.spec, hp), digits.spec, hp)
    d.train(model, digits, hp, seed=0, progress=False)
    assert len(after) == 6  # one critic step per batch: 2 epochs x 3 batches
    assert before[0] > 0.01  # the initial critic is outside the box, so clipping did something
    assert max(after) <= 0.01 + 1e-9
    assert all(float(p.detach().abs().max()) <= 0.01 + 1e-9 for p in model.net.discriminator.parameters())


def _forbid_attacks(monkeypatch):
    import robustbench_er.defenses._er_family
    import robustbench_er.defenses.er_trades
    import robustbench_er.models.pgd
    import robustbench_er.models.training

    def boom(*args, **kwargs):
        raise AttackCalled("an attack was called")

    monkeypatch.setattr(robustbench_er.models.pgd, "pgd", boom)
    monkeypatch.setattr(robustbench_er.models.training, "pgd", boom)
    monkeypatch.setattr(robustbench_er.models.training, "adversarial_batch", boom)
    monkeypatch.setattr(robustbench_er.defenses._er_family, "adversarial_batch", boom)
    monkeypatch.setattr(robustbench_er.models.training, "trades_adversarial", boom)
    monkeypatch.setattr(robustbench_er.defenses.er_trades, "trades_adversarial", boom)


def _train_fresh(name, digits, overrides):
    cls = get_defense(name)
    hp = cls.hparams("digits", "quick", overrides)
    d = cls()
    model = d.wrap(d.build(digits.spec, hp), digits.spec, hp)
    return d.train(model, digits, hp, seed=0, progress=False)


def test_er_classifier_minus_never_attacks(digits, monkeypatch):
    _forbid_attacks(monkeypatch)
    report = _train_fresh("er-classifier-", digits, dict(epochs=2, train_samples=128))
    assert len(report["history"]) == 2
    # the same patch does catch the min-max variant's attack, so the check above can fail
    with pytest.raises(AttackCalled):
        _train_fresh("er-classifier", digits, dict(TINY))


def test_er_classifier_minus_refuses_min_max():
    with pytest.raises(UserInputError, match="without min-max"):
        get_defense("er-classifier-").hparams("digits", "quick", {"min_max": True})


def test_er_classifier_minus_learns_digits(digits, tmp_path):
    t = get_or_train("er-classifier-", digits, profile="quick", seed=0, out=tmp_path, progress=False)
    assert t.meta["clean_acc"] > 0.85


def test_afd_decoder_depends_on_label(digits):
    hp = get_defense("afd").hparams("digits", "quick")
    torch.manual_seed(0)
    net = get_defense("afd")().build(digits.spec, hp).eval()
    e = torch.randn(8, net.feat_dim)
    with torch.no_grad():
        s0 = net.da(e, torch.zeros(8, dtype=torch.int64))
        s1 = net.da(e, torch.ones(8, dtype=torch.int64))
        s0_again = net.da(e, torch.zeros(8, dtype=torch.int64))
    assert s0.shape == (8,)
    assert torch.equal(s0, s0_again)
    assert float((s0 - s1).abs().min()) > 1e-4


def test_afd_trains_its_adversarial_decoder(digits):
    cls = get_defense("afd")
    hp = cls.hparams("digits", "quick", TINY)
    d = cls()
    torch.manual_seed(0)
    model = d.wrap(d.build(digits.spec, hp), digits.spec, hp)
    da0 = {k: v.clone() for k, v in model.net.da.state_dict().items()}
    report = d.train(model, digits, hp, seed=0, progress=False)
    assert {"ce", "loss_da", "loss_e"} <= set(report["history"][0])
    assert math.isfinite(report["history"][0]["loss_da"])
    changed = [k for k, v in model.net.da.state_dict().items() if not torch.equal(v, da0[k])]
    assert any(k.endswith("original") for k in changed)


def test_prior_supports():
    from robustbench_er.defenses._er_nets import sample_prior

    g = torch.Generator().manual_seed(0)
    n, k = 20000, 3
    uni = sample_prior("uniform", n, k, generator=g)
    gau = sample_prior("gaussian", n, k, generator=g)
    cau = sample_prior("cauchy", n, k, generator=g)
    for z in (uni, gau, cau):
        assert z.shape == (n, k) and z.dtype == torch.float32 and torch.isfinite(z).all()
    assert float(uni.min()) >= -3 and float(uni.max()) <= 3
    assert float(uni.min()) < -2.9 and float(uni.max()) > 2.9
    assert abs(float(uni.std()) - math.sqrt(3)) < 0.05

    def iqr(z):
        q = torch.quantile(z.flatten(), torch.tensor([0.25, 0.5, 0.75]))
        return float(q[1]), float(q[2] - q[0])

    med, spread = iqr(gau)
    assert abs(med) < 0.05 and abs(spread / 1.349 - 1) < 0.05  # N(0, 1): IQR = 1.349
    assert float(gau.abs().max()) < 6
    med, spread = iqr(cau)
    assert abs(med) < 0.05 and abs(spread / 2 - 1) < 0.06  # Cauchy(0, 1): quartiles at -1 and +1
    tail = float((cau.abs() > 10).float().mean())
    assert abs(tail - 2 / math.pi * math.atan(1 / 10)) < 0.01  # P(|z| > 10) = 0.063: heavy tails
    assert float(cau.abs().max()) > 100


def test_unknown_prior_and_bad_embed_dim_raise():
    from robustbench_er.defenses._er_nets import build_er_net, sample_prior

    cls = get_defense("er-classifier")
    with pytest.raises(UserInputError, match="gaussian, uniform, cauchy"):
        cls.hparams("digits", "quick", {"prior": "laplace"})
    with pytest.raises(UserInputError, match="gaussian"):
        sample_prior("laplace", 4, 2)
    for name in ER_NAMES:
        with pytest.raises(UserInputError, match="embed_dim"):
            get_defense(name).hparams("digits", "quick", {"embed_dim": 0})
    with pytest.raises(UserInputError, match="embed_dim"):
        build_er_net("er_small", 1, 10, 8, 0)


def test_embed_dim_and_prior_are_configurable(digits):
    cls = get_defense("er-classifier")
    hp = cls.hparams("digits", "quick", {"embed_dim": 7, "prior": "cauchy"})
    net = cls().build(digits.spec, hp).eval()
    with torch.no_grad():
        assert net.embed(digits.x_test[:3]).shape == (3, 7)
        assert net(digits.x_test[:3]).shape == (3, 10)
    assert cls.hparams("mnist5k", "quick").embed_dim == 4
    assert cls.hparams("cifar10", "paper").embed_dim == 16
    assert cls.hparams("stl10", "paper").embed_dim == 16
    assert cls.hparams("tiny-imagenet", "paper").embed_dim == 20


def test_vae_cla_embeds_the_mean_and_is_deterministic(digits):
    cls = get_defense("vae-cla")
    hp = cls.hparams("digits", "quick")
    torch.manual_seed(0)
    d = cls()
    model = d.wrap(d.build(digits.spec, hp), digits.spec, hp).eval()
    x = digits.x_test[:6]
    with torch.no_grad():
        mu, logvar = model.net.encode(model.normalize(x))
        assert logvar is not None and torch.equal(model.embed(x), mu)
        assert torch.equal(model.predict(x), model.predict(x))
        model.train()
        z1 = model.net.code(model.normalize(x))[0]
        z2 = model.net.code(model.normalize(x))[0]
    assert not torch.equal(z1, z2)  # training samples z = mu + sigma * noise


def test_mnist_encoder_refuses_8x8(digits, tmp_path):
    with pytest.raises(UserInputError, match="er_small"):
        get_or_train("er-classifier", digits, profile="quick", overrides={"backbone": "er_mnist"}, progress=False,
                     out=tmp_path)
