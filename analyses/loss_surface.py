"""Loss surface around test points (Li et al. 2021, ER-Classifier, Appendix E, Figure 10; the method
of Engstrom, Ilyas & Athalye 2018, "Evaluating and understanding the robustness of adversarial logit
pairing").

For each of ``samples`` (10) test points x with label y: g = sign of the input gradient of the
cross-entropy loss at x, and r a Rademacher direction (each pixel +1 or -1 with probability 1/2,
drawn from ``seed``). On a ``grid`` x ``grid`` (21 x 21) lattice of (a, b) in
[-``eps_max``, ``eps_max``]^2 (0.3, the MNIST budget) the cross-entropy loss of
clip(x + a g + b r, 0, 1) is computed and averaged over the points: one surface, the mean loss.
A smooth surface that rises gently along g is what the paper reads as "no gradient masking".
Plain torch (autograd for g, the model's forward for the losses); gradients come from the
defense's BPDA approximation when it declares one, the losses from its real forward.

Summary: ``loss_center`` (the clean loss), ``loss_max`` (the grid's highest mean loss), and
``rise_gradient`` / ``rise_random``: the mean loss increase over the positive half of each axis
(a > 0 with b = 0, and b > 0 with a = 0) above the centre.

Deviations: the paper shows one CIFAR10 point as a 3-D surface; we average over points and draw
filled contours; ``grid`` must be odd so that the axes pass through the clean point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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


@register_analysis("loss-surface")
class LossSurface(Analysis):
    """Mean cross-entropy on the plane spanned by the sign-gradient and a Rademacher direction."""

    @dataclass
    class Params(AnalysisParams):
        samples: int = 10
        eps_max: float = 0.3
        grid: int = 21

    def validate(self) -> None:
        p = self.params
        if not 0 < p.eps_max <= 1:
            raise UserInputError(f"Analysis 'loss-surface': eps_max must be in (0, 1] (images are in [0, 1]); got {p.eps_max}.")
        if p.grid < 3 or p.grid % 2 == 0 or p.grid > 201:
            raise UserInputError(f"Analysis 'loss-surface': grid must be an odd integer from 3 to 201 (the axes pass"
                                 f" through the clean point); got {p.grid}.")

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        p, model = self.params, ctx.model
        assert model is not None
        dev = device_of(model)
        x, y = ctx.points(p.samples)
        x, y = x.to(dev), y.to(dev)
        xg = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model.bpda_model().predict(xg), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
        g = grad.sign()
        gen = torch.Generator().manual_seed(p.seed)
        r = (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1).to(x)
        axis = np.linspace(-p.eps_max, p.eps_max, p.grid)
        axis[p.grid // 2] = 0.0
        surface = np.zeros((p.grid, p.grid))  # [i, j]: a = axis[i] (gradient), b = axis[j] (random)
        b = torch.as_tensor(axis, dtype=x.dtype, device=dev).view(-1, 1, 1, 1, 1)
        chunk = max(1, 2048 // p.grid)  # points per forward pass (each gives a row of the grid)
        with torch.no_grad():
            for i, a in enumerate(axis):
                for s in range(0, len(x), chunk):
                    xs, gs, rs, ys = x[s:s + chunk], g[s:s + chunk], r[s:s + chunk], y[s:s + chunk]
                    pts = (xs[None] + float(a) * gs[None] + b * rs[None]).clamp(0, 1)  # grid x n x C x H x W
                    logits = model.predict(pts.flatten(0, 1))
                    ce = F.cross_entropy(logits, ys.repeat(p.grid), reduction="none").view(p.grid, -1)
                    surface[i] += ce.sum(1).cpu().numpy()
        surface /= len(x)
        mid = p.grid // 2
        center = float(surface[mid, mid])
        summary = {
            "loss_center": center,
            "loss_max": float(surface.max()),
            "rise_gradient": float(surface[mid + 1:, mid].mean() - center),
            "rise_random": float(surface[mid, mid + 1:].mean() - center),
        }
        rows = [{"a_gradient": float(axis[i]), "b_random": float(axis[j]), "loss": float(surface[i, j])}
                for i in range(p.grid) for j in range(p.grid)]
        return AnalysisResult(summary, rows, {"axis": axis, "loss": surface})

    def plot(self, result: AnalysisResult, path: Path, title: str = "") -> None:
        axis = np.asarray(result.extra["axis"], dtype=float)
        loss = np.asarray(result.extra["loss"], dtype=float)

        def draw(ax: Any) -> None:
            cs = ax.contourf(axis, axis, loss.T, levels=20, cmap="viridis")  # x: gradient, y: random
            ax.contour(axis, axis, loss.T, levels=10, colors="k", linewidths=0.4)
            ax.figure.colorbar(cs, ax=ax, label="mean cross-entropy loss (nats)")
            ax.plot([0], [0], "w+", ms=10)
            ax.set_xlabel("sign-gradient direction (eps)")
            ax.set_ylabel("Rademacher direction (eps)")
            ax.set_title(title or "Loss surface around test points")

        figure(path, draw, size=(5.5, 4.5))
