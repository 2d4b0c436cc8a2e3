"""A small DCGAN-style generator and critic for images in [0, 1] (used by Defense-GAN).

``Generator``: z (``latent_dim``) -> Linear -> 4*width x s x s (s = ceil(size / 4)), BN, ReLU ->
ConvTranspose x2 (4*width -> 2*width -> width, BN, ReLU, each doubling the side) -> crop to the
image side -> 3x3 conv to the image channels -> sigmoid. This follows the shape of the WGAN-GP
MNIST generator the Defense-GAN reference uses (fully connected layer to a 4x4-ish map, then
transposed convolutions, sigmoid output), sized to any side (8, 28, 32 ...).

``Critic``: two stride-2 4x4 convs (width, 2*width) with LeakyReLU(0.2), no batch norm (batch
norm is not allowed in a WGAN-GP critic), flatten, Linear to one score. Used as a WGAN-GP critic
(raw score) or as a DCGAN discriminator (the score is a logit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Generator(nn.Module):
    def __init__(self, channels: int, image_size: int, latent_dim: int = 128, width: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.image_size = image_size
        self.side = -(-image_size // 4)
        self.fc = nn.Sequential(nn.Linear(latent_dim, 4 * width * self.side * self.side),
                                nn.BatchNorm1d(4 * width * self.side * self.side), nn.ReLU())
        self.up = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        self.width = width

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(len(z), 4 * self.width, self.side, self.side)
        h = self.up(h)[:, :, : self.image_size, : self.image_size]
        return torch.sigmoid(self.out(h))


class Critic(nn.Module):
    def __init__(self, channels: int, image_size: int, width: int = 64) -> None:
        super().__init__()
        side = image_size // 4
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.fc = nn.Linear(2 * width * side * side, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x)).squeeze(1)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty: mean of (||grad critic(x_hat)||2 - 1)^2 on random interpolates x_hat."""
    a = torch.rand(len(real), *([1] * (real.ndim - 1)), device=real.device)
    x_hat = (a * real + (1 - a) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((g.reshape(len(g), -1).norm(dim=1) - 1) ** 2).mean()


def gan_step_losses(kind: str, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(critic loss, generator loss) for ``kind`` ``"wgan-gp"`` (without the penalty) or ``"dcgan"``
    (non-saturating). The generator loss is built on ``fake`` as given (pass a graph-connected
    ``fake`` for the generator step, a detached one for the critic step)."""
    if kind == "wgan-gp":
        return critic(fake).mean() - critic(real).mean(), -critic(fake).mean()
    if kind == "dcgan":
        d_real, d_fake = critic(real), critic(fake)
        d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        return d_loss, F.softplus(-d_fake).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")
