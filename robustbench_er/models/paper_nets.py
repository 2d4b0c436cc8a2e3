"""The baseline networks of the ER-Classifier paper (Li et al. 2021, ICCV; appendix G,
Table 15 "Architectures of baseline networks"), used by the plain-classifier defenses (``none``,
``madry``, ``trades``; noisy copies for ``rse``) under ER's protocol.

Table 15 gives only layer counts; everything else below is our choice and is marked so.

* ``mnist_4c4f`` -- "4 Conv. + 4 FC layers". Convolutions are those of the Carlini & Wagner /
  TRADES MNIST net (3x3 conv 32, conv 32, max-pool 2, conv 64, conv 64, max-pool 2, ReLU after
  every conv, no BatchNorm: Table 15 names BN only for the other three nets), then
  FC 200, FC 200, FC 200 (ReLU) and FC to the classes: the C&W net's two FC-200 layers plus the
  one more FC the table counts. Widths are ours (the paper gives none). On 28x28 the convs are
  unpadded (28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4, flatten 64*4*4 = 1024); below 20 pixels the
  last two convs are padded so 8x8 inputs fit. About 0.35M parameters on MNIST.
* ``vgg19_bn`` -- "VGG19 with BN" (Simonyan & Zisserman's configuration E): 16 3x3 convs
  (64, 64, M, 128, 128, M, 256 x4, M, 512 x4, M, 512 x4, M) each followed by BatchNorm and ReLU,
  5 max-pools, then VGG's three FC layers with the 4096-wide hidden layers narrowed to 512, the
  usual CIFAR form: FC 512, FC 512 (ReLU), FC to the classes (no dropout). On 32x32 the conv
  output is 512x1x1; an adaptive average pool to 1x1 (the identity on 32x32) lets larger
  images through. About 20.6M parameters on CIFAR10.
* ``stl10_6c4f`` -- "6 Conv. with BN and 5 Max.Pool + 4 FC". 3x3 convs with BN and ReLU:
  64, M, 128, M, 256, 256, M, 512, M, 512, M (96 -> 48 -> 24 -> 12 -> 6 -> 3), flatten
  512*3*3 = 4608, then FC 512, FC 512, FC 512 (ReLU) and FC to the classes. Channel and FC
  widths are ours (VGG-style doubling; the paper gives none). About 7.4M parameters on STL10.
* ``tiny_13c4f`` -- "13 Conv. with BN and 5 Max.Pool + 4 FC": the VGG16-BN convolutions
  (64 x2, M, 128 x2, M, 256 x3, M, 512 x3, M, 512 x3, M; 64 -> 2), flatten 512*2*2 = 2048,
  then FC 512, FC 512, FC 512 (ReLU) and FC to the classes (FC widths ours). About 16.4M
  parameters on Tiny ImageNet.

``stl10_6c4f`` and ``tiny_13c4f`` flatten the last feature map, whose size is computed from
``image_size``; ``vgg19_bn``, ``stl10_6c4f`` and ``tiny_13c4f`` need images of at least 32x32
(five 2x2 max-pools).

Every network has ``body`` (convolutions), ``head`` (flatten and the hidden FC layers) and
``fc`` (the last linear layer); ``features(x) = head(body(x))`` is the input of ``fc``, and
``forward(x) = fc(features(x))`` the logits. ``pre_conv`` (optional) is called with the index of
each convolution (0 = the first) and its module is put right before that convolution: the RSE
noise layers use it (:mod:`defenses._rse_nets`); without it the networks are plain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from robustbench_er.core.errors import UserInputError

#: called with a convolution's index; returns a module put right before that convolution
PreConv = Callable[[int], nn.Module]

#: "M" is a 2x2 max-pool, an int a 3x3 convolution with that many output channels
_VGG19: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
_VGG16: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                 512, 512, 512, "M", 512, 512, 512, "M")
_STL6: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, "M", 512, "M")
_MNIST4: tuple[int | str, ...] = (32, 32, "M", 64, 64, "M")


def conv_stack(cfg: Sequence[int | str], in_channels: int, *, bn: bool, paddings: Sequence[int] | None = None,
               pre_conv: PreConv | None = None) -> nn.Sequential:
    """3x3 convolutions (each followed by BatchNorm when ``bn``, then ReLU) and 2x2 max-pools
    as ``cfg`` lists them; ``paddings[i]`` is the padding of the i-th convolution (1 when not
    given); ``pre_conv(i)`` is put before the i-th convolution."""
    layers: list[nn.Module] = []
    c, i = in_channels, 0
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out = int(v)
        if pre_conv is not None:
            layers.append(pre_conv(i))
        pad = 1 if paddings is None else paddings[i]
        layers.append(nn.Conv2d(c, out, 3, padding=pad, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU())
        c, i = out, i + 1
    return nn.Sequential(*layers)


def output_side(cfg: Sequence[int | str], image_size: int, paddings: Sequence[int] | None = None) -> int:
    """Side of the last feature map of :func:`conv_stack` for square ``image_size`` inputs."""
    side, i = image_size, 0
    for v in cfg:
        if v == "M":
            side //= 2
        else:
            side = side - 2 + 2 * (1 if paddings is None else paddings[i])
            i += 1
    return side


def _check_size(name: str, image_size: int, minimum: int) -> None:
    if image_size < minimum:
        raise UserInputError(f"The {name!r} backbone needs images of at least {minimum}x{minimum}; "
                             f"got {image_size}x{image_size}.")


def fc_head(in_features: int, widths: Sequence[int]) -> nn.Sequential:
    """Flatten, then Linear + ReLU for each of ``widths``."""
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_features
    for w in widths:
        layers += [nn.Linear(d, w), nn.ReLU()]
        d = w
    return nn.Sequential(*layers)


class _PaperNet(nn.Module):
    """``body`` -> ``head`` (features) -> ``fc`` (logits)."""

    body: nn.Module
    head: nn.Module
    fc: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class Mnist4C4F(_PaperNet):
    """MNIST baseline of Li et al. 2021, Table 15: 4 conv + 4 FC (widths ours, see the module
    docstring)."""

    def __init__(self, in_channels: int = 1, classes: int = 10, image_size: int = 28, *,
                 hidden: Sequence[int] = (200, 200, 200), pre_conv: PreConv | None = None) -> None:
        super().__init__()
        _check_size("mnist_4c4f", image_size, 8)
        pads = (0, 0, 0, 0) if image_size >= 20 else (0, 0, 1, 1)
        self.body = conv_stack(_MNIST4, in_channels, bn=False, paddings=pads, pre_conv=pre_conv)
        side = output_side(_MNIST4, image_size, pads)
        self.head = fc_head(64 * side * side, hidden)
        self.fc = nn.Linear(hidden[-1], classes)


class VGG19BN(_PaperNet):
    """CIFAR10 baseline of Li et al. 2021, Table 15: VGG19 with BatchNorm (16 conv, 5 max-pools,
    3 FC)."""

    def __init__(self, in_channels: int = 3, classes: int = 10, image_size: int = 32, *,
                 hidden: Sequence[int] = (512, 512), pre_conv: PreConv | None = None) -> None:
        super().__init__()
        _check_size("vgg19_bn", image_size, 32)
        self.body = nn.Sequential(conv_stack(_VGG19, in_channels, bn=True, pre_conv=pre_conv),
                                  nn.AdaptiveAvgPool2d(1))
        self.head = fc_head(512, hidden)
        self.fc = nn.Linear(hidden[-1], classes)


class STL10Net6C4F(_PaperNet):
    """STL10 baseline of Li et al. 2021, Table 15: 6 conv with BN, 5 max-pools, 4 FC (widths
    ours)."""

    def __init__(self, in_channels: int = 3, classes: int = 10, image_size: int = 96, *,
                 hidden: Sequence[int] = (512, 512, 512), pre_conv: PreConv | None = None) -> None:
        super().__init__()
        _check_size("stl10_6c4f", image_size, 32)
        self.body = conv_stack(_STL6, in_channels, bn=True, pre_conv=pre_conv)
        side = output_side(_STL6, image_size)
        self.head = fc_head(512 * side * side, hidden)
        self.fc = nn.Linear(hidden[-1], classes)


class Tiny13C4F(_PaperNet):
    """Tiny ImageNet baseline of Li et al. 2021, Table 15: 13 conv with BN (VGG16-BN), 5 max-pools,
    4 FC."""

    def __init__(self, in_channels: int = 3, classes: int = 200, image_size: int = 64, *,
                 hidden: Sequence[int] = (512, 512, 512), pre_conv: PreConv | None = None) -> None:
        super().__init__()
        _check_size("tiny_13c4f", image_size, 32)
        self.body = conv_stack(_VGG16, in_channels, bn=True, pre_conv=pre_conv)
        side = output_side(_VGG16, image_size)
        self.head = fc_head(512 * side * side, hidden)
        self.fc = nn.Linear(hidden[-1], classes)


#: the four networks of Table 15 by backbone name
PAPER_NETS: dict[str, type[_PaperNet]] = {"mnist_4c4f": Mnist4C4F, "vgg19_bn": VGG19BN,
                                          "stl10_6c4f": STL10Net6C4F, "tiny_13c4f": Tiny13C4F}
