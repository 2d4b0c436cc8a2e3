"""Networks of the ER-Classifier family (Li et al. 2021, appendix G;
Li et al. (ICLR submission), Fig. 9-10).

An :class:`ERNet` is an encoder Q (image -> code z of dimension k), a classifier C on z and,
for the regularised variants, a WGAN critic D on codes. ``forward(x) = C(Q(x))`` gives logits;
``embed(x)`` gives the code z (for a variational encoder, the mean mu).

Encoders (``build_encoder``):

* ``er_mnist``: the MNIST encoder of the paper: four Conv(4, stride 2, pad 1, no bias)
  1 -> 128 -> 256 -> 512 -> 1024, BatchNorm on layers 2-4, ReLU, Linear(1024, k);
* ``er_vgg19``: VGG19 convolutional features (16 conv + ReLU, 5 max-pools, no BatchNorm, as in the
  paper's CIFAR10 listing) and Linear(512, k);
* ``er_stl``: six conv layers with BatchNorm and max-pools, then Linear(512, k) (paper Table 16
  gives only "6 Conv with BN + 1 FC"; channel widths are ours);
* ``er_tiny``: VGG16-BN features (13 conv with BN, 5 max-pools), then Linear(512, k) (Table 16);
* ``er_small``: a CPU-sized encoder (two 3x3 conv of ``width`` and ``2*width`` channels with
  max-pools, FC 128, Linear to k) for the ``quick`` profile; works on 8x8 inputs too.

Classifier: Linear(k, h1)+BN+ReLU, Linear(h1, h2)+BN+ReLU, Linear(h2, classes) (the MNIST listing:
h1 = 500, h2 = 256). Critic: four Linear(., 512)+ReLU, Linear(512, 1), LogSigmoid (the listing).
Priors: ``gaussian`` N(0, I) (the paper's choice), ``uniform`` U(-3, 3) and ``cauchy`` Cauchy(0, 1)
(Li et al. 2021, appendix C.4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_er.plugin import UserInputError

PRIORS = ("gaussian", "uniform", "cauchy")
ENCODERS = ("er_small", "er_mnist", "er_vgg19", "er_stl", "er_tiny")


def check_prior(name: str) -> None:
    if name not in PRIORS:
        raise UserInputError(f"Unknown prior {name!r}; known priors: {', '.join(PRIORS)}.")


def sample_prior(name: str, n: int, k: int, *, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` codes of dimension ``k`` from the named prior (float32, on ``device``)."""
    check_prior(name)
    if name == "gaussian":
        z = torch.randn(n, k, generator=generator)
    elif name == "uniform":
        z = torch.rand(n, k, generator=generator) * 6.0 - 3.0
    else:  # cauchy(0, 1) by inverse CDF: tan(pi * (u - 1/2)); u kept off 0 and 1
        u = torch.rand(n, k, generator=generator, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)
        z = torch.tan(math.pi * (u - 0.5)).float()
    return z.to(device)


class CodeDiscriminator(nn.Module):
    """WGAN critic on codes: four Linear(., hidden)+ReLU, Linear(hidden, 1), LogSigmoid."""

    def __init__(self, k: int, hidden: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = k
        for _ in range(4):
            layers += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        layers += [nn.Linear(hidden, 1), nn.LogSigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z).squeeze(1)

    @torch.no_grad()
    def clip_(self, c: float) -> None:
        """WGAN weight clipping: every parameter into [-c, c]."""
        for p in self.parameters():
            p.clamp_(-c, c)


class MLPClassifier(nn.Module):
    """Linear(k, h1)+BN+ReLU, Linear(h1, h2)+BN+ReLU, Linear(h2, classes)."""

    def __init__(self, k: int, classes: int, h1: int = 500, h2: int = 256) -> None:
        super().__init__()
        self.main = nn.Sequential(nn.Linear(k, h1), nn.BatchNorm1d(h1), nn.ReLU(),
                                  nn.Linear(h1, h2), nn.BatchNorm1d(h2), nn.ReLU(), nn.Linear(h2, classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class MnistEncoder(nn.Module):
    def __init__(self, in_channels: int, out_dim: int) -> None:
        super().__init__()
        chans = (in_channels, 128, 256, 512, 1024)
        layers: list[nn.Module] = []
        for i in range(4):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1, bias=False))
            if i > 0:
                layers.append(nn.BatchNorm2d(chans[i + 1]))
            layers.append(nn.ReLU())
        self.main = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.main(x)  # 28 -> 14 -> 7 -> 3 -> 1
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def _vgg_features(cfg: list[int | str], in_channels: int, bn: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            out = int(v)
            layers.append(nn.Conv2d(c, out, 3, 1, 1))
            if bn:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            c = out
    return nn.Sequential(*layers)


_VGG19: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
_VGG16: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_STL6: list[int | str] = [64, "M", 128, "M", 256, "M", 256, "M", 512, "M", 512, "M"]


class VGGEncoder(nn.Module):
    def __init__(self, cfg: list[int | str], in_channels: int, out_dim: int, bn: bool) -> None:
        super().__init__()
        self.features = _vgg_features(cfg, in_channels, bn)
        self.fc = nn.Linear(512, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class SmallEncoder(nn.Module):
    """CPU-sized encoder: conv(width)-pool-conv(2*width)-pool-FC128-Linear(k)."""

    def __init__(self, in_channels: int, out_dim: int, image_size: int, width: int = 32) -> None:
        super().__init__()
        side = 4 if image_size >= 16 else 2
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(side), nn.Flatten(), nn.Linear(2 * width * side * side, 128), nn.ReLU(),
        )
        self.fc = nn.Linear(128, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.main(x))


def build_encoder(name: str, in_channels: int, out_dim: int, image_size: int, width: int = 32) -> nn.Module:
    """The named encoder mapping images to ``out_dim`` numbers."""
    if name == "er_small":
        return SmallEncoder(in_channels, out_dim, image_size, width)
    if name == "er_mnist":
        if image_size < 16:
            raise UserInputError(f"The 'er_mnist' encoder needs images of at least 16x16 (four stride-2 convs); got {image_size}x{image_size}, use 'er_small'.")
        return MnistEncoder(in_channels, out_dim)
    if name == "er_vgg19":
        return VGGEncoder(_VGG19, in_channels, out_dim, bn=False)
    if name == "er_stl":
        return VGGEncoder(_STL6, in_channels, out_dim, bn=True)
    if name == "er_tiny":
        return VGGEncoder(_VGG16, in_channels, out_dim, bn=True)
    raise UserInputError(f"Unknown ER encoder {name!r}; known: {', '.join(ENCODERS)}.")


class ERNet(nn.Module):
    """Encoder + classifier (+ critic). With ``variational`` the encoder outputs (mu, logvar) and
    training uses a reparameterised sample; evaluation uses mu, so the forward is deterministic."""

    def __init__(self, encoder: nn.Module, classifier: nn.Module, embed_dim: int,
                 discriminator: nn.Module | None = None, variational: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = classifier
        self.discriminator = discriminator
        self.embed_dim = embed_dim
        self.variational = variational

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mu, logvar) for a variational encoder, (z, None) otherwise."""
        h = self.encoder(x)
        if self.variational:
            mu, logvar = h.chunk(2, dim=1)
            return mu, logvar.clamp(-20.0, 20.0)
        return h, None

    def code(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(z, mu, logvar): z is sampled in training mode for a variational encoder, else mu."""
        mu, logvar = self.encode(x)
        if logvar is not None and self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return z, mu, logvar

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.code(x)[0])


def build_er_net(backbone: str, in_channels: int, classes: int, image_size: int, embed_dim: int, *,
                 h1: int = 500, h2: int = 256, width: int = 32, discriminator: bool = True,
                 disc_hidden: int = 512, variational: bool = False) -> ERNet:
    if embed_dim < 1:
        raise UserInputError(f"embed_dim must be at least 1; got {embed_dim}.")
    enc = build_encoder(backbone, in_channels, embed_dim * (2 if variational else 1), image_size, width)
    disc = CodeDiscriminator(embed_dim, disc_hidden) if discriminator else None
    return ERNet(enc, MLPClassifier(embed_dim, classes, h1, h2), embed_dim, disc, variational)
