"""Norms of perturbations: the names (``Linf``, ``L2``, ``L1`` and their aliases), the norm of a
batch of perturbations, the projection to a ball, and the slack a verified example may have."""

from __future__ import annotations

import torch

from robustbench_er.core.errors import UserInputError

NORMS = ("Linf", "L2", "L1")
#: absolute slack allowed on the norm of a verified example (float32 rounding)
NORM_ATOL = 1e-5
NORM_RTOL = 1e-4


_NORM_ALIASES = {"linf": "Linf", "inf": "Linf", "l_inf": "Linf", "l2": "L2", "2": "L2", "l_2": "L2",
                 "l1": "L1", "1": "L1", "l_1": "L1"}


def canonical_norm(norm: str) -> str:
    """``"linf"``, ``"inf"`` or ``"Linf"`` -> ``"Linf"``; likewise L2 and L1."""
    key = str(norm).strip().lower()
    if key not in _NORM_ALIASES:
        raise UserInputError(f"Unknown norm {norm!r}; use one of {', '.join(NORMS)}.")
    return _NORM_ALIASES[key]


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.reshape(len(delta), -1)
    if norm == "Linf":
        return flat.abs().amax(1) if flat.shape[1] else torch.zeros(len(delta))
    if norm == "L2":
        return flat.norm(p=2, dim=1)
    if norm == "L1":
        return flat.abs().sum(1)
    raise UserInputError(f"Unknown norm {norm!r}.")


def clip_to_ball(x: torch.Tensor, x_adv: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Project ``x_adv`` into the ``norm`` ball of radius ``eps`` (per sample) around ``x`` and [0, 1].

    Exact for Linf and L2; for L1 it rescales (a feasible point, not the Euclidean projection).
    """
    delta = x_adv - x
    e = eps.view(-1, *([1] * (x.ndim - 1))).to(x)
    if norm == "Linf":
        delta = torch.maximum(torch.minimum(delta, e), -e)
    else:
        n = perturbation_norm(delta, norm).view_as(e).clamp_min(1e-12)
        delta = delta * torch.clamp(e / n, max=1.0)
    return (x + delta).clamp(0, 1)
