"""Normalized embedding sensitivity under PGD (Bashivan et al. 2021, AFD, Figure A1 and
Section 5 "Embedding Stability").

For ``samples`` (200) test points x and their Linf PGD examples x' at each budget in ``eps``
(``"0:0.3:0.05"``; the paper sweeps the MNIST budgets up to and past 0.3), the ratio
``||E(x) - E(x')||_2 / ||E(x)||_2`` of the defended model's embedding E (``embed``: the layer
before the classifier, as AFD's E). The examples come from the harness's PGD
(:func:`robustbench_er.plugins.analysis.pgd_examples`, ``steps`` 20, random start from ``seed``) on the
classification loss, as the paper's PGD-Linf. Plain torch and numpy.

Rows: per eps the mean, standard deviation and median of the ratio over the points. Summary:
``ratio_max_eps`` (the mean ratio at the largest eps), ``median_max_eps`` and ``ratio_auc`` (the
area under the mean-ratio curve over eps, trapezoid rule; units eps). At eps 0 x' = x, so the
ratio is 0 exactly (the clean embedding is reused, also for randomized networks).

Deviation: Figure A1 plots the median with standard-deviation error bars; we plot the mean with
a +-1 standard-deviation band and the median as a dashed line (both are in the rows).
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
    parse_eps,
    pgd_examples,
    register_analysis,
)


@register_analysis("sensitivity")
class EmbeddingSensitivity(Analysis):
    """||E(x) - E(x')|| / ||E(x)|| for PGD examples x' over a grid of Linf budgets."""

    @dataclass
    class Params(AnalysisParams):
        samples: int = 200
        eps: str = "0:0.3:0.05"
        steps: int = 20

    needs_embedding = True

    def validate(self) -> None:
        p = self.params
        try:
            eps = parse_eps(p.eps)
        except ValueError as exc:
            raise UserInputError(f"Analysis 'sensitivity': eps {p.eps!r} is not a list of budgets ({exc}).") from None
        if not eps or any(not 0 <= e <= 1 for e in eps):
            raise UserInputError(f"Analysis 'sensitivity': eps must list budgets between 0 and 1; got {p.eps!r}.")
        if p.steps < 1:
            raise UserInputError(f"Analysis 'sensitivity': steps must be at least 1; got {p.steps}.")
        self.eps_list = sorted(set(eps))

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        p, model = self.params, ctx.model
        assert model is not None
        dev = device_of(model)
        x, y = ctx.points(p.samples)
        x, y = x.to(dev), y.to(dev)
        z = embeddings(model, x).astype(np.float64)
        norm = np.maximum(np.linalg.norm(z, axis=1), 1e-12)
        rows: list[dict[str, Any]] = []
        for e in self.eps_list:
            if e <= 0:
                ratio = np.zeros(len(z))
            else:
                za = embeddings(model, pgd_examples(model, x, y, e, steps=p.steps, seed=p.seed)).astype(np.float64)
                ratio = np.linalg.norm(z - za, axis=1) / norm
            rows.append({"eps": float(e), "mean": float(ratio.mean()), "std": float(ratio.std()),
                         "median": float(np.median(ratio)), "points": len(ratio)})
        eps = np.array([r["eps"] for r in rows])
        mean = np.array([r["mean"] for r in rows])
        auc = float(np.sum((mean[1:] + mean[:-1]) / 2 * np.diff(eps))) if len(eps) > 1 else 0.0
        summary = {"ratio_max_eps": rows[-1]["mean"], "median_max_eps": rows[-1]["median"], "ratio_auc": auc,
                   "max_eps": rows[-1]["eps"]}
        extra = {k: [r[k] for r in rows] for k in ("eps", "mean", "std", "median")}
        return AnalysisResult(summary, rows, extra)

    def plot(self, result: AnalysisResult, path: Path, title: str = "") -> None:
        eps, mean, std, med = (np.asarray(result.extra[k], dtype=float) for k in ("eps", "mean", "std", "median"))

        def draw(ax: Any) -> None:
            ax.plot(eps, mean, "o-", label="mean")
            ax.fill_between(eps, mean - std, mean + std, alpha=0.25, label="mean +- 1 std")
            ax.plot(eps, med, "k--", lw=1, label="median")
            ax.set_xlabel("PGD Linf budget eps (pixel scale [0, 1])")
            ax.set_ylabel("||E(x) - E(x')|| / ||E(x)|| (ratio)")
            ax.set_ylim(bottom=0)
            ax.set_title(title or "Normalized embedding sensitivity")
            ax.legend(fontsize=8)

        figure(path, draw)
