"""TRADES: "Theoretically Principled Trade-off between Robustness and Accuracy"
(Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan; ICML 2019; arXiv:1901.08573).

Threat model: Linf ball of radius ``eps`` around images in [0, 1]; white-box.

Training objective per batch: ``CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x'))`` where
``x'`` maximises the KL term inside the ball (inner maximisation started at ``x + 0.001 * N(0, I)``,
sign-gradient steps, projection to the ball and to [0, 1], network in eval mode while attacking).
``beta = 1 / lambda`` trades clean accuracy for robustness.

Hyper-parameters and paper values (reference code ``trades.py``, ``train_trades_mnist.py``,
``train_trades_cifar10.py``):

* MNIST: eps 0.3, 40 steps of 0.01, SGD lr 0.01, momentum 0.9, batch 128, 100 epochs, SmallCNN
  (conv32-32, pool, conv64-64, pool, fc200, dropout 0.5, fc200, fc10), beta 1.0 (the reference
  default; the paper's MNIST table uses 1/lambda = 6 for its best robust model, so both are
  defensible; we keep the reference default for MNIST).
* CIFAR10: eps 0.031, 10 steps of 0.007, SGD lr 0.1, momentum 0.9, weight decay 2e-4, batch 128,
  100 epochs (lr / 10 at 75 and 90 in the reference), beta 6.0 (the published CIFAR10 model).

``paper`` presets per dataset and where they come from (``docs/defenses.md`` has the full table):

* ``mnist`` (and ``mnist5k``, ``digits``), ``cifar10``: the TRADES reference settings above;
* ``cifar100``: the AFD paper's TRADES baseline (Bashivan et al. 2021, Table 1: ResNet18,
  trained with "the official code"; its Table A2 lists AFD's own rates only), so the official
  CIFAR10 settings on ResNet18, as the ``cifar10`` preset (eps 0.031 ~ 8/255);
* ``stl10``, ``tiny-imagenet``: the ER-Classifier paper's protocol (Li et al. 2021), where
  Trades is a baseline of Figure 3: Table 9's training attack (STL10 eps 0.03, 20 iterations; Tiny ImageNet
  0.01, 10 iterations; the table is stated for Madry and ER-Classifier, and is the only
  per-dataset attack setting the paper gives), Table 15's networks (``stl10_6c4f``,
  ``tiny_13c4f``) and 30 epochs (section 4.1). Not in the paper, our choice: beta 6.0 (the
  CIFAR10 value), step sizes as ``madry``'s (2/255; 2.5 * eps / steps), batches of the ER code
  (64; 100), SGD lr 0.01 (constant), momentum 0.9, weight decay 2e-4.

ER's protocol on CIFAR10 differs from the TRADES settings (eps 0.03, 20 steps, VGG19-BN,
30 epochs); it is the variant ``trades[backbone=vgg19_bn,epochs=30,batch_size=100,lr=0.01,
eps=0.03,attack_steps=20,step_size=0.01]`` (``paper`` profile; step 0.01 as ER-Trades's preset,
batch and lr as the stl10 / tiny-imagenet presets), a defense of its own in leaderboards. On
MNIST the attack is the same (0.3, 40 steps of 0.01); ER's network and length are
``trades[backbone=mnist_4c4f,epochs=30]``.

Source: ours (the loss is a few lines; no package ships it).

Differences from the reference code and why:

* CIFAR10 / CIFAR100 ``paper`` presets use ResNet18 instead of WideResNet-34-10 (the benchmark compares
  defenses on ResNet-sized nets, like the ``madry`` preset); the reference's lr schedule is not
  reproduced (the shared ``fit`` loop has a constant lr).
* ``quick`` presets (CPU): TinyCNN, Adam, a few epochs, 10 attack steps of 2.5 * eps / 10, one
  clean warm-up epoch and a linear eps ramp (as ``madry``'s quick preset); without the ramp a
  small net trained for minutes does not learn. The paper trains with the full eps from epoch 1.
* The KL term uses ``reduction="batchmean"`` (the reference sums and divides by the batch size:
  the same value).

The inner maximisation and the loss (shared with ER-Trades) are in :mod:`robustbench_er.models.training`:
:func:`~robustbench_er.models.training.trades_adversarial`, :func:`~robustbench_er.models.training.trades_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_er.plugin import (
    AdversarialHParams,
    Dataset,
    DatasetSpec,
    DefendedModel,
    Defense,
    UserInputError,
    build_from_backbone,
    fit,
    make_optimizer,
    register_defense,
    trades_adversarial,
    trades_loss,
)


@dataclass
class TradesHParams(AdversarialHParams):
    #: weight of the KL (robustness) term, 1 / lambda in the paper
    beta: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.beta < 0:
            raise UserInputError(f"TRADES beta must be non-negative; got {self.beta}.")


_MNIST_PAPER = dict(backbone="small_cnn", epochs=100, batch_size=128, lr=0.01, momentum=0.9,
                    beta=1.0, eps=0.3, attack_steps=40, step_size=0.01)

#: the official CIFAR10 settings on ResNet18 (cifar10; cifar100 as the AFD paper's TRADES baseline)
_CIFAR_PAPER = dict(backbone="resnet18", epochs=100, batch_size=128, lr=0.1, momentum=0.9,
                    weight_decay=2e-4, beta=6.0, eps=0.031, attack_steps=10, step_size=0.007)
_CIFAR_QUICK = dict(backbone="tiny_cnn", epochs=2, batch_size=128, optimizer="adam", lr=2e-3,
                    beta=6.0, eps=0.031, attack_steps=5, step_size=2.5 * 0.031 / 5, train_samples=10000)


@register_defense("trades")
class Trades(Defense):
    """TRADES adversarial training (clean CE + beta * KL to the worst point of the ball)."""

    HParams = TradesHParams
    presets = {
        "digits": {"quick": dict(backbone="tiny_cnn", epochs=8, batch_size=64, optimizer="adam", lr=3e-3,
                                 beta=1.0, eps=0.3, attack_steps=5, step_size=0.15, warmup_epochs=2,
                                 ramp_epochs=3),
                   "paper": dict(_MNIST_PAPER, batch_size=64)},
        "mnist5k": {"quick": dict(backbone="tiny_cnn", epochs=8, batch_size=64, optimizer="adam", lr=2e-3,
                                  beta=1.0, eps=0.3, attack_steps=10, step_size=0.075, warmup_epochs=1,
                                  ramp_epochs=3),
                    "paper": dict(_MNIST_PAPER)},
        "mnist": {"quick": dict(backbone="tiny_cnn", epochs=1, batch_size=128, optimizer="adam", lr=2e-3,
                                beta=1.0, eps=0.3, attack_steps=10, step_size=0.075, train_samples=10000),
                  "paper": dict(_MNIST_PAPER)},
        "cifar10": {"quick": dict(_CIFAR_QUICK),
                    "paper": dict(_CIFAR_PAPER)},
        "cifar100": {"quick": dict(_CIFAR_QUICK),
                     "paper": dict(_CIFAR_PAPER)},
        # ER-Classifier's protocol (Li et al. 2021, Tables 9 and 15, 30 epochs); paper profile only, as the ER family
        "stl10": {"paper": dict(backbone="stl10_6c4f", epochs=30, batch_size=64, lr=0.01, momentum=0.9,
                                weight_decay=2e-4, beta=6.0, eps=0.03, attack_steps=20, step_size=2 / 255)},
        "tiny-imagenet": {"paper": dict(backbone="tiny_13c4f", epochs=30, batch_size=100, lr=0.01, momentum=0.9,
                                        weight_decay=2e-4, beta=6.0, eps=0.01, attack_steps=10,
                                        step_size=2.5 * 0.01 / 10)},
    }

    def build(self, spec: DatasetSpec, hp: Any) -> nn.Module:
        return build_from_backbone(spec, hp)

    def train(self, model: DefendedModel, data: Dataset, hp: Any, seed: int, progress: bool = True) -> dict[str, Any]:
        opt = make_optimizer(model.parameters(), hp)

        def step(x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, float]:
            frac = hp.eps_fraction(epoch)
            if frac == 0:
                loss = F.cross_entropy(model(x), y)
                out = {"ce": loss.item()}
            else:
                x_adv = trades_adversarial(model, x, eps=hp.eps * frac, steps=hp.attack_steps,
                                           step_size=hp.step_size * frac)
                # two forward passes, as the reference (BatchNorm sees clean and adversarial apart)
                loss = trades_loss(model(x), model(x_adv), y, hp.beta)
                out = {"trades": loss.item()}
            opt.zero_grad()
            loss.backward()
            opt.step()
            return out

        return fit(model, data, hp, seed, progress, step, desc="train trades")
