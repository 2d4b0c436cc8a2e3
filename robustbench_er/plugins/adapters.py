"""Adapters that run third-party attack libraries (Foolbox 3, torchattacks) on a defended model.

Shared by the attack plugins that wrap those libraries. The model is seen through
:class:`~robustbench_er.plugins.attack.LibraryModel` (EOT passes, query count); the libraries' random
draws are seeded from the caller's generator (:func:`~robustbench_er.plugins.attack.seeded`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from robustbench_er.core.norms import clip_to_ball
from robustbench_er.models.defended import DefendedModel
from robustbench_er.models.training import eval_mode
from robustbench_er.plugins.attack import LibraryModel, draw_seed, eps_groups, seeded


def run_foolbox_minimization(fb_attack: Any, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, *,
                             eot: int = 1, mode: str = "mean", generator: torch.Generator | None = None,
                             lib_model: LibraryModel | None = None, **kwargs: Any) -> torch.Tensor:
    """Run a Foolbox minimization attack unbounded; points it did not break come back unchanged.

    The model is wrapped in :class:`~robustbench_er.plugins.attack.LibraryModel` (EOT, query count) and
    ``foolbox.PyTorchModel(bounds=(0, 1))``; Foolbox's random draws are seeded from ``generator``.
    """
    import foolbox as fb

    lm = lib_model if lib_model is not None else LibraryModel(model, eot, mode)
    lm.eval()
    fmodel = fb.PyTorchModel(lm,  # type: ignore[attr-defined]
                             bounds=(0, 1), device=x.device)
    with seeded(draw_seed(generator), x.device):
        raw, _, success = fb_attack(fmodel, x, y, epsilons=None, **kwargs)
    raw = torch.nan_to_num(raw.detach().to(x), nan=0.0).clamp(0, 1)
    keep = success.to(torch.bool).view(-1, *([1] * (x.ndim - 1)))
    return torch.where(keep, raw, x).detach()


def run_torchattacks(make: Callable[[LibraryModel, float, int], Any], model: DefendedModel, x: torch.Tensor,
                     y: torch.Tensor, eps: torch.Tensor, norm: str, *, eot: int = 1,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Run a torchattacks attack once per group of equal epsilon; return (x_adv, queries).

    ``make(library_model, eps, seed)`` builds the torchattacks object. The model is seen
    through :class:`~robustbench_er.plugins.attack.LibraryModel` (mean logits over ``eot`` passes for
    randomized defenses; it counts queries). Points with eps 0 come back unchanged.
    """
    lm = LibraryModel(model, eot, mode="mean")
    out = x.clone()
    seed = draw_seed(generator)
    # the libraries switch their model's mode themselves; the caller gets its own mode back
    with eval_mode(model), seeded(seed, x.device):
        for value, idx in eps_groups(eps):
            if value <= 0 or len(idx) == 0:
                continue
            atk = make(lm, value, seed)
            x_adv = atk(x[idx], y[idx]).detach().to(x)
            out[idx] = clip_to_ball(x[idx], x_adv, eps[idx].to(x), norm)
    return out.detach(), lm.queries
