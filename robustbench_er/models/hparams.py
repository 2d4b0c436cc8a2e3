"""Hyper-parameters every defense has (:class:`HParams`) and those of defenses that train on
adversarial examples (:class:`AdversarialHParams`), with the profiles presets are written for.

Plugins subclass them (a dataclass per defense) and list values per dataset and profile in
their ``presets``; :meth:`robustbench_er.plugins.defense.Defense.hparams` fills and checks them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from robustbench_er.core.errors import UserInputError

log = logging.getLogger(__name__)

PROFILES = ("quick", "paper")


@dataclass
class HParams:
    """Hyper-parameters every defense has; plugins subclass and add their own."""

    backbone: str = "small_cnn"
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd | adam
    momentum: float = 0.9
    weight_decay: float = 0.0
    #: cap on training images (0 = all); the quick profile uses it to stay CPU-sized
    train_samples: int = 0

    def validate(self) -> None:
        """Check the fields every defense has; subclasses add their own checks.

        :meth:`Defense.hparams` runs these checks even when a subclass's ``validate`` does not
        call ``super().validate()``.
        """
        HParams.check_common(self)

    def check_common(self) -> None:
        if self.epochs < 1:
            raise UserInputError(f"Hyper-parameter 'epochs' must be an integer >= 1; got {self.epochs}.")
        if self.batch_size < 1:
            raise UserInputError(f"Hyper-parameter 'batch_size' must be an integer >= 1; got {self.batch_size}.")
        if not self.lr > 0:
            raise UserInputError(f"Hyper-parameter 'lr' must be > 0; got {self.lr}.")
        if self.train_samples < 0:
            raise UserInputError(f"Hyper-parameter 'train_samples' must be >= 0 (0 = all); got {self.train_samples}.")
        if self.weight_decay < 0 or self.momentum < 0:
            raise UserInputError("Hyper-parameters 'weight_decay' and 'momentum' must be >= 0.")
        if self.optimizer not in ("sgd", "adam"):
            raise UserInputError(f"Hyper-parameter 'optimizer' must be 'sgd' or 'adam'; got {self.optimizer!r}.")


@dataclass
class AdversarialHParams(HParams):
    """Hyper-parameters of defenses that train on PGD-style examples.

    ``warmup_epochs`` clean epochs, then eps grows linearly to ``eps`` over ``ramp_epochs``
    (both 0 in the papers; the ``quick`` presets use them so a small net trained for a few
    epochs on a CPU still learns).
    """

    eps: float = 0.3
    attack_steps: int = 40
    step_size: float = 0.01
    #: clean epochs before adversarial training starts (0 in the papers)
    warmup_epochs: int = 0
    #: epochs over which eps grows linearly to ``eps`` after the warm-up (0 = none, the papers)
    ramp_epochs: int = 0

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.eps <= 1:
            raise UserInputError(f"Training eps must be in [0, 1] (images are in [0, 1]); got {self.eps}.")
        if self.attack_steps < 1:
            raise UserInputError(f"Training attacks need at least one step; got {self.attack_steps}.")
        if self.step_size <= 0:
            raise UserInputError(f"The training attack's step_size must be positive; got {self.step_size}.")
        if self.warmup_epochs < 0 or self.ramp_epochs < 0:
            raise UserInputError("warmup_epochs and ramp_epochs must be non-negative.")

    def eps_fraction(self, epoch: int) -> float:
        """Share of ``eps`` used at ``epoch``: 0 during the warm-up, then the linear ramp."""
        if epoch < self.warmup_epochs:
            return 0.0
        return min(1.0, (epoch - self.warmup_epochs + 1) / self.ramp_epochs) if self.ramp_epochs else 1.0
