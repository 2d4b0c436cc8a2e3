"""Evaluation sanity checks. Each returns flags (name -> one-line detail) that go into the
leaderboard's ``flags`` column; ``docs/flags.md`` explains each and what to do about it.

Per model (once per checkpoint, cached): ``nondeterministic`` (a defense declared
deterministic gives different outputs on two passes), ``probabilities`` (the model returns
probabilities instead of logits), ``zero-gradients`` / ``nan-gradients`` (input gradients of
the loss vanish or are not finite: gradient attacks are blind).

Per cell: ``no-break-at-large-eps`` (at an epsilon where any image can be turned into any
other, an attack that leaves more than 10% standing is fooled: gradient masking).

Across attacks (in the report): ``single-step-stronger`` (FGSM breaks more than PGD at some
eps), ``black-box-stronger`` (a score- or decision-based attack beats a white-box gradient attack).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from robustbench_er.store import Store
    from robustbench_er.sweep import Cell

_MODEL_CACHE: dict[str, dict[str, str]] = {}
#: epsilons at which any image in [0, 1] can be reached; an attack must then break ~everything
LARGE_EPS = {"Linf": 0.5}
LARGE_EPS_MAX_ACC = 0.10
MARGIN = 0.005


def model_flags(model: Any, x: torch.Tensor, y: torch.Tensor, key: str) -> dict[str, str]:
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    flags: dict[str, str] = {}
    model.eval()
    xb, yb = x[:32], y[:32]
    with torch.no_grad():
        torch.manual_seed(0)
        a = model.predict(xb)
        b = model.predict(xb)
    if not model.randomized and not torch.allclose(a, b, atol=1e-5, rtol=1e-4):
        flags["nondeterministic"] = "two forward passes differ on a defense declared deterministic"
    if bool((a >= 0).all()) and torch.allclose(a.sum(1), torch.ones(len(a), device=a.device), atol=1e-3):
        flags["probabilities"] = "outputs are non-negative and sum to 1: probabilities, not logits"
    if getattr(model, "differentiable", True):
        xg = xb.clone().requires_grad_(True)
        loss = F.cross_entropy(model.predict(xg), yb)
        (g,) = torch.autograd.grad(loss, xg, allow_unused=True)
        if g is None or not torch.isfinite(g).all():
            flags["nan-gradients"] = "input gradients are missing or not finite"
        elif float(g.abs().amax()) == 0.0:
            flags["zero-gradients"] = "input gradients are all zero"
    _MODEL_CACHE[key] = flags
    return flags


def run_cell_checks(cell: Cell, store: Store) -> dict[str, str]:
    from robustbench_er.defense import device_of
    from robustbench_er.metrics import curve

    model = cell.trained.model
    dev = device_of(model)
    ids = torch.as_tensor(cell.sample_ids[:32])
    flags = dict(model_flags(model, cell.dataset.x_test[ids].to(dev), cell.dataset.y_test[ids].to(dev),
                             str(cell.spec["checkpoint"])))
    out = store.outcomes(cell.cell_id)
    large = LARGE_EPS.get(cell.spec["norm"])
    if large is not None:
        grid = [e for e in cell.grid if e >= large]
        if cell.attack.kind == "min":
            grid = [max(cell.grid[-1], large)] if cell.grid[-1] >= large else []
        if grid:
            acc = float(curve(out, grid[-1:])[0])
            if acc > LARGE_EPS_MAX_ACC:
                flags["no-break-at-large-eps"] = (
                    f"{cell.attack_cfg.display} leaves {acc:.1%} standing at eps {grid[-1]:g}")
    return flags


def cross_attack_flags(curves: dict[str, tuple[list[float], np.ndarray]], access: dict[str, str],
                       kinds: dict[str, str]) -> dict[str, str]:
    """Compare attacks of one (dataset, defense, norm): curves maps label -> (grid, accuracy)."""
    flags: dict[str, str] = {}

    def at(label: str, eps: float) -> float | None:
        g, a = curves[label]
        for e, v in zip(g, a):
            if abs(e - eps) < 1e-9:
                return float(v)
        return None

    labels = list(curves)
    single = [lab for lab in labels if lab.startswith("fgsm")]
    iterative = [lab for lab in labels if lab.startswith(("pgd", "mim", "apgd"))]
    for s in single:
        for it in iterative:
            for e in curves[s][0]:
                va, vb = at(s, e), at(it, e)
                if va is not None and vb is not None and va + MARGIN < vb:
                    flags["single-step-stronger"] = f"{s} {va:.3f} < {it} {vb:.3f} at eps {e:g}"
                    break
    white = [lab for lab in labels if access.get(lab) == "gradient" and kinds.get(lab) == "fixed"]
    black = [lab for lab in labels if access.get(lab) in ("score", "decision")]
    for bl in black:
        for w in white:
            for e in curves[w][0]:
                vb, vw = at(bl, e), at(w, e)
                if vb is not None and vw is not None and vb + MARGIN < vw:
                    flags["black-box-stronger"] = f"{bl} {vb:.3f} < {w} {vw:.3f} at eps {e:g}"
                    break
    return flags
