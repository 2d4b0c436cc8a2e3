"""Noisy backbones for Random Self-Ensemble (RSE; Liu et al., ECCV 2018, arXiv:1712.00673).

A :class:`Noise` layer adds fresh Gaussian noise ``N(0, std^2)`` to its input on every forward
pass, in training and at test time alike. RSE puts one before every convolution: the first
(on the input image) with ``init_std``, the others with ``inner_std``. The noise is added on the
scale the network sees. The networks here receive normalised images; to keep the input noise in
pixel units (the reference code feeds raw [0, 1] images), the first layer's std can be given per
channel (``init_std / data_std``, see ``defenses.rse``).

Networks here (each exposes ``features(x)`` and ``forward(x)`` like the shared backbones):

* ``rse_tiny_cnn``: TinyCNN (conv16-pool-conv32-pool-fc64) with noise before both convs;
* ``rse_small_cnn``: the TRADES SmallCNN with noise before its four convs;
* ``rse_vgg16``: VGG16 with batch norm (the reference's CIFAR10 network) with noise before its
  13 convs;
* ``rse_mnist_4c4f``, ``rse_vgg19_bn``, ``rse_stl10_6c4f``, ``rse_tiny_13c4f``: the baseline
  networks of the ER-Classifier paper (Li et al. 2021, Table 15,
  :mod:`robustbench_er.models.paper_nets`: MNIST 4 conv + 4 FC, CIFAR10 VGG19-BN, STL10 6 conv with BN + 4 FC on 96x96, Tiny ImageNet
  13 conv with BN + 4 FC on 64x64) with noise before every conv (``init_std`` before the first,
  ``inner_std`` before the others; none before the FC layers, as in the reference's VGG).
  The ER paper compares RSE on these networks; ``rse``'s stl10 and tiny-imagenet ``paper``
  presets use them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustbench_er.plugin import PAPER_NETS, UserInputError


class Noise(nn.Module):
    """Adds ``N(0, std^2)`` noise on every call (training and evaluation)."""

    def __init__(self, std: float | tuple[float, ...]) -> None:
        super().__init__()
        stds = tuple(float(s) for s in std) if isinstance(std, (tuple, list)) else (float(std),)
        self.stds = stds
        # not a buffer: a fixed setting of the architecture, not a weight to save
        self._scale = torch.tensor(stds, dtype=torch.float32).view(1, -1, 1, 1) if len(stds) > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if max(self.stds) <= 0:
            return x
        if self._scale is None:
            return x + torch.randn_like(x) * self.stds[0]
        return x + torch.randn_like(x) * self._scale.to(x)

    def extra_repr(self) -> str:
        return f"std={self.stds if len(self.stds) > 1 else self.stds[0]}"


class RSETinyCNN(nn.Module):
    def __init__(self, in_channels: int = 1, classes: int = 10, image_size: int = 28, *,
                 init_std: float | tuple[float, ...] = 0.4, inner_std: float = 0.1, width: int = 16) -> None:
        super().__init__()
        side = 4 if image_size >= 16 else 2
        self.body = nn.Sequential(
            Noise(init_std), nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            Noise(inner_std), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(side),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * side * side, 64), nn.ReLU())
        self.fc = nn.Linear(64, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class RSESmallCNN(nn.Module):
    def __init__(self, in_channels: int = 1, classes: int = 10, image_size: int = 28, *,
                 init_std: float | tuple[float, ...] = 0.4, inner_std: float = 0.1, dropout: float = 0.5) -> None:
        super().__init__()
        pad = 1 if image_size < 20 else 0
        self.body = nn.Sequential(
            Noise(init_std), nn.Conv2d(in_channels, 32, 3), nn.ReLU(),
            Noise(inner_std), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            Noise(inner_std), nn.Conv2d(32, 64, 3, padding=pad), nn.ReLU(),
            Noise(inner_std), nn.Conv2d(64, 64, 3, padding=pad), nn.ReLU(),
            nn.AdaptiveMaxPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 16, 200), nn.ReLU(), nn.Dropout(dropout), nn.Linear(200, 200), nn.ReLU(),
        )
        self.fc = nn.Linear(200, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class RSEVGG16(nn.Module):
    def __init__(self, in_channels: int = 3, classes: int = 10, image_size: int = 32, *,
                 init_std: float | tuple[float, ...] = 0.4, inner_std: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, first = in_channels, True
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [Noise(init_std if first else inner_std), nn.Conv2d(cin, int(v), 3, padding=1),
                       nn.BatchNorm2d(int(v)), nn.ReLU()]
            cin, first = int(v), False
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.body(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _noisy_paper_net(name: str) -> Callable[..., nn.Module]:
    """The Table 15 network ``name`` with a :class:`Noise` layer before every convolution."""
    base = PAPER_NETS[name]

    def build(in_channels: int, classes: int, image_size: int, *, init_std: float | tuple[float, ...] = 0.4,
              inner_std: float = 0.1) -> nn.Module:
        return base(in_channels, classes, image_size,
                    pre_conv=lambda i: Noise(init_std if i == 0 else inner_std))

    build.__name__ = f"rse_{name}"
    return build


RSE_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "rse_tiny_cnn": RSETinyCNN, "rse_small_cnn": RSESmallCNN, "rse_vgg16": RSEVGG16,
    **{f"rse_{name}": _noisy_paper_net(name) for name in PAPER_NETS},
}


def build_rse_net(name: str, in_channels: int, classes: int, image_size: int, *,
                  init_std: float | tuple[float, ...], inner_std: float) -> nn.Module:
    """A noisy backbone by name (a key of :data:`RSE_BACKBONES`)."""
    if name not in RSE_BACKBONES:
        raise UserInputError(f"Unknown RSE backbone {name!r}; known: {', '.join(sorted(RSE_BACKBONES))}.")
    return RSE_BACKBONES[name](in_channels=in_channels, classes=classes, image_size=image_size,
                               init_std=init_std, inner_std=inner_std)
