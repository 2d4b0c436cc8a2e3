"""Intrinsic dimension: the Levina-Bickel maximum-likelihood estimate with the MacKay-Ghahramani
average (Levina & Bickel, "Maximum likelihood estimation of intrinsic dimension", NIPS 2005;
reference code OFAI/hub-toolbox-python3, which Li et al. 2021 name). The analysis behind Table
10 of Li et al. 2021 (ER-Classifier), the estimates that guided its embedding sizes: 13 (MNIST), 17
(CIFAR10), 20 (STL10), 19 (Tiny ImageNet), each from 1,000 samples.

For each k in [``k1``, ``k2``] (paper: 6 to 12) and each point x, with T_j(x) the Euclidean
distance to its j-th nearest neighbour among the other points,
``d_k(x) = (k - 2) / sum_{j<k} log(T_k(x) / T_j(x))``; MacKay and Ghahramani's average inverts
the mean inverse, ``d_k = 1 / mean_x(1 / d_k(x))``, and the estimate (``id_mle``) is the mean of
d_k over k. Parameters: ``samples`` (1,000, as the paper: the first points of the dataset's fixed
test order, or all of them when the test split is smaller), ``k1`` (6), ``k2`` (12) and
``space``: ``input`` (flattened pixels in [0, 1]; needs no model) or ``embedding`` (the
defended model's ``embed``; then a defense is needed).

``id_mle`` is our own implementation of exactly that estimator, on scikit-learn's
NearestNeighbors. The maintained ``scikit-dimension`` package (``skdim`` 0.5, which installs
and imports here) is reported beside it when importable (``id_skdim``): ``skdim.id.MLE`` with
``unbiased=True`` (the k - 2 numerator) and ``comb="mle"`` (the MacKay-Ghahramani average over
points), fitted once per k on its own neighbours and averaged over k; it agrees to rounding.
Without it only our value is reported.

``id_levina`` is Levina and Bickel's own average (the mean of d_k(x) over points and k; the
reference code's ``estimator='levina'``). Note: with the k - 2 numerator, the MacKay average is
biased low by the factor (k - 2) / (k - 1) on data of uniform density (0.87 over k = 6..12: a
5-dimensional Gaussian gives 4.3), while Levina's mean is not; on our ``mnist5k`` test inputs
``id_mle`` is 9.5 and ``id_levina`` 12.6, the latter close to the paper's 13.

Two parameters added later (left out of a result's key at their defaults, so stored results
stay valid):

* ``estimator`` names the headline estimate: ``mackay-ghahramani`` (the default; the headline is
  ``id_mle`` and the output is as before), ``levina-bickel`` (the headline is Levina's mean) or
  ``hub-toolbox``. Any but the default adds the headline to the summary as ``id``.
* ``trafo`` (``none``, ``std`` or ``var``) transforms the points column by column before
  anything else, as the hub-toolbox's ``trafo`` option: subtract the column mean, then divide by
  the column's standard deviation (``std``) or its variance (``var``), plus 1e-7.

``hub-toolbox`` reproduces ``intrinsic_dimension`` of the hub-toolbox (OFAI/hub-toolbox-python3,
module ``hub_toolbox/IntrinsicDim.py``, renamed ``intrinsic_dimension.py`` in March 2018; from
Levina's Matlab ``mledim.m``), in our own code: squared
distances from ``|x|^2 + |y|^2 - 2 x.y`` over all points, duplicates kept, values at or below 0
replaced by 1e-7 (so a duplicate counts as a neighbour at distance 3e-4), the smallest (the point
itself) dropped; then the same d_k(x) as above. It reports both of its averages: ``id_hub``, its
``estimator='levina'`` (the mean of d_k(x) over points and k) and ``id_hub_mackay``, its
``estimator='mackay'`` (the per-k inverse of the mean inverse, averaged over k); the headline
``id`` is ``id_hub``. It does not round (versions before March 2018 return the estimate rounded
to an integer). Its
defaults changed in January 2017: until then ``estimator='levina', trafo='var'``, since then
``estimator='mackay', trafo=None``; ``intrinsic-dim(estimator=hub-toolbox,trafo=var)`` gives the
old defaults' value as ``id_hub`` and the new defaults' value, with ``trafo=none``, is
``id_hub_mackay``. On points without duplicates and with ``trafo=none`` it equals ``id_levina``
and ``id_mle`` to rounding.

Which one gave Table 10's 13 for MNIST: on the 1,000 ``mnist5k`` test inputs, Levina's mean
without a transform gives 12.61 (12.3 +- 0.3 over ten random 1,000-image subsets of all 5,000
images), which rounds to 13; the MacKay average gives 9.49 (the hub-toolbox's default since
2017), ``trafo=std`` 14.5 (Levina) / 9.9 (MacKay), and the 2016 defaults (Levina, ``trafo=var``)
223, since dividing by the variance blows up the pixels that are rarely inked and leaves the
points with nearly equal neighbour distances, whose d_k(x) are huge (the MacKay average of the
same points is 7.2). So the paper's value is most likely Levina's mean on untransformed pixels:
``id_levina``, or ``id_hub`` with ``estimator=hub-toolbox``.

Deviation: duplicate points (distance 0, which makes the estimate degenerate) are dropped
before the neighbours are found (``duplicates`` counts them); the reference code floors
distances at 1e-7 instead, as ``id_hub`` and ``id_hub_mackay`` do (``estimator=hub-toolbox``).
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
    added_field,
    device_of,
    embeddings,
    figure,
    register_analysis,
)

SPACES = ("input", "embedding")
ESTIMATORS = ("mackay-ghahramani", "levina-bickel", "hub-toolbox")
TRAFOS = ("none", "std", "var")


def knn_distances(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's Euclidean distances to its ``k`` nearest other rows, ascending (N x k)."""
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=k).fit(x).kneighbors()  # no query: a point is not its own neighbour
    return np.asarray(dist, dtype=np.float64)


def mle_per_k(dist: np.ndarray, k1: int, k2: int, average: str = "mackay") -> dict[int, float]:
    """The Levina-Bickel estimate for each k in [k1, k2] from the sorted neighbour distances
    ``dist`` (N x >= k2, all positive), averaged over points MacKay and Ghahramani's way
    (``"mackay"``: the inverse of the mean inverse) or Levina and Bickel's (``"levina"``: the mean)."""
    out = {}
    for k in range(k1, k2 + 1):
        t = dist[:, :k]
        inv = np.log(t[:, k - 1:k] / t[:, :k - 1]).sum(1) / (k - 2)  # 1 / d_k(x)
        out[k] = float(1.0 / inv.mean()) if average == "mackay" else float((1.0 / inv).mean())
    return out


def skdim_per_k(x: np.ndarray, k1: int, k2: int) -> dict[int, float] | None:
    """The MacKay-Ghahramani estimates from scikit-dimension, or None when it is not importable."""
    try:
        import skdim
    except Exception:  # optional: missing, or broken against this numpy
        return None
    return {k: float(skdim.id.MLE(unbiased=True).fit(x, n_neighbors=k, comb="mle").dimension_)
            for k in range(k1, k2 + 1)}


def transform(x: np.ndarray, trafo: str = "none") -> np.ndarray:
    """The hub-toolbox's column transform of the rows ``x``: ``none``, ``std`` (centre, divide by
    the standard deviation + 1e-7) or ``var`` (centre, divide by the variance + 1e-7)."""
    x = np.array(x, dtype=np.float64)
    if trafo == "none":
        return x
    x -= x.mean(axis=0)
    return x / ((x.std(axis=0) if trafo == "std" else x.var(axis=0)) + 1e-7)


def hub_distances(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distances to the ``k`` nearest rows as the hub-toolbox finds them (N x k, ascending): squared
    distances ``|x|^2 + |y|^2 - 2 x.y`` to every row, the point itself included, values at or
    below 0 set to 1e-7, the smallest dropped; duplicates stay (and count as neighbours)."""
    x = np.asarray(x, dtype=np.float64)
    sq = (x * x).sum(axis=1)
    out = np.empty((len(x), k))
    for i in range(0, len(x), chunk):
        d2 = sq[i:i + chunk, None] + sq[None, :] - 2.0 * (x[i:i + chunk] @ x.T)
        d2 = np.sort(np.partition(d2, k, axis=1)[:, :k + 1], axis=1)
        d2[d2 <= 0] = 1e-7
        out[i:i + chunk] = np.sqrt(d2[:, 1:])
    return out


def intrinsic_dimension(x: np.ndarray, k1: int = 6, k2: int = 12) -> float:
    """The estimate of the rows of ``x`` (the mean over k of the MacKay-Ghahramani average),
    duplicates dropped."""
    u = np.unique(np.asarray(x, dtype=np.float64), axis=0)
    return float(np.mean(list(mle_per_k(knn_distances(u, k2), k1, k2).values())))


@register_analysis("intrinsic-dim")
class IntrinsicDimension(Analysis):
    """Levina-Bickel MLE of the intrinsic dimension of the test inputs or of their embeddings."""

    @dataclass
    class Params(AnalysisParams):
        samples: int = 1000
        k1: int = 6
        k2: int = 12
        space: str = "input"
        estimator: str = added_field("mackay-ghahramani")
        trafo: str = added_field("none")

    needs_model = False  # only with space "embedding": see uses_model and check_model
    needs_embedding = False

    def validate(self) -> None:
        p = self.params
        if p.space not in SPACES:
            raise UserInputError(f"Analysis 'intrinsic-dim': space must be 'input' or 'embedding'; got {p.space!r}.")
        if p.estimator not in ESTIMATORS:
            raise UserInputError(f"Analysis 'intrinsic-dim': estimator must be one of {', '.join(ESTIMATORS)};"
                                 f" got {p.estimator!r}.")
        if p.trafo not in TRAFOS:
            raise UserInputError(f"Analysis 'intrinsic-dim': trafo must be one of {', '.join(TRAFOS)}; got {p.trafo!r}.")
        if not 3 <= p.k1 <= p.k2:
            raise UserInputError(f"Analysis 'intrinsic-dim': k1 and k2 must satisfy 3 <= k1 <= k2; got {p.k1} and {p.k2}.")
        if p.samples <= p.k2:
            raise UserInputError(f"Analysis 'intrinsic-dim': samples must exceed k2 ({p.k2}); got {p.samples}.")

    def uses_model(self) -> bool:
        return bool(self.params.space == "embedding")

    def uses_embedding(self) -> bool:
        return bool(self.params.space == "embedding")

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        p = self.params
        x, _ = ctx.points(p.samples)
        if p.space == "embedding":
            self.check_model(ctx.model, ctx.defense)
            assert ctx.model is not None
            feats = embeddings(ctx.model, x.to(device_of(ctx.model)))
        else:
            feats = x.flatten(1).cpu().numpy()
        feats = transform(np.asarray(feats, dtype=np.float64), p.trafo)
        uniq = np.unique(feats, axis=0)
        if len(uniq) <= p.k2:
            raise UserInputError(f"Analysis 'intrinsic-dim' needs more than k2 = {p.k2} distinct points;"
                                 f" got {len(uniq)}.")
        dist = knn_distances(uniq, p.k2)
        ours = mle_per_k(dist, p.k1, p.k2)
        levina = mle_per_k(dist, p.k1, p.k2, average="levina")
        theirs = skdim_per_k(uniq, p.k1, p.k2)
        hub = hub_mackay = None
        if p.estimator == "hub-toolbox":
            hdist = hub_distances(feats, p.k2)
            hub = mle_per_k(hdist, p.k1, p.k2, average="levina")
            hub_mackay = mle_per_k(hdist, p.k1, p.k2)
        summary: dict[str, float] = {}
        if p.estimator != "mackay-ghahramani":
            summary["id"] = float(np.mean(list((hub if hub is not None else levina).values())))
        summary["id_mle"] = float(np.mean(list(ours.values())))
        if theirs is not None:
            summary["id_skdim"] = float(np.mean(list(theirs.values())))
        summary["id_levina"] = float(np.mean(list(levina.values())))
        if hub is not None and hub_mackay is not None:
            summary.update({"id_hub": float(np.mean(list(hub.values()))),
                            "id_hub_mackay": float(np.mean(list(hub_mackay.values())))})
        summary.update({"points": float(len(uniq)), "duplicates": float(len(feats) - len(uniq)),
                        "ambient_dim": float(feats.shape[1])})
        rows: list[dict[str, Any]] = []
        for k in ours:
            row: dict[str, Any] = {"k": k, "id_mle": ours[k], "id_levina": levina[k]}
            if theirs is not None:
                row["id_skdim"] = theirs[k]
            if hub is not None and hub_mackay is not None:
                row.update({"id_hub": hub[k], "id_hub_mackay": hub_mackay[k]})
            rows.append(row)
        extra: dict[str, Any] = {
            "k": list(ours), "id_mle": list(ours.values()), "id_levina": list(levina.values()),
            "id_skdim": list(theirs.values()) if theirs is not None else None, "space": p.space}
        if p.estimator != "mackay-ghahramani":
            extra["estimator"] = p.estimator
        if hub is not None and hub_mackay is not None:
            extra.update({"id_hub": list(hub.values()), "id_hub_mackay": list(hub_mackay.values())})
        return AnalysisResult(summary, rows, extra)

    def plot(self, result: AnalysisResult, path: Path, title: str = "") -> None:
        ex = result.extra
        ks, est = ex["k"], ex["id_mle"]
        other, levina, hub = ex.get("id_skdim"), ex.get("id_levina"), ex.get("id_hub")
        estimator = ex.get("estimator", "mackay-ghahramani")
        mean = result.summary.get("id", result.summary["id_mle"])

        def draw(ax: Any) -> None:
            ax.plot(ks, est, "o-", label="MLE, MacKay-Ghahramani average")
            if other:
                ax.plot(ks, other, "x", color="tab:orange", label="scikit-dimension (same estimator)")
            if levina:
                ax.plot(ks, levina, "s:", color="tab:green", ms=4, label="MLE, Levina-Bickel average")
            if hub:
                ax.plot(ks, hub, "d--", color="tab:red", ms=4, label="hub-toolbox, Levina-Bickel average")
                ax.plot(ks, ex.get("id_hub_mackay") or [], "v--", color="tab:purple", ms=4,
                        label="hub-toolbox, MacKay-Ghahramani average")
            head = "" if estimator == "mackay-ghahramani" else f"{estimator}: "
            ax.axhline(mean, color="k", ls="--", label=f"{head}mean over k = {mean:.2f}")
            ax.set_xlabel("neighbours k (count)")
            ax.set_ylabel("intrinsic dimension (dimensions)")
            ax.set_title(title or f"Intrinsic dimension ({ex.get('space', 'input')} space)")
            ax.legend(fontsize=7)

        figure(path, draw)
