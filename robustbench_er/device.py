"""Device choice: CUDA when present, else Apple MPS, else the CPU; ``--device`` overrides."""

from __future__ import annotations

import torch

from robustbench_er.errors import UserInputError


def resolve_device(name: str | None = "auto") -> torch.device:
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise UserInputError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"Device {name!r} was asked for but CUDA is not available on this machine.")
    return dev
