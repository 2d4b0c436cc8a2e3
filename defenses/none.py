"""No defense: standard training with cross-entropy on clean images.

The baseline every robustness table starts from ("NT" in seed 004, "no defense" elsewhere).
Hyper-parameters: backbone, epochs, batch size, optimizer and learning rate; the ``paper``
presets use the backbones of the papers (SmallCNN on MNIST, ResNet18 on CIFAR10, as the AFD
paper's NT baselines) trained to convergence on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from robustbench_er.data import Dataset, DatasetSpec
from robustbench_er.defense import DefendedModel, Defense, HParams
from robustbench_er.registry import register_defense
from robustbench_er.training import build_from_backbone, train_clean


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
    }

    def build(self, spec: DatasetSpec, hp: Any) -> nn.Module:
        return build_from_backbone(spec, hp)

    def train(self, model: DefendedModel, data: Dataset, hp: Any, seed: int, progress: bool = True) -> dict[str, Any]:
        return train_clean(model, data, hp, seed, progress, desc="train none")


