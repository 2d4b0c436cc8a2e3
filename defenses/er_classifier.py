"""ER-Classifier and ER-Classifier- (embedding-regularised classifier).

Paper: Li, Min, Lee, Yu, Kruus, Wang, Hsieh, "Towards Robustness of Deep Neural Networks via
Regularization", ICCV 2021 (earlier version: "Defending against adversarial examples by
regularized deep embedding", ICLR 2020 submission). Reference code: liyao880/ER-Classifier.

Threat model: white-box Linf; min-max training with PGD adversarial examples (true labels).

Method (Algorithm 1): an encoder Q maps an image to a low-dimensional code z (k = 4 on MNIST,
16 on CIFAR10 and STL10, 20 on Tiny ImageNet); a classifier C predicts from z; a WGAN critic D
tells codes Q(x) from samples of a prior P_Z (N(0, I); Uniform(-3, 3) and Cauchy(0, 1) are the
alternatives of appendix C.4). Per batch x (the PGD adversarial batch under min-max training):

1. D ascends ``lambda * (mean D(z_prior) - mean D(Q(x)))``, then every D weight is clipped to
   [-0.01, 0.01];
2. Q and C descend ``CE(C(Q(x)), y)``;
3. Q ascends ``lambda1 * mean D(Q(x))`` (one Adam step).

Hyper-parameters (paper / reference values): Adam; encoder lr 1e-4 on MNIST and 5e-5 otherwise,
critic 0.5 x lr and classifier 0.05 x lr (reference-code ratios; the papers give no others);
lambda (``lambda_d``) 1, lambda1 (``lambda_enc``) 0.0005 on MNIST and 0.1 otherwise; batch 100
(64 on STL10); 30 epochs; training PGD (seed 000 Table 9): MNIST eps 0.3, 40 steps of 0.01;
CIFAR10 0.03, 20 of 0.01; STL10 0.03, 20 of 2/255; Tiny ImageNet 0.01, 10 steps (step size not
given; we use 2.5 * eps / 10). Architectures: see :mod:`robustbench_er.models.er`.

``er-classifier-`` is the same framework trained on clean batches only (no min-max, so no attack
is ever run in training), the paper's "ER-Classifier-".

Source: ours.

Differences from the reference code, and why (the paper's intent is the default):

* PGD in training attacks the true label (the reference attacks the predicted label);
* gradients are zeroed before each of the three updates (the reference zeroes once per batch, so
  the later updates reuse accumulated gradients);
* no learning-rate schedule (the reference builds a StepLR but never steps it, so the effective
  rate is constant as here);
* step 2 uses the adversarial batch only, as Algorithm 1 (the reference averages clean and
  adversarial cross-entropy and repeats steps 1 and 3 on the adversarial batch);
* the critic step reuses the codes of the forward pass that step 2 back-propagates through (Q has
  not changed between steps 1 and 2, so the numbers are the same; it saves one forward pass).
* ``quick`` presets (CPU): a small conv encoder (``er_small``), narrower classifier and critic,
  lr 2e-3-3e-3 with classifier factor 0.5 (at 0.05 x lr the classifier barely moves in a few
  epochs), 10 PGD steps of 2.5 * eps / 10, one clean warm-up epoch and a linear eps ramp (as
  ``madry``'s quick preset). On mnist5k the quick preset reaches 89% clean accuracy and 69% under
  PGD-40 at eps 0.3 (500 test points) after ~81 s of single-thread CPU training (width 32 instead
  of 16: 92% / 74% but ~3 x the cost). The ``paper`` presets carry the paper's values; ``digits`` (8x8)
  cannot take the four stride-2 convs of the MNIST encoder, so its presets use ``er_small``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

import defenses.madry as _madry
from robustbench_er.data import Dataset, DatasetSpec
from robustbench_er.defense import (
    AdversarialHParams,
    DefendedModel,
    Defense,
    HParams,
    fit,
    make_optimizer,
)
from robustbench_er.errors import UserInputError
from robustbench_er.models.er import ENCODERS, ERNet, build_er_net, check_prior, sample_prior
from robustbench_er.registry import register_defense

log = logging.getLogger(__name__)


@dataclass
class ERHParams(AdversarialHParams):
    backbone: str = "er_mnist"
    epochs: int = 30
    batch_size: int = 100
    lr: float = 1e-4
    optimizer: str = "adam"
    #: dimension k of the code z
    embed_dim: int = 4
    #: prior P_Z of the codes: gaussian N(0, I) | uniform U(-3, 3) | cauchy Cauchy(0, 1)
    prior: str = "gaussian"
    #: channels of the ``er_small`` encoder (quick presets)
    width: int = 32
    cls_hidden1: int = 500
    cls_hidden2: int = 256
    disc_hidden: int = 512
    #: critic lr = d_lr_factor * lr; classifier lr = c_lr_factor * lr (reference: 0.5, 0.05)
    d_lr_factor: float = 0.5
    c_lr_factor: float = 0.05
    #: lambda: weight of the critic objective (step 1)
    lambda_d: float = 1.0
    #: lambda1: weight of the encoder's regulariser (step 3); 0.0005 on MNIST, 0.1 otherwise
    lambda_enc: float = 0.0005
    #: WGAN weight clipping bound of the critic
    clip: float = 0.01
    #: min-max training on PGD adversarial batches
    min_max: bool = True

    def validate(self) -> None:
        super().validate()
        if self.embed_dim < 1:
            raise UserInputError(f"embed_dim must be at least 1; got {self.embed_dim}.")
        check_prior(self.prior)
        if self.backbone not in ENCODERS:
            raise UserInputError(f"Unknown ER encoder {self.backbone!r}; known: {', '.join(ENCODERS)}.")
        if self.clip <= 0:
            raise UserInputError(f"The critic's clipping bound must be positive; got {self.clip}.")
        if min(self.lr, self.d_lr_factor, self.c_lr_factor) <= 0:
            raise UserInputError("lr, d_lr_factor and c_lr_factor must be positive.")


def er_presets(**changes: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """The ER family's presets per dataset and profile, with ``changes`` applied to every one."""
    small = dict(backbone="er_small", optimizer="adam", cls_hidden1=128, cls_hidden2=64, disc_hidden=128,
                 c_lr_factor=0.5)
    mnist_paper = dict(backbone="er_mnist", epochs=30, batch_size=100, lr=1e-4, embed_dim=4, lambda_enc=0.0005,
                       eps=0.3, attack_steps=40, step_size=0.01)
    base: dict[str, dict[str, dict[str, Any]]] = {
        "digits": {
            "quick": dict(small, width=16, epochs=8, batch_size=64, lr=3e-3, embed_dim=4, lambda_enc=0.0005,
                          eps=0.3, attack_steps=5, step_size=0.15, warmup_epochs=2, ramp_epochs=3),
            "paper": dict(mnist_paper, backbone="er_small"),
        },
        "mnist5k": {
            "quick": dict(small, width=16, epochs=8, batch_size=64, lr=2e-3, embed_dim=4, lambda_enc=0.0005,
                          eps=0.3, attack_steps=10, step_size=0.075, warmup_epochs=1, ramp_epochs=3),
            "paper": dict(mnist_paper),
        },
        "mnist": {
            "quick": dict(small, width=32, epochs=2, batch_size=100, lr=2e-3, embed_dim=4, lambda_enc=0.0005,
                          eps=0.3, attack_steps=10, step_size=0.075, warmup_epochs=0, ramp_epochs=2,
                          train_samples=10000),
            "paper": dict(mnist_paper),
        },
        "cifar10": {
            "quick": dict(small, width=32, epochs=2, batch_size=100, lr=2e-3, embed_dim=16, lambda_enc=0.1,
                          eps=0.03, attack_steps=5, step_size=2.5 * 0.03 / 5, ramp_epochs=1, train_samples=10000),
            "paper": dict(backbone="er_vgg19", epochs=30, batch_size=100, lr=5e-5, embed_dim=16, lambda_enc=0.1,
                          eps=0.03, attack_steps=20, step_size=0.01),
        },
        "stl10": {
            "paper": dict(backbone="er_stl", epochs=30, batch_size=64, lr=5e-5, embed_dim=16, lambda_enc=0.1,
                          eps=0.03, attack_steps=20, step_size=2 / 255),
        },
        "tiny-imagenet": {
            "paper": dict(backbone="er_tiny", epochs=30, batch_size=100, lr=5e-5, embed_dim=20, lambda_enc=0.1,
                          eps=0.01, attack_steps=10, step_size=2.5 * 0.01 / 10),
        },
    }
    return {ds: {prof: dict(v, **changes) for prof, v in per.items()} for ds, per in base.items()}


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)), summed over code dimensions, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()


class ERFamily(Defense):
    """Shared training of the ER family (not registered itself). Subclasses set the flags."""

    HParams: ClassVar[type[HParams]] = ERHParams
    #: train a critic on the codes (steps 1 and 3 of Algorithm 1)
    use_discriminator: ClassVar[bool] = True
    #: variational encoder with a KL regulariser (VAE-CLA)
    variational: ClassVar[bool] = False

    def build(self, spec: DatasetSpec, hp: Any) -> nn.Module:
        return build_er_net(hp.backbone, spec.shape[0], spec.classes, spec.shape[1], hp.embed_dim,
                            h1=hp.cls_hidden1, h2=hp.cls_hidden2, width=hp.width,
                            discriminator=self.use_discriminator, disc_hidden=hp.disc_hidden,
                            variational=self.variational)

    # ---- hooks the variants override -------------------------------------------------------
    def adversarial(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, hp: Any, frac: float) -> torch.Tensor:
        """Min-max inner step: PGD-Linf on the whole model with the true labels."""
        return _madry.adversarial_batch(model, x, y, hp.eps * frac, hp.attack_steps, hp.step_size * frac)

    def classification_loss(self, model: DefendedModel, x: torch.Tensor, x_adv: torch.Tensor | None,
                            y: torch.Tensor, hp: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Step 2's loss and the codes for the regularisers: CE on the adversarial batch if any."""
        net: ERNet = model.net  # type: ignore[assignment]
        xt = x if x_adv is None else x_adv
        z, mu, logvar = net.code(model.normalize(xt))
        codes = {"z": z, "mu": mu, "x": xt}
        if logvar is not None:
            codes["logvar"] = logvar
        return F.cross_entropy(net.classifier(z), y), codes

    # ---- the shared loop -------------------------------------------------------------------
    def train(self, model: DefendedModel, data: Dataset, hp: Any, seed: int, progress: bool = True) -> dict[str, Any]:
        net: ERNet = model.net  # type: ignore[assignment]
        dev = next(net.parameters()).device
        enc_opt = make_optimizer(net.encoder.parameters(), hp, hp.lr)
        cla_opt = make_optimizer(net.classifier.parameters(), hp, hp.lr * hp.c_lr_factor)
        disc = net.discriminator
        dis_opt = make_optimizer(disc.parameters(), hp, hp.lr * hp.d_lr_factor) if disc is not None else None
        prior_gen = torch.Generator().manual_seed(seed + 12345)

        def step(x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, float]:
            out: dict[str, float] = {}
            frac = hp.eps_fraction(epoch) if hp.min_max else 0.0
            x_adv = self.adversarial(model, x, y, hp, frac) if frac > 0 else None
            loss, codes = self.classification_loss(model, x, x_adv, y, hp)
            z = codes["z"]
            # (1) critic: ascend lambda * (mean D(z_prior) - mean D(Q(x))), then clip its weights
            if disc is not None and dis_opt is not None:
                z_prior = sample_prior(hp.prior, len(z), net.embed_dim, device=dev, generator=prior_gen)
                d_obj = hp.lambda_d * (disc(z_prior).mean() - disc(z.detach()).mean())
                dis_opt.zero_grad()
                (-d_obj).backward()
                dis_opt.step()
                disc.clip_(hp.clip)
                out["d_obj"] = d_obj.item()
            # (2) encoder + classifier: descend the classification loss (+ KL for VAE-CLA)
            total = loss
            if "logvar" in codes:
                kl = kl_to_standard_normal(codes["mu"], codes["logvar"])
                total = loss + hp.kl_weight * kl
                out["kl"] = kl.item()
            enc_opt.zero_grad()
            cla_opt.zero_grad()
            total.backward()
            enc_opt.step()
            cla_opt.step()
            out["adv_loss" if x_adv is not None else "loss"] = loss.item()
            # (3) encoder: ascend lambda1 * mean D(Q(x)) with the critic frozen
            if disc is not None:
                disc.requires_grad_(False)
                z3 = net.code(model.normalize(codes["x"]))[0]
                e_obj = hp.lambda_enc * disc(z3).mean()
                enc_opt.zero_grad()
                (-e_obj).backward()
                enc_opt.step()
                disc.requires_grad_(True)
                out["e_obj"] = e_obj.item()
            return out

        return fit(model, data, hp, seed, progress, step, desc=f"train {self.name}")


@register_defense("er-classifier")
class ERClassifier(ERFamily):
    """ER-Classifier: encoder, critic on codes, classifier; min-max PGD training."""

    presets = er_presets()


@dataclass
class ERMinusHParams(ERHParams):
    min_max: bool = False

    def validate(self) -> None:
        super().validate()
        if self.min_max:
            raise UserInputError("er-classifier- trains without min-max; use 'er-classifier' for min-max training.")


@register_defense("er-classifier-")
class ERClassifierMinus(ERFamily):
    """ER-Classifier-: the same framework trained on clean batches only (never attacks)."""

    HParams = ERMinusHParams
    presets = er_presets(min_max=False, warmup_epochs=0, ramp_epochs=0)
