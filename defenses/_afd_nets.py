"""Networks of Adversarial Feature Desensitization (Bashivan et al. 2021, section 3
and appendix 8.1).

:class:`AFDNet` wraps a backbone that exposes ``features(x)`` (the embedding E, the activations
before the last linear layer) and ``fc`` (the linear category decoder Dc), and adds the
adversarial decoder Da, a class-conditional projection discriminator (Miyato & Koyama 2018):

    h = LeakyReLU(SN-Linear(F, F)(LeakyReLU(SN-Linear(E_dim, F)(e))))
    Da(e, y) = SN-Linear(F, 1)(h) + sum(SN-Embedding(y) * h)

with spectral normalisation (``torch.nn.utils.parametrizations.spectral_norm``) on every layer
and LeakyReLU slope 0.2. ``forward(x) = Dc(E(x))`` gives logits, ``embed(x) = E(x)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class ProjectionDiscriminator(nn.Module):
    """Class-conditional critic on embeddings; higher score = looks like a clean embedding."""

    def __init__(self, in_dim: int, classes: int, hidden: int = 512, slope: float = 0.2) -> None:
        super().__init__()
        self.fc1 = spectral_norm(nn.Linear(in_dim, hidden))
        self.fc2 = spectral_norm(nn.Linear(hidden, hidden))
        self.out = spectral_norm(nn.Linear(hidden, 1))
        self.embed_y = spectral_norm(nn.Embedding(classes, hidden))
        self.slope = slope

    def forward(self, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.fc1(e), self.slope)
        h = F.leaky_relu(self.fc2(h), self.slope)
        return self.out(h).squeeze(1) + (self.embed_y(y) * h).sum(1)


class AFDNet(nn.Module):
    """Embedding E + linear category decoder Dc (the backbone's ``fc``) + adversarial decoder Da."""

    def __init__(self, backbone: nn.Module, classes: int, da_hidden: int = 512, with_da: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        fc = backbone.fc
        if not isinstance(fc, nn.Linear):
            raise TypeError("The AFD backbone needs a final nn.Linear named 'fc' (the category decoder).")
        self.feat_dim = fc.in_features
        self.da = ProjectionDiscriminator(self.feat_dim, classes, da_hidden) if with_da else None

    @property
    def _dc(self) -> nn.Module:
        """The backbone's ``fc`` (checked to be an ``nn.Linear`` at construction)."""
        return cast(nn.Module, self.backbone.fc)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        features = cast(Callable[[torch.Tensor], torch.Tensor], self.backbone.features)
        return features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._dc(self.embed(x))

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of E (the backbone without its ``fc``)."""
        fc_ids = {id(p) for p in self._dc.parameters()}
        return [p for p in self.backbone.parameters() if id(p) not in fc_ids]
