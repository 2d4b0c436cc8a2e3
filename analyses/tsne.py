"""t-SNE map of clean and PGD-adversarial embeddings (Li et al. 2021, ER-Classifier, Figures 5
and 6).

The defended model's embedding (``embed``) of ``samples`` (500) test points and of their
Linf PGD examples at ``eps`` (0.3, the MNIST budget; ``steps`` 20, the harness's PGD through
:func:`robustbench_er.plugins.analysis.pgd_examples`) is projected to 2-D by t-SNE (van der Maaten &
Hinton 2008) with scikit-learn's ``TSNE`` (``perplexity`` 30, PCA initialisation, random state
``seed``). Points are coloured by their true class; adversarial points are down triangles, and
those the attack got misclassified carry a black edge (the paper marks misclassified adversarial
points as down triangles and the others as dots). The paper gives no perplexity; 30 is
scikit-learn's and van der Maaten's usual value.

Summary: ``clean_acc`` and ``adv_acc`` (accuracy of the model on these points, clean and under
this PGD), and ``knn_clean`` / ``knn_adv``: how well the 2-D map keeps the classes apart, the
mean share of a point's ``knn`` (5) nearest *clean* points in the map that have its true class
(a clean point's own position excluded). A robust embedding keeps ``knn_adv`` near ``knn_clean``.

Deviation: the paper projects the clean and the adversarial embeddings in two separate t-SNE
maps; we fit one map on both together (2 x ``samples`` points), so the adversarial points can be
compared with the clean clusters in the same coordinates.
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
    pgd_examples,
    register_analysis,
)


def knn_agreement(ref: np.ndarray, ref_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray,
                  k: int, same: bool) -> float:
    """Mean share of each query point's ``k`` nearest reference points with the query's label;
    ``same``: the queries are the reference points themselves (each one's own position skipped)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(ref) - 1 if same else len(ref))
    nn = NearestNeighbors(n_neighbors=k).fit(ref)
    idx = nn.kneighbors(return_distance=False) if same else nn.kneighbors(query, return_distance=False)
    return float((ref_labels[idx] == query_labels[:, None]).mean())


@register_analysis("tsne")
class TSNEMap(Analysis):
    """t-SNE of clean and PGD-adversarial embeddings, coloured by class."""

    @dataclass
    class Params(AnalysisParams):
        samples: int = 500
        eps: float = 0.3
        steps: int = 20
        perplexity: float = 30.0
        knn: int = 5

    needs_embedding = True

    def validate(self) -> None:
        p = self.params
        if not 0 <= p.eps <= 1:
            raise UserInputError(f"Analysis 'tsne': eps must be between 0 and 1 (images are in [0, 1]); got {p.eps}.")
        if p.steps < 1:
            raise UserInputError(f"Analysis 'tsne': steps must be at least 1; got {p.steps}.")
        if not 0 < p.perplexity < 2 * p.samples:
            raise UserInputError(f"Analysis 'tsne': perplexity must be positive and below 2 x samples"
                                 f" ({2 * p.samples}); got {p.perplexity}.")
        if not 1 <= p.knn < p.samples:
            raise UserInputError(f"Analysis 'tsne': knn must be between 1 and samples - 1; got {p.knn}.")

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        from sklearn.manifold import TSNE

        p, model = self.params, ctx.model
        assert model is not None
        x, y = ctx.points(p.samples)
        dev = device_of(model)
        x, y = x.to(dev), y.to(dev)
        if 2 * len(x) <= p.perplexity:
            raise UserInputError(f"Analysis 'tsne': perplexity {p.perplexity} needs more than {p.perplexity / 2:g}"
                                 f" test points; the dataset gives {len(x)}.")
        x_adv = pgd_examples(model, x, y, p.eps, steps=p.steps, seed=p.seed)
        labels = y.cpu().numpy()
        pred_clean = model.predict_label(x).cpu().numpy()
        pred_adv = model.predict_label(x_adv).cpu().numpy()
        z = np.concatenate([embeddings(model, x), embeddings(model, x_adv)]).astype(np.float64)
        xy = TSNE(n_components=2, perplexity=p.perplexity, init="pca", random_state=p.seed).fit_transform(z)
        n = len(labels)
        clean_xy, adv_xy = xy[:n], xy[n:]
        summary = {
            "clean_acc": float((pred_clean == labels).mean()),
            "adv_acc": float((pred_adv == labels).mean()),
            "knn_clean": knn_agreement(clean_xy, labels, clean_xy, labels, p.knn, same=True),
            "knn_adv": knn_agreement(clean_xy, labels, adv_xy, labels, p.knn, same=False),
        }
        rows = [{"kind": kind, "point": i, "label": int(labels[i]), "pred": int(pred[i]),
                 "tsne_1": float(c[i, 0]), "tsne_2": float(c[i, 1])}
                for kind, c, pred in (("clean", clean_xy, pred_clean), ("adversarial", adv_xy, pred_adv))
                for i in range(n)]
        extra = {"clean_xy": clean_xy, "adv_xy": adv_xy, "labels": labels, "clean_pred": pred_clean,
                 "adv_pred": pred_adv, "adv_wrong": pred_adv != labels, "eps": p.eps}
        return AnalysisResult(summary, rows, extra)

    def plot(self, result: AnalysisResult, path: Path, title: str = "") -> None:
        e = result.extra
        clean, adv = np.asarray(e["clean_xy"], dtype=float), np.asarray(e["adv_xy"], dtype=float)
        labels, wrong = np.asarray(e["labels"], dtype=int), np.asarray(e["adv_wrong"], dtype=bool)

        def draw(ax: Any) -> None:
            import matplotlib.pyplot as plt
            from matplotlib.lines import Line2D

            cmap = plt.get_cmap("tab10" if labels.max(initial=0) < 10 else "tab20")
            colours = cmap(labels % cmap.N)
            ax.scatter(clean[:, 0], clean[:, 1], c=colours, marker="o", s=10, alpha=0.6, linewidths=0)
            ok = ~wrong
            ax.scatter(adv[ok, 0], adv[ok, 1], c=colours[ok], marker="v", s=16, alpha=0.8, linewidths=0)
            ax.scatter(adv[wrong, 0], adv[wrong, 1], c=colours[wrong], marker="v", s=22, edgecolors="k",
                       linewidths=0.7)
            handles = [Line2D([], [], ls="", marker="o", color="grey", label="clean"),
                       Line2D([], [], ls="", marker="v", color="grey", label="PGD, still correct"),
                       Line2D([], [], ls="", marker="v", color="grey", markeredgecolor="k",
                              label="PGD, misclassified")]
            ax.legend(handles=handles, fontsize=7, loc="best")
            ax.set_xlabel("t-SNE dimension 1 (arbitrary units)")
            ax.set_ylabel("t-SNE dimension 2 (arbitrary units)")
            ax.set_title(title or f"t-SNE of embeddings, PGD eps = {e.get('eps', '?')} (colour: true class)")

        figure(path, draw, size=(6.0, 5.0))
