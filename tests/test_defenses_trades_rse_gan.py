"""TRADES, RSE and Defense-GAN: tiny real runs on digits (train, save, reload, predict) plus
checks of each method's defining property."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustbench_er.core.errors import UserInputError
from robustbench_er.engine.trained import get_or_train

TINY = {"epochs": 1, "train_samples": 256}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _train_twice(name: str, digits, root, overrides: dict):
    first = get_or_train(name, digits, profile="quick", seed=0, out=root, progress=False, overrides=overrides)
    second = get_or_train(name, digits, profile="quick", seed=0, out=root, progress=False, overrides=overrides)
    return first, second


@pytest.fixture(scope="module")
def trades_pair(digits, ckpt_root):
    return _train_twice("trades", digits, ckpt_root, dict(TINY, epochs=3, train_samples=512, warmup_epochs=1, ramp_epochs=0, attack_steps=2))


@pytest.fixture(scope="module")
def rse_pair(digits, ckpt_root):
    return _train_twice("rse", digits, ckpt_root, dict(TINY, epochs=3, train_samples=512))


@pytest.fixture(scope="module")
def gan_pair(digits, ckpt_root):
    return _train_twice("defense-gan", digits, ckpt_root,
                        dict(TINY, gan_iters=120, restarts=2, rec_steps=15))


# ---- TRADES ---------------------------------------------------------------------------------

def test_trades_loss_is_ce_at_beta_zero_and_grows_with_beta() -> None:
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(16, 10, generator=g)
    adv = clean + torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    from robustbench_er.models.training import trades_loss

    ce = F.cross_entropy(clean, y)
    assert torch.allclose(trades_loss(clean, adv, y, 0.0), ce)
    assert torch.allclose(trades_loss(clean, clean, y, 6.0), ce, atol=1e-6)
    losses = [trades_loss(clean, adv, y, b).item() for b in (0.0, 1.0, 6.0)]
    assert losses[0] < losses[1] < losses[2]


def test_trades_adversarial_stays_in_ball_and_restores_mode(trades_pair, digits) -> None:
    from robustbench_er.models.training import trades_adversarial

    model = trades_pair[0].model
    x = digits.x_test[:32]
    model.train()
    x_adv = trades_adversarial(model, x, eps=0.1, steps=5, step_size=0.03)
    assert model.training
    model.eval()
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0.05  # it moved towards the boundary of the ball
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        kl_adv = F.kl_div(F.log_softmax(model(x_adv), 1), p, reduction="batchmean")
        kl_rand = F.kl_div(F.log_softmax(model((x + 0.1 * torch.randn_like(x).sign()).clamp(0, 1)), 1), p,
                           reduction="batchmean")
    assert kl_adv > kl_rand


def test_trades_trains_saves_and_reloads(trades_pair, digits) -> None:
    first, second = trades_pair
    assert not first.reused and second.reused
    assert _same_weights(first.model, second.model)
    with torch.no_grad():
        a, b = first.model.predict(digits.x_test[:64]), second.model.predict(digits.x_test[:64])
    assert a.shape == (64, 10) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert first.meta["clean_acc"] > 0.5


def test_trades_rejects_bad_hparams() -> None:
    from robustbench_er.defenses.trades import Trades

    with pytest.raises(UserInputError):
        Trades.hparams("digits", "quick", {"beta": -1.0})
    with pytest.raises(UserInputError):
        Trades.hparams("digits", "quick", {"eps": 1.5})


# ---- RSE ------------------------------------------------------------------------------------

def test_rse_trains_saves_and_reloads(rse_pair, digits) -> None:
    first, second = rse_pair
    assert not first.reused and second.reused
    assert first.model.randomized and first.model.n_passes == 10
    assert _same_weights(first.model, second.model)
    with torch.no_grad():
        out = second.model.predict(digits.x_test[:64])
    assert out.shape == (64, 10) and torch.isfinite(out).all()
    assert first.meta["clean_acc"] > 0.5


def test_rse_is_random_and_the_ensemble_is_steadier(rse_pair, digits) -> None:
    from robustbench_er.defenses.rse import ensemble_probs

    model = rse_pair[0].model.eval()
    x = digits.x_test[:64]
    with torch.no_grad():
        assert not torch.equal(model.predict(x), model.predict(x))
        singles = torch.stack([F.softmax(model.predict(x), 1) for _ in range(8)])
    ensembles = torch.stack([ensemble_probs(model, x, 10) for _ in range(8)])
    var_single = singles.var(0).mean().item()
    var_ensemble = ensembles.var(0).mean().item()
    assert var_single > 0
    assert var_ensemble < 0.5 * var_single


def test_rse_rejects_bad_hparams() -> None:
    from robustbench_er.defenses.rse import RSE

    with pytest.raises(UserInputError):
        RSE.hparams("digits", "quick", {"n_passes": 0})
    with pytest.raises(UserInputError):
        RSE.hparams("digits", "quick", {"init_std": -0.1})
    with pytest.raises(UserInputError):
        RSE.hparams("digits", "quick", {"backbone": "tiny_cnn"})


# ---- Defense-GAN ----------------------------------------------------------------------------

def test_defense_gan_trains_saves_and_reloads(gan_pair, digits) -> None:
    first, second = gan_pair
    assert not first.reused and second.reused
    assert _same_weights(first.model, second.model)
    keys = set(first.model.state_dict())
    assert any(k.startswith("net.generator.") for k in keys) and any(k.startswith("net.classifier.") for k in keys)
    with torch.no_grad():
        out = second.model.predict(digits.x_test[:32])
    assert out.shape == (32, 10) and torch.isfinite(out).all()


def test_defense_gan_reconstructs_closer_than_random_samples(gan_pair, digits) -> None:
    net = gan_pair[0].model.net
    x = digits.x_test[:64]
    torch.manual_seed(1)
    with torch.no_grad():  # the projection must work without an outer grad context
        rec = net.project(x)
        rand = net.generator.eval()(torch.randn(64, net.generator.latent_dim))
    assert not rec.requires_grad
    assert ((rec - x) ** 2).mean() < 0.7 * ((rand - x) ** 2).mean()


def test_defense_gan_is_declared_randomized_and_gradient_attacks_use_bpda(gan_pair) -> None:
    from robustbench_er.attacks.pgd import PGD

    model = gan_pair[0].model
    assert model.randomized and not model.differentiable and model.bpda
    attack = PGD(norm="Linf")
    attack.check_model(model)  # let through: the defense declares a BPDA approximation
    assert attack.bpda and attack.describe()["bpda"] is True
    assert attack.target(model) is not model and attack.target(model).approximate_gradients


def test_defense_gan_rejects_bad_hparams() -> None:
    from robustbench_er.defenses.defense_gan import DefenseGAN

    with pytest.raises(UserInputError):
        DefenseGAN.hparams("digits", "quick", {"restarts": 0})
    with pytest.raises(UserInputError):
        DefenseGAN.hparams("digits", "quick", {"gan_loss": "vae"})
