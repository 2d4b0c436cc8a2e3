"""No defense: standard training with cross-entropy on clean images.

The baseline every robustness table starts from ("NT" in Bashivan et al. 2021, "no defense"
elsewhere).
Hyper-parameters: backbone, epochs, batch size, optimizer and learning rate. ``paper`` presets
(``docs/defenses.md`` has the full table):

* ``mnist`` (and ``mnist5k``, ``digits``): the TRADES SmallCNN, SGD 0.01, 100 epochs (our
  choice; the MNIST baselines of the papers are other small CNNs);
* ``cifar10``, ``cifar100``: ResNet18, the AFD paper's NT baselines (Bashivan et al. 2021,
  Table 1). The paper gives no schedule for NT (its Table A2 lists AFD's rates), so ours: SGD
  lr 0.1 (constant), momentum 0.9, weight decay 5e-4, batch 128, 100 epochs;
* ``stl10``, ``tiny-imagenet``: the ER-Classifier paper's "No Defense" baseline (Li et al. 2021):
  Table 15's networks (``stl10_6c4f``, ``tiny_13c4f``) and 30 epochs (section 4.1). Batch,
  optimizer and lr are not in the paper; ours: the ER code's batches (64 on STL10, 100 on Tiny
  ImageNet), SGD lr 0.01 (constant), momentum 0.9, weight decay 5e-4.

ER's No-Defense baseline on MNIST and CIFAR10 (Table 15 networks, 30 epochs) is the variant
``none[backbone=mnist_4c4f,epochs=30]`` / ``none[backbone=vgg19_bn,epochs=30,batch_size=100,
lr=0.01]`` (``paper`` profile).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from robustbench_er.plugin import (
    Dataset,
    DatasetSpec,
    DefendedModel,
    Defense,
    HParams,
    build_from_backbone,
    register_defense,
    train_clean,
)


@dataclass
class NoneHParams(HParams):
    pass


@register_defense("none")
class NoDefense(Defense):
    """Standard (non-robust) training."""

    HParams = NoneHParams
    presets = {
        "digits": {"quick": dict(backbone="tiny_cnn", epochs=8, batch_size=64, optimizer="adam", lr=3e-3),
                   "paper": dict(backbone="small_cnn", epochs=50, batch_size=64, lr=0.01)},
        "mnist5k": {"quick": dict(backbone="tiny_cnn", epochs=6, batch_size=64, optimizer="adam", lr=2e-3),
                    "paper": dict(backbone="small_cnn", epochs=100, batch_size=128, lr=0.01)},
        "mnist": {"quick": dict(backbone="tiny_cnn", epochs=1, batch_size=128, optimizer="adam", lr=2e-3,
                                train_samples=10000),
                  "paper": dict(backbone="small_cnn", epochs=100, batch_size=128, lr=0.01)},
        "cifar10": {"quick": dict(backbone="tiny_cnn", epochs=2, batch_size=128, optimizer="adam", lr=2e-3,
                                  train_samples=10000),
                    "paper": dict(backbone="resnet18", epochs=100, batch_size=128, lr=0.1, weight_decay=5e-4)},
        "cifar100": {"quick": dict(backbone="tiny_cnn", epochs=2, batch_size=128, optimizer="adam", lr=2e-3,
                                   train_samples=10000),
                     "paper": dict(backbone="resnet18", epochs=100, batch_size=128, lr=0.1, weight_decay=5e-4)},
        # ER-Classifier's protocol (Li et al. 2021, Table 15, 30 epochs); paper profile only, as the ER family
        "stl10": {"paper": dict(backbone="stl10_6c4f", epochs=30, batch_size=64, lr=0.01, momentum=0.9,
                                weight_decay=5e-4)},
        "tiny-imagenet": {"paper": dict(backbone="tiny_13c4f", epochs=30, batch_size=100, lr=0.01, momentum=0.9,
                                        weight_decay=5e-4)},
    }

    def build(self, spec: DatasetSpec, hp: Any) -> nn.Module:
        return build_from_backbone(spec, hp)

    def train(self, model: DefendedModel, data: Dataset, hp: Any, seed: int, progress: bool = True) -> dict[str, Any]:
        return train_clean(model, data, hp, seed, progress, desc="train none")


