"""Small convolutional networks for MNIST-sized inputs.

``SmallCNN`` is the TRADES MNIST network (conv32-conv32-pool-conv64-conv64-pool-fc200-
dropout 0.5-fc200-fc10); ``TinyCNN`` is a CPU-sized net (conv16-pool-conv32-pool-fc64) for the
``quick`` profile and the tests. Both accept any image size (adaptive pooling before the FCs).
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int = 1, classes: int = 10, image_size: int = 28, dropout: float = 0.5) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1 if image_size < 20 else 0), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1 if image_size < 20 else 0), nn.ReLU(),
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


class TinyCNN(nn.Module):
    def __init__(self, in_channels: int = 1, classes: int = 10, image_size: int = 28, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4 if image_size >= 16 else 2),
        )
        side = 4 if image_size >= 16 else 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * side * side, 64), nn.ReLU())
        self.fc = nn.Linear(64, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
