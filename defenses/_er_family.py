"""Shared code of the ER-Classifier family (``er-classifier``, ``er-classifier-``, ``er-trades``,
``e-cla``, ``vae-cla``): hyper-parameters, presets and the training loop of Algorithm 1 with the
hooks the variants override. Not a plugin (no entry point); the method, its paper and the
differences from the reference code are described in :mod:`defenses.er_classifier`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_er.defenses._er_nets import (
    ENCODERS,
    ERNet,
    build_er_net,
    check_prior,
    sample_prior,
)
from robustbench_er.plugin import (
    AdversarialHParams,
    Dataset,
    DatasetSpec,
    DefendedModel,
    Defense,
    HParams,
    UserInputError,
    adversarial_batch,
    fit,
    make_optimizer,
)

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
        return adversarial_batch(model, x, y, hp.eps * frac, hp.attack_steps, hp.step_size * frac)

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
