"""Shared code of AFD and its ablation ``afd-matching``: hyper-parameters, presets, optimiser
helpers and the training attack. Not a plugin (no entry point); the method is described in
:mod:`defenses.afd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustbench_er.defenses._afd_nets import AFDNet
from robustbench_er.plugin import (
    AdversarialHParams,
    DatasetSpec,
    DefendedModel,
    Defense,
    UserInputError,
    adversarial_batch,
    build_backbone,
)

DA_LOSSES = ("softplus", "wgan")


@dataclass
class AFDHParams(AdversarialHParams):
    backbone: str = "resnet5"
    epochs: int = 300
    batch_size: int = 50
    #: lr of the E + Dc step (LR_EDc)
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    #: lr of the adversarial E step (LR_E) and of Da (LR_Da)
    lr_e: float = 0.5
    lr_da: float = 0.1
    #: hidden width F of the adversarial decoder
    da_hidden: int = 200
    #: softplus (paper) | wgan (reference default)
    da_loss: str = "softplus"
    #: epochs after which every lr is divided by 10 (0 = never)
    lr_decay1: int = 0
    lr_decay2: int = 0

    def validate(self) -> None:
        super().validate()
        if self.da_loss not in DA_LOSSES:
            raise UserInputError(f"Unknown da_loss {self.da_loss!r}; use one of {', '.join(DA_LOSSES)}.")
        if min(self.lr, self.lr_e, self.lr_da) <= 0:
            raise UserInputError("lr, lr_e and lr_da must be positive.")
        if self.da_hidden < 1:
            raise UserInputError(f"da_hidden must be at least 1; got {self.da_hidden}.")


def afd_presets(**changes: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """AFD's presets per dataset and profile (``changes`` applied to all)."""
    quick = dict(backbone="tiny_cnn", optimizer="adam", weight_decay=1e-4, lr=2e-3, lr_e=2e-3,
                 lr_da=2e-3, da_hidden=64)
    mnist_paper = dict(backbone="resnet5", epochs=300, batch_size=50, lr=0.1, lr_e=0.5, lr_da=0.1, momentum=0.9,
                       weight_decay=1e-4, da_hidden=200, eps=0.3, attack_steps=40, step_size=0.01)
    # Bashivan et al. 2021, Table A2 and appendix 8.1 (CIFAR10 and CIFAR100 alike)
    cifar_paper = dict(backbone="resnet18", epochs=850, batch_size=64, lr=0.1, lr_e=0.5, lr_da=0.1,
                       momentum=0.8, weight_decay=1e-4, da_hidden=512, lr_decay1=350, lr_decay2=700,
                       eps=8 / 255, attack_steps=20, step_size=2 / 255)
    cifar_quick = dict(quick, epochs=2, batch_size=64, eps=8 / 255, attack_steps=5,
                       step_size=2.5 * 8 / 255 / 5, ramp_epochs=1, train_samples=10000)
    base: dict[str, dict[str, dict[str, Any]]] = {
        "digits": {"quick": dict(quick, epochs=8, batch_size=64, eps=0.3, attack_steps=5, step_size=0.15,
                                 warmup_epochs=2, ramp_epochs=3),
                   "paper": dict(mnist_paper)},
        "mnist5k": {"quick": dict(quick, epochs=8, batch_size=64, eps=0.3, attack_steps=10, step_size=0.075,
                                  warmup_epochs=1, ramp_epochs=3),
                    "paper": dict(mnist_paper)},
        "mnist": {"quick": dict(quick, epochs=2, batch_size=64, eps=0.3, attack_steps=10, step_size=0.075,
                                ramp_epochs=2, train_samples=10000),
                  "paper": dict(mnist_paper)},
        "cifar10": {"quick": dict(cifar_quick), "paper": dict(cifar_paper)},
        # Bashivan et al. 2021, Table A2: the CIFAR-100 row is the CIFAR-10 one (ResNet18, same rates, batch, epochs)
        "cifar100": {"quick": dict(cifar_quick), "paper": dict(cifar_paper)},
    }
    return {ds: {prof: dict(v, **changes) for prof, v in per.items()} for ds, per in base.items()}


def lr_scale(hp: Any, epoch: int) -> float:
    return 0.1 ** sum(1 for m in (hp.lr_decay1, hp.lr_decay2) if m and epoch >= m)


def make_opt(params: Any, hp: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=hp.momentum, weight_decay=weight_decay)
    raise UserInputError(f"Unknown optimizer {hp.optimizer!r}; use 'sgd' or 'adam'.")


def set_lrs(opts: list[tuple[torch.optim.Optimizer, float]], scale: float) -> None:
    for opt, base in opts:
        for group in opt.param_groups:
            group["lr"] = base * scale


class AFDBase(Defense):
    """Shared build and training-attack plumbing of AFD and its ablation (not registered)."""

    HParams = AFDHParams
    with_da = True

    def build(self, spec: DatasetSpec, hp: Any) -> nn.Module:
        backbone = build_backbone(hp.backbone, spec.shape[0], spec.classes, spec.shape[1])
        return AFDNet(backbone, spec.classes, hp.da_hidden, with_da=self.with_da)

    def adversarial(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, hp: Any, frac: float) -> torch.Tensor:
        """PGD-Linf on E+Dc (eval mode) with the true labels."""
        return adversarial_batch(model, x, y, hp.eps * frac, hp.attack_steps, hp.step_size * frac)
