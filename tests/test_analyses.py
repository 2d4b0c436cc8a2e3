"""Analysis plugins: each runs on a tiny model (or the dataset alone) and plots; the intrinsic
dimension of a known linear subspace and of a swiss roll (each estimator), the sparsity counts of a
hand-made embedding and of a trained model's dead ReLUs and the sensitivity's zero at eps 0 are
right; bad parameters are refused with one sentence."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import robustbench_er.analyses.gradient_landscape
import robustbench_er.analyses.intrinsic_dim
import robustbench_er.analyses.loss_surface
import robustbench_er.analyses.sensitivity
import robustbench_er.analyses.sparsity
import robustbench_er.analyses.tsne  # noqa: F401  (the imports register the plugins)
from robustbench_er.analyses.intrinsic_dim import (
    hub_distances,
    intrinsic_dimension,
    knn_distances,
    mle_per_k,
)
from robustbench_er.analyses.sparsity import sparsity_of
from robustbench_er.core.errors import UserInputError
from robustbench_er.plugins.analysis import AnalysisContext, AnalysisResult
from robustbench_er.plugins.registry import get_analysis, list_analyses

OURS = {"intrinsic-dim", "tsne", "loss-surface", "sensitivity", "sparsity", "gradient-landscape"}

#: small, CPU-cheap parameters per analysis (digits: 359 test points, 8x8 images, 64-unit embedding)
SMALL = {
    "intrinsic-dim": {"samples": 200},
    "tsne": {"samples": 40, "steps": 5, "perplexity": 10.0},
    "loss-surface": {"samples": 4, "grid": 5},
    "sensitivity": {"samples": 40, "eps": "0:0.2:0.1", "steps": 5},
    "sparsity": {"samples": 80},
    "gradient-landscape": {"samples": 60},
}


def expected_rows(name: str, a, res: AnalysisResult, classes: int) -> int | None:
    p = a.params
    if name == "intrinsic-dim":
        return p.k2 - p.k1 + 1
    if name == "tsne":
        return 2 * p.samples
    if name == "loss-surface":
        return p.grid * p.grid
    if name == "sensitivity":
        return len(a.eps_list)
    if name == "sparsity":
        return min(int(res.summary["points"]), int(res.summary["total_units"]))
    if name == "gradient-landscape":
        return classes * classes  # 60 points cover the 10 digits
    return None


def test_our_analyses_are_registered():
    assert set(list_analyses()) >= OURS


@pytest.mark.parametrize("name", list_analyses())
def test_analysis_runs_and_plots(name, none_digits, digits, tmp_path):
    a = get_analysis(name)(**SMALL.get(name, {"samples": 30}))
    model = none_digits.model.eval() if a.uses_model() else None
    a.check_model(model, "none")
    res = a.run(AnalysisContext(digits, model, "none"))
    assert res.summary and all(isinstance(v, float) and math.isfinite(v) for v in res.summary.values()), res.summary
    assert res.rows and all(isinstance(r, dict) for r in res.rows)
    assert all(set(r) == set(res.rows[0]) for r in res.rows)  # one CSV header
    assert all(isinstance(v, (int, float, str, bool)) for r in res.rows for v in r.values())  # flat
    n = expected_rows(name, a, res, digits.spec.classes)
    if n is not None:
        assert len(res.rows) == n
    back = AnalysisResult.from_json(json.loads(json.dumps(res.to_json())))  # JSON-able, as the store keeps it
    png = tmp_path / f"{name}.png"
    a.plot(back, png, title=name)
    assert png.stat().st_size > 2000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_intrinsic_dimension_of_a_linear_subspace():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 5)) @ rng.standard_normal((5, 40))  # a 5-d linear subspace of R^40
    assert intrinsic_dimension(x) == pytest.approx(5, rel=0.2)
    # the analysis on a dataset of those points (1 x 5 x 8 "images"), with the scikit-dimension cross-check
    data = SimpleNamespace(x_test=torch.tensor(x, dtype=torch.float32).view(-1, 1, 5, 8),
                           y_test=torch.zeros(1000, dtype=torch.int64), sample_ids=lambda n: np.arange(n))
    res = get_analysis("intrinsic-dim")().run(AnalysisContext(data, None, ""))
    assert res.summary["id_mle"] == pytest.approx(5, rel=0.2)
    assert res.summary["id_levina"] == pytest.approx(5, rel=0.2)
    assert res.summary["points"] == 1000 and res.summary["ambient_dim"] == 40
    # scikit-dimension (a dependency) computes the same estimator
    assert res.summary["id_skdim"] == pytest.approx(res.summary["id_mle"], rel=1e-4)


def _points_dataset(x: np.ndarray, shape: tuple[int, ...]) -> SimpleNamespace:
    """A dataset whose test "images" are the rows of ``x`` (in their given order)."""
    return SimpleNamespace(x_test=torch.tensor(x, dtype=torch.float32).view(-1, *shape),
                           y_test=torch.zeros(len(x), dtype=torch.int64), sample_ids=lambda n: np.arange(n))


@pytest.mark.parametrize("estimator, trafo", [("mackay-ghahramani", "none"), ("levina-bickel", "none"),
                                              ("hub-toolbox", "none"), ("hub-toolbox", "var")])
def test_each_estimator_finds_the_dimension_of_a_swiss_roll(estimator, trafo):
    from sklearn.datasets import make_swiss_roll

    rng = np.random.default_rng(0)
    rotate = np.linalg.qr(rng.standard_normal((10, 3)))[0].T  # 3 orthonormal rows in R^10
    x = make_swiss_roll(500, random_state=0)[0] @ rotate  # a 2-d manifold in R^10
    a = get_analysis("intrinsic-dim")(samples=500, estimator=estimator, trafo=trafo)
    res = a.run(AnalysisContext(_points_dataset(x, (1, 2, 5)), None, ""))
    s = res.summary
    head = s["id_mle"] if estimator == "mackay-ghahramani" else s["id"]
    # Levina's mean is nearly unbiased; the MacKay average is low by about (k - 2) / (k - 1)
    assert head == pytest.approx(2, rel=0.1 if estimator != "mackay-ghahramani" else 0.2)
    assert ("id" in s) == (estimator != "mackay-ghahramani")
    if estimator == "hub-toolbox":  # no duplicates here: the hub-toolbox's numerics change nothing
        assert s["id_hub"] == pytest.approx(s["id_levina"], rel=1e-9) and s["id"] == s["id_hub"]
        assert s["id_hub_mackay"] == pytest.approx(s["id_mle"], rel=1e-9)
        assert {"id_hub", "id_hub_mackay"} <= set(res.rows[0])
    # the default keeps the keys of results stored before estimator and trafo existed
    keys = set(a.identity()["params"])
    assert ("estimator" in keys) == (estimator != "mackay-ghahramani") and ("trafo" in keys) == (trafo != "none")


def test_hub_toolbox_keeps_duplicates_at_distance_1e_minus_7_squared():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 8))
    dup = np.vstack([x, x[:20]])
    d = hub_distances(dup, 12)
    assert d.shape == (220, 12) and np.all(np.diff(d, axis=1) >= 0)
    assert d[0, 0] == pytest.approx(np.sqrt(1e-7)) and d[25, 0] > 1e-2  # a twin is the nearest neighbour
    np.testing.assert_allclose(hub_distances(x, 12), knn_distances(x, 12), rtol=1e-6)
    # twins pull the estimate down (2.75 against 3.07 for Levina's mean, 1.52 against 2.60 for
    # MacKay's average); the default drops them instead
    for average, factor in (("levina", 0.95), ("mackay", 0.7)):
        kept = np.mean(list(mle_per_k(d, 6, 12, average=average).values()))
        dropped = np.mean(list(mle_per_k(knn_distances(x, 12), 6, 12, average=average).values()))
        assert kept < factor * dropped
    assert intrinsic_dimension(dup) == intrinsic_dimension(x)


def test_intrinsic_dimension_of_embeddings_needs_a_model(none_digits, digits):
    a = get_analysis("intrinsic-dim")(samples=100, space="embedding")
    assert a.uses_model() and not get_analysis("intrinsic-dim")().uses_model()
    with pytest.raises(UserInputError, match="needs a defense"):
        a.check_model(None)
    res = a.run(AnalysisContext(digits, none_digits.model.eval(), "none"))
    assert res.summary["ambient_dim"] == 64 and 1 < res.summary["id_mle"] < 64


def test_sparsity_of_a_hand_made_embedding():
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((2, 7))
    z = np.zeros((300, 10))
    z[:, [0, 1, 3, 4, 6, 8, 9]] = rng.standard_normal((300, 2)) @ basis  # rank 2 on 7 units
    z[:, [2, 5, 7]] = 1e-8 * rng.standard_normal((300, 3))  # "zero" units: below tol everywhere
    s = sparsity_of(z, tol=1e-6, variance=0.99)
    assert s["units"] == 7 and s["total_units"] == 10 and s["pca_dims"] == 2 and s["active_per_point"] == 7
    assert s["cumulative"][0] < 0.99 <= s["cumulative"][1]
    assert sparsity_of(z, tol=0.0)["units"] == 10
    assert sparsity_of(np.zeros((5, 4)))["units"] == 0 and sparsity_of(np.zeros((5, 4)))["pca_dims"] == 0


def test_sparsity_counts_dead_relu_units_of_a_trained_model(none_digits, digits):
    """The units count is a property of the network, not of the measurement: the embedding is the
    FC layer after its ReLU, a unit counts when its pre-activation is positive on some point, for
    any small tol; two models with the same live units differ in the active units per point."""
    model = none_digits.model.eval()
    x = digits.x_test[digits.sample_ids(80)]
    res = get_analysis("sparsity")(samples=80).run(AnalysisContext(digits, model, "none"))
    s = res.summary
    net = model.net
    with torch.no_grad():
        pre = net.head[1](net.head[0](net.body(model.normalize(x)))).numpy()  # the FC before the ReLU
        z = model.embed(x).numpy()
    np.testing.assert_allclose(z, np.maximum(pre, 0), atol=1e-6)  # post-ReLU, never negative
    live = int((pre > 1e-6).any(axis=0).sum())
    assert s["units"] == live and 0 < live < s["total_units"] == 64  # dead ReLUs exist: 40 of 64 live
    assert all(sparsity_of(z, tol=t)["units"] == live for t in (0.0, 1e-6, 1e-3))
    assert s["active_per_point"] == pytest.approx((pre > 1e-6).sum(axis=1).mean())
    assert s["active_per_point"] < s["units"]
    # same live units, fewer active per point: the summary tells the two apart
    sparse = z * (np.arange(len(z))[:, None] % 2 == np.arange(z.shape[1])[None, :] % 2)
    sparse[:2] = z.max(axis=0)  # every live unit still fires somewhere
    t = sparsity_of(sparse)
    assert t["units"] == live and t["active_per_point"] < s["active_per_point"]
    assert get_analysis("sparsity")().identity()["version"] == 1  # results without active_per_point are recomputed


def test_sensitivity_is_zero_at_eps_0_and_grows(none_digits, digits):
    a = get_analysis("sensitivity")(samples=60, eps="0,0.05,0.15,0.3", steps=10)
    res = a.run(AnalysisContext(digits, none_digits.model.eval(), "none"))
    means = [r["mean"] for r in res.rows]
    assert [r["eps"] for r in res.rows] == [0.0, 0.05, 0.15, 0.3]
    assert means[0] == 0.0 and res.rows[0]["std"] == 0.0
    assert all(b > a_ for a_, b in zip(means, means[1:])), means
    assert res.summary["ratio_max_eps"] == means[-1] and res.summary["ratio_auc"] > 0


def test_loss_rises_faster_along_the_gradient_sign(none_digits, digits):
    res = get_analysis("loss-surface")(samples=8, grid=7, eps_max=0.3).run(
        AnalysisContext(digits, none_digits.model.eval(), "none"))
    s = res.summary
    assert s["rise_gradient"] > s["rise_random"] and s["loss_max"] >= s["loss_center"]


@pytest.mark.parametrize("name, params, says", [
    ("tsne", {"nope": 1}, "no parameter 'nope'"),
    ("sparsity", {"tol": "small"}, "'tol'"),
    ("intrinsic-dim", {"space": "pixels"}, "space"),
    ("intrinsic-dim", {"k1": 2}, "k1"),
    ("intrinsic-dim", {"samples": 10}, "samples"),
    ("intrinsic-dim", {"estimator": "twonn"}, "estimator"),
    ("intrinsic-dim", {"trafo": "minmax"}, "trafo"),
    ("tsne", {"eps": -0.1}, "eps"),
    ("tsne", {"perplexity": 0.0}, "perplexity"),
    ("loss-surface", {"grid": 20}, "grid"),
    ("loss-surface", {"eps_max": 2.0}, "eps_max"),
    ("sensitivity", {"eps": "0:0.3:-1"}, "eps"),
    ("sensitivity", {"eps": "0,1.5"}, "eps"),
    ("sparsity", {"variance": 1.5}, "variance"),
    ("gradient-landscape", {"samples": 1}, "samples"),
])
def test_bad_parameters_are_refused(name, params, says):
    with pytest.raises(UserInputError, match=says) as info:
        get_analysis(name)(**params)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")  # one sentence
