"""Shared backbones. Each takes ``in_channels`` and ``classes`` and exposes ``features(x)``
(the embedding before the last linear layer) beside ``forward(x)`` (logits).

``mnist_4c4f``, ``vgg19_bn``, ``stl10_6c4f`` and ``tiny_13c4f`` are the baseline networks of the
ER-Classifier paper (Li et al. 2021, Table 15), in :mod:`robustbench_er.models.paper_nets`."""

from robustbench_er.core.errors import UserInputError
from robustbench_er.models.paper_nets import PAPER_NETS, VGG19BN, Mnist4C4F, STL10Net6C4F, Tiny13C4F
from robustbench_er.models.resnet import ResNet5, ResNet18
from robustbench_er.models.small_cnn import SmallCNN, TinyCNN

BACKBONES = {"small_cnn": SmallCNN, "tiny_cnn": TinyCNN, "resnet5": ResNet5, "resnet18": ResNet18, **PAPER_NETS}

__all__ = ["BACKBONES", "VGG19BN", "Mnist4C4F", "ResNet5", "ResNet18", "STL10Net6C4F", "SmallCNN", "Tiny13C4F",
           "TinyCNN", "build_backbone"]


def build_backbone(name: str, in_channels: int, classes: int, image_size: int):  # type: ignore[no-untyped-def]

    if name not in BACKBONES:
        raise UserInputError(f"Unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}.")
    return BACKBONES[name](in_channels=in_channels, classes=classes, image_size=image_size)
