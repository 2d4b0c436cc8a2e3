"""The detector contract: a detector plugin (folder ``detectors/``, entry-point group
``robustbench_er.detectors``) subclasses :class:`Detector`. ``fit_reference(model, x, y)`` learns
what natural training data look like (a KDE per class, say), ``features(model, x)`` maps images to
the detector's features, and the base class fits a logistic regression (scikit-learn) on them to
tell adversarial from non-adversarial, and scores with it. The protocol that trains and scores
detectors is :mod:`robustbench_er.engine.detection`."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from robustbench_er.core.errors import UserInputError
from robustbench_er.models.defended import DefendedModel


class Detector:
    """Base class of detector plugins.

    Subclasses set ``name`` (by registration) and ``needs_embedding`` and implement
    ``features``; ``fit_reference`` is optional. The logistic regression on the features and
    its scaling (``scaler``: ``"standard"`` z-scores, ``"minmax"`` scales to [0, 1]) are the
    base class's.
    """

    name: ClassVar[str] = ""
    #: the detector reads ``model.embed`` (refused, with one sentence, on a model without one)
    needs_embedding: ClassVar[bool] = False
    scaler: ClassVar[str] = "standard"

    def __init__(self, dataset: str = "", **params: Any) -> None:
        self.dataset = dataset
        self.params = params
        self._lr: Any = None
        self._scale: Any = None

    def check_model(self, model: DefendedModel) -> None:
        if self.needs_embedding and not model.has_embed:
            raise UserInputError(f"Detector {self.name!r} reads the model's embedding, which this defense lacks"
                                 " (no embed() on its network).")

    def fit_reference(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor) -> None:
        """Learn from natural training data (default: nothing)."""

    def features(self, model: DefendedModel, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def fit(self, model: DefendedModel, x_pos: torch.Tensor, x_neg: torch.Tensor) -> None:
        """Fit the logistic regression: positives adversarial, negatives natural and noisy."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import MinMaxScaler, StandardScaler

        if len(x_pos) < 2 or len(x_neg) < 2:
            raise UserInputError("Too few examples to train a detector on set I (fewer than 2 adversarial or"
                                 " natural ones); use more samples or a larger split.")
        f = np.concatenate([self.features(model, x_pos), self.features(model, x_neg)])
        t = np.concatenate([np.ones(len(x_pos)), np.zeros(len(x_neg))])
        self._scale = (MinMaxScaler() if self.scaler == "minmax" else StandardScaler()).fit(f)
        self._lr = LogisticRegression(max_iter=1000).fit(self._scale.transform(f), t)

    def torch_features(self, model: DefendedModel, x: torch.Tensor) -> torch.Tensor:
        """``features`` as a differentiable torch function of ``x``, for adaptive attacks.
        Detectors that cannot be differentiated leave it unimplemented."""
        raise NotImplementedError(f"Detector {self.name!r} has no differentiable form")

    def torch_logit(self, model: DefendedModel, x: torch.Tensor) -> torch.Tensor:
        """The logistic regression's logit on :meth:`torch_features` (scaler included), in torch."""
        f = self.torch_features(model, x)
        sc = self._scale
        if hasattr(sc, "mean_"):
            f = (f - torch.as_tensor(sc.mean_, dtype=f.dtype)) / torch.as_tensor(sc.scale_, dtype=f.dtype)
        else:
            f = f * torch.as_tensor(sc.scale_, dtype=f.dtype) + torch.as_tensor(sc.min_, dtype=f.dtype)
        w = torch.as_tensor(self._lr.coef_[0], dtype=f.dtype)
        return f @ w + float(self._lr.intercept_[0])

    def score(self, model: DefendedModel, x: torch.Tensor) -> np.ndarray:
        """Probability that each image is adversarial."""
        if self._lr is None:
            raise RuntimeError("fit the detector first")
        if len(x) == 0:
            return np.zeros(0)
        return np.asarray(self._lr.predict_proba(self._scale.transform(self.features(model, x)))[:, 1])


def torch_kde_logdensity(feats: torch.Tensor, ref: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Gaussian KDE log density of ``feats`` under the points ``ref`` (scikit-learn's formula),
    differentiable in ``feats``."""
    d = feats.shape[1]
    sq = torch.cdist(feats, ref.to(feats.dtype)) ** 2
    return (torch.logsumexp(-sq / (2 * bandwidth ** 2), dim=1) - math.log(len(ref))
            - 0.5 * d * math.log(2 * math.pi * bandwidth ** 2))


def validate_detector_class(name: str, obj: Any) -> None:
    if not (isinstance(obj, type) and issubclass(obj, Detector)):
        raise TypeError(f"Detector {name!r} must be a subclass of robustbench_er.plugin.Detector.")
    if obj.features is Detector.features:
        raise TypeError(f"Detector {name!r} must implement features(model, x).")
    if obj.scaler not in ("standard", "minmax"):
        raise TypeError(f"Detector {name!r}: scaler must be 'standard' or 'minmax'.")


def batched(fn: Any, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """``fn`` over ``x`` in batches, without gradients, rows concatenated."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(np.asarray(fn(x[i:i + batch_size])))
    return np.concatenate(outs) if outs else np.zeros((0,))
