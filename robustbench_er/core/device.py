"""Device choice: CUDA when present, else Apple MPS, else the CPU; ``--device`` overrides
(only ``auto``, ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are accepted).

On CUDA the speed options that can change a number are off (:func:`strict_numerics`): torch
turns TF32 on for cuDNN convolutions by default, which rounds activations to a 10-bit mantissa
and can flip a point on a decision boundary. Nothing here turns on autocast, channels_last or
``torch.compile`` either; none of them is on unless a test shows the reference robust
accuracies unchanged with it.
"""

from __future__ import annotations

import re

import torch

from robustbench_er.core.errors import UserInputError


def strict_numerics() -> None:
    """Full float32 on CUDA: TF32 off for convolutions and matrix products, cuDNN's deterministic
    algorithms on and its autotuner off (it picks algorithms by timing, run to run)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def resolve_device(name: str | None = "auto") -> torch.device:
    """The device to run on; on CUDA, with :func:`strict_numerics` applied."""
    dev = _resolve(name)
    if dev.type == "cuda":
        strict_numerics()
    return dev


def _resolve(name: str | None) -> torch.device:
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(name, str) or not re.fullmatch(r"cpu|cuda(:\d+)?|mps", name.strip()):
        raise UserInputError(f"Unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.")
    dev = torch.device(name.strip())
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"Device {name!r} was asked for but CUDA is not available on this machine.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserInputError(f"Device {name!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s).")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise UserInputError(f"Device {name!r} was asked for but MPS is not available on this machine.")
    return dev
