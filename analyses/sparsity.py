"""Sparsity and dimensionality of the embedding (Bashivan et al. 2021, AFD, Table A5 and
Section 5 "Learning a sparse embedding").

Over the defended model's embeddings (``embed``) of ``samples`` (500) clean test points: the
number of non-zero units (a unit is zero when its absolute value is at most ``tol``, 1e-6, on
every point) and the number of principal components holding ``variance`` (0.99, as the paper)
of the embedding's variance (scikit-learn's ``PCA`` on all units). The paper's values on MNIST
(ResNet5): NT 173 units / 13 dims, AT 153 / 27, TRADES 156 / 52, AFD 31 / 4.
:func:`sparsity_of` does the counting on any N x D array.

Besides the paper's two counts, ``active_per_point`` is the mean number of units non-zero on a
point (a unit counted in ``units`` may fire on few points). It tells apart models whose dead units
coincide: on ``mnist5k`` (quick presets, TinyCNN, a 64-unit FC + ReLU embedding) none, madry and
trades each have 30 units, because madry and trades start with the same clean warm-up epoch as
none (same seed, initialisation and batch order: the weights after it are bit-identical) and 34
units die during that epoch; a dead ReLU gets no gradient of its own, and the adversarial epochs
that follow revive one unit and kill another in each of madry and trades. They differ
per point (25.3, 26.3, 25.5 active units) and in ``pca_dims``; afd has 16 units, 10.7 per point.
The 30 is no artefact of the measurement: the embedding is the ReLU output (no negative values),
the count is the same for any ``tol`` from 0 to 0.01 and on 500 or all 1,000 test points, and at
most one of the 34 dead units fires on any of the 4,000 training images.

Deviation: the paper counts over the whole test set; we use the first ``samples`` points of the
dataset's fixed test order (all of them when ``samples`` exceeds the test split). The PCA count
is capped by the number of points, so ``samples`` should exceed the embedding's width.

Version 1 adds ``active_per_point`` to the summary (version 0 results lack it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robustbench_er.plugin import (
    Analysis,
    AnalysisContext,
    AnalysisParams,
    AnalysisResult,
    UserInputError,
    device_of,
    embeddings,
    figure,
    register_analysis,
)


def sparsity_of(z: np.ndarray, tol: float = 1e-6, variance: float = 0.99) -> dict[str, Any]:
    """Counts for the embeddings ``z`` (N x D): ``units`` (units with |value| > ``tol`` on some
    point), ``total_units`` (D), ``active_per_point`` (the mean over points of the units with
    |value| > ``tol`` on that point), ``pca_dims`` (the fewest principal components whose cumulative
    explained variance reaches ``variance``; 0 when ``z`` has no variance) and ``cumulative``
    (the cumulative explained-variance ratio per component)."""
    from sklearn.decomposition import PCA

    z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    on = np.abs(z) > tol
    units = int(on.any(axis=0).sum())
    per_point = float(on.sum(axis=1).mean()) if len(z) else 0.0
    cumulative: list[float] = []
    dims = 0
    if len(z) >= 2 and float(z.var(axis=0).sum()) > 0:
        cum = np.cumsum(PCA().fit(z).explained_variance_ratio_)
        cumulative = [float(c) for c in cum]
        dims = min(int(np.searchsorted(cum, variance - 1e-9)) + 1, len(cum))
    return {"units": units, "total_units": int(z.shape[1]), "active_per_point": per_point, "pca_dims": dims,
            "cumulative": cumulative}


@register_analysis("sparsity")
class EmbeddingSparsity(Analysis):
    """Non-zero embedding units and the PCA dimensions holding 99% of the embedding's variance."""

    @dataclass
    class Params(AnalysisParams):
        samples: int = 500
        tol: float = 1e-6
        variance: float = 0.99

    needs_embedding = True
    version = 1  # 1: the summary gains active_per_point

    def validate(self) -> None:
        p = self.params
        if not p.tol >= 0:
            raise UserInputError(f"Analysis 'sparsity': tol must be at least 0; got {p.tol}.")
        if not 0 < p.variance <= 1:
            raise UserInputError(f"Analysis 'sparsity': variance must be a fraction in (0, 1]; got {p.variance}.")

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        p, model = self.params, ctx.model
        assert model is not None
        x, _ = ctx.points(p.samples)
        z = embeddings(model, x.to(device_of(model)))
        s = sparsity_of(z, p.tol, p.variance)
        summary = {"units": float(s["units"]), "total_units": float(s["total_units"]),
                   "active_per_point": float(s["active_per_point"]), "pca_dims": float(s["pca_dims"]),
                   "points": float(len(z))}
        cum = s["cumulative"]
        rows = [{"component": i + 1, "explained": float(c - (cum[i - 1] if i else 0.0)), "cumulative": float(c)}
                for i, c in enumerate(cum)]
        return AnalysisResult(summary, rows, {"cumulative": cum, "variance": p.variance, "pca_dims": s["pca_dims"]})

    def plot(self, result: AnalysisResult, path: Path, title: str = "") -> None:
        cum = np.asarray(result.extra["cumulative"], dtype=float)
        target, dims = float(result.extra["variance"]), int(result.extra["pca_dims"])

        def draw(ax: Any) -> None:
            ax.plot(np.arange(1, len(cum) + 1), cum, "-", lw=1.5, label="cumulative explained variance")
            ax.axhline(target, color="grey", ls="--", lw=1, label=f"{target:.0%} of the variance")
            if dims:
                ax.plot([dims], [cum[dims - 1]], "ro", label=f"{dims} components")
                ax.axvline(dims, color="r", ls=":", lw=1)
            ax.set_xscale("log")
            ax.set_xlabel("principal components (count, log scale)")
            ax.set_ylabel("cumulative explained variance (fraction)")
            per_point = result.summary.get("active_per_point")
            ax.set_title(title or (f"Embedding: {result.summary.get('units', 0):.0f} of "
                                   f"{result.summary.get('total_units', 0):.0f} units non-zero"
                                   + (f", {per_point:.1f} per point" if per_point is not None else "")))
            ax.legend(fontsize=8, loc="lower right")

        figure(path, draw)
