"""Curves, AUC and worst case over attacks, all read from per-sample ``broken_at``.

Robust accuracy at eps = share of the evaluated points that are classified correctly and have
no verified adversarial example at or below eps. Any grid, curve or AUC follows from the
per-sample values, so new grids need no new attacks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

#: two grid values closer than this are the same epsilon
EPS_TOL = 1e-9

#: units of L2 epsilons: the plain L2 norm; RMS, L2 / sqrt(pixels); MSE, the mean squared
#: distortion per pixel, L2^2 / pixels (the reading of the C&W bounds of Li et al. 2021)
L2_UNITS = ("l2", "rms", "mse")


def unit_scale(norm: str, l2_unit: str, dim: int) -> float:
    """sqrt(pixels) for L2 epsilons in RMS or MSE units, else 1 (the plain norm)."""
    return float(np.sqrt(dim)) if norm == "L2" and l2_unit in ("rms", "mse") else 1.0


def to_norm(eps: float, l2_unit: str | None, scale: float) -> float:
    """An epsilon in the user's unit -> the norm's own value (``scale`` from :func:`unit_scale`)."""
    return float(np.sqrt(eps) * scale) if l2_unit == "mse" else float(eps * scale)


def from_norm(value: float, l2_unit: str | None, scale: float) -> float:
    """The inverse of :func:`to_norm`: the norm's own value -> the user's unit."""
    return float((value / scale) ** 2) if l2_unit == "mse" else float(value / scale)


def robust_accuracy(clean_correct: np.ndarray, broken_at: np.ndarray, eps: float) -> float:
    """Share of points correct and unbroken at ``eps`` (``broken_at`` NaN = never broken)."""
    if len(clean_correct) == 0:
        return float("nan")
    broken = np.nan_to_num(broken_at, nan=np.inf) <= eps + EPS_TOL
    return float(np.mean(clean_correct.astype(bool) & ~broken))


def curve(outcomes: pd.DataFrame, grid: Sequence[float] | np.ndarray) -> np.ndarray:
    cc = outcomes["clean_correct"].to_numpy()
    ba = outcomes["broken_at"].to_numpy(dtype=float)
    return np.array([robust_accuracy(cc, ba, e) for e in grid])


def auc(grid: Sequence[float] | np.ndarray, acc: Sequence[float] | np.ndarray) -> float:
    """Trapezoid area under the curve divided by the grid's width (1.0 = robust everywhere)."""
    g = np.asarray(grid, dtype=float)
    a = np.asarray(acc, dtype=float)
    if len(g) < 2 or g[-1] <= g[0]:
        return float(a[0]) if len(a) else float("nan")
    area = float(np.sum((a[1:] + a[:-1]) * np.diff(g) / 2.0))
    return area / float(g[-1] - g[0])


def worst_case(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per sample, the minimum ``broken_at`` over attacks (same samples in every frame)."""
    if not frames:
        raise ValueError("worst_case needs at least one attack's outcomes")
    base = frames[0][["sample_id", "label", "clean_correct"]].set_index("sample_id")
    ba = pd.concat([f.set_index("sample_id")["broken_at"].astype(float) for f in frames], axis=1)
    base["broken_at"] = ba.min(axis=1, skipna=True)
    return base.reset_index()


def mcnemar_p(b: int, c: int) -> float:
    """One-sided exact McNemar p-value: P(X >= b) for X ~ Binomial(b + c, 1/2).

    ``b`` and ``c`` count the two kinds of discordant pairs (points the first of two paired
    verdicts counts and the second does not, and the reverse); a small p says the first kind is
    more frequent than chance. Exact in integers (no overflow for large counts).
    """
    n = int(b) + int(c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(int(b), n + 1))
    return min(1.0, tail / (1 << n))


def mcnemar_two_sided_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: twice the smaller one-sided tail, at most 1."""
    return min(1.0, 2.0 * min(mcnemar_p(b, c), mcnemar_p(c, b)))


def pretty_eps(eps: float) -> str:
    """8/255-style form for epsilons that are multiples of 1/255, else a short decimal."""
    if eps == 0:
        return "0"
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) % 255 != 0 and eps < 0.2:
        return f"{round(k)}/255"
    return f"{eps:g}"
