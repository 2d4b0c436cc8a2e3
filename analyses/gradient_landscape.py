"""Gradient landscape of the class likelihoods (Bashivan et al. 2021, AFD, Figure 3 and Section 5
"Gradient landscape").

For ``samples`` (200) test points: the input gradient of each softmax output i,
d softmax_i(x) / dx, its absolute value averaged over pixels, then averaged over the points of
each true class c: a classes x classes matrix G[c, i] (rows: true class; columns: softmax
output). The paper's claim is that AFD shrinks the off-diagonal entries (the gradients towards
non-target classes). Plain torch autograd: one backward pass per output class per batch; the
gradients come from the defense's BPDA approximation when it declares one.

Summary: ``grad_diag`` (mean of the diagonal, the true class's own gradient), ``grad_offdiag``
(mean off the diagonal) and their ratio ``offdiag_over_diag``; classes without points are left
out. The plot shows log10 G, as the paper's figure shows the logarithm.

Deviation: the paper averages over the whole test set; we use the first ``samples`` points of
the dataset's fixed test order (so a class may have few points).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_er.plugin import (
    Analysis,
    AnalysisContext,
    AnalysisParams,
    AnalysisResult,
    UserInputError,
    device_of,
    figure,
    register_analysis,
)


@register_analysis("gradient-landscape")
class GradientLandscape(Analysis):
    """Mean |d softmax_i / dx| per (true class, softmax output)."""

    @dataclass
    class Params(AnalysisParams):
        samples: int = 200
        batch_size: int = 128

    def validate(self) -> None:
        if self.params.batch_size < 1:
            raise UserInputError(f"Analysis 'gradient-landscape': batch_size must be at least 1; got {self.params.batch_size}.")

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        p, model = self.params, ctx.model
        assert model is not None
        dev = device_of(model)
        x, y = ctx.points(p.samples)
        k = int(model.classes)
        target = model.bpda_model()
        per_point = []  # N x classes: mean |d softmax_i / dx| over the pixels of each point
        for s in range(0, len(x), p.batch_size):
            xb = x[s:s + p.batch_size].to(dev).requires_grad_(True)
            probs = torch.softmax(target.predict(xb), dim=1)
            cols = []
            for i in range(k):
                (g,) = torch.autograd.grad(probs[:, i].sum(), xb, retain_graph=i < k - 1)
                cols.append(g.abs().flatten(1).mean(1))
            per_point.append(torch.stack(cols, 1).detach().cpu())
        grads = torch.cat(per_point).double().numpy()
        labels = y.cpu().numpy()
        mat = np.full((k, k), np.nan)
        counts = np.bincount(labels, minlength=k)
        for c in range(k):
            if counts[c]:
                mat[c] = grads[labels == c].mean(0)
        present = counts > 0
        diag = np.diag(mat)[present]
        off = mat[present][~np.eye(k, dtype=bool)[present]]  # the off-diagonal entries of the classes seen
        summary = {"grad_diag": float(diag.mean()), "grad_offdiag": float(off.mean()),
                   "offdiag_over_diag": float(off.mean() / max(diag.mean(), 1e-30))}
        rows = [{"true_class": c, "output_class": i, "mean_abs_grad": float(mat[c, i]), "points": int(counts[c])}
                for c in range(k) if counts[c] for i in range(k)]
        return AnalysisResult(summary, rows, {"matrix": [[None if np.isnan(v) else float(v) for v in r] for r in mat]})

    def plot(self, result: AnalysisResult, path: Path, title: str = "") -> None:
        mat = np.array([[np.nan if v is None else v for v in r] for r in result.extra["matrix"]], dtype=float)
        k = len(mat)

        def draw(ax: Any) -> None:
            with np.errstate(divide="ignore"):
                logm = np.log10(np.where(mat > 0, mat, np.nan))
            im = ax.imshow(logm, cmap="magma", origin="upper")
            ax.figure.colorbar(im, ax=ax, label="log10 mean |d softmax_i / dx| (per unit pixel change)")
            step = 1 if k <= 20 else max(1, k // 10)
            ax.set_xticks(range(0, k, step))
            ax.set_yticks(range(0, k, step))
            ax.set_xlabel("softmax output i (class index)")
            ax.set_ylabel("true class c (class index)")
            ax.set_title(title or "Input-gradient magnitude of the softmax outputs")

        figure(path, draw, size=(5.5, 4.5))
