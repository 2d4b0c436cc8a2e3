"""Shared backbones. Each takes ``in_channels`` and ``classes`` and exposes ``features(x)``
(the embedding before the last linear layer) beside ``forward(x)`` (logits)."""

from robustbench_er.models.resnet import ResNet5, ResNet18
from robustbench_er.models.small_cnn import SmallCNN, TinyCNN

BACKBONES = {"small_cnn": SmallCNN, "tiny_cnn": TinyCNN, "resnet5": ResNet5, "resnet18": ResNet18}

__all__ = ["BACKBONES", "ResNet5", "ResNet18", "SmallCNN", "TinyCNN", "build_backbone"]


def build_backbone(name: str, in_channels: int, classes: int, image_size: int):  # type: ignore[no-untyped-def]
    from robustbench_er.errors import UserInputError

    if name not in BACKBONES:
        raise UserInputError(f"Unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}.")
    return BACKBONES[name](in_channels=in_channels, classes=classes, image_size=image_size)
