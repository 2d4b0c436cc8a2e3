"""Device choice: CUDA when present, else Apple MPS, else the CPU; ``--device`` overrides
(only ``auto``, ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are accepted)."""

from __future__ import annotations

import re

import torch

from robustbench_er.core.errors import UserInputError


def resolve_device(name: str | None = "auto") -> torch.device:
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
