"""KD + BU: kernel density and Bayesian uncertainty (Feinman et al., "Detecting Adversarial
Samples from Artifacts", 2017; reference code rfeinman/detecting-adversarial-samples).

KD: one Gaussian KDE per class on the last hidden layer of natural training points (bandwidth
1.20 on MNIST-like data, 0.26 on CIFAR, as the reference code); an image's KD is the log
density of its last hidden layer under the class the model predicts. BU: the variance of the
softmax output over ``mc_passes`` (50) forward passes with dropout active (Monte-Carlo dropout),
summed over classes. A model without dropout layers has BU = 0 for every image (dropout is what
makes it informative), so the detector is then KD alone; the reference code assumes dropout.
A logistic regression on z-scored [KD, BU] decides. Uses scikit-learn's KernelDensity and
LogisticRegression; adaptive attacks use the same KDE, BU and regression written in torch.

Deviation: the reference code computes KD on the logits layer's input with its own per-class
subsampling; we use ``fit_points`` (2,000) random natural training points.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from robustbench_er.plugin import (
    DefendedModel,
    Detector,
    batched,
    register_detector,
    torch_kde_logdensity,
)

BANDWIDTH = {"cifar10": 0.26, "cifar100": 0.26, "stl10": 0.26, "tiny-imagenet": 0.26}


@register_detector("kd")
class KernelDensityBU(Detector):
    """KD on the last hidden layer plus MC-dropout uncertainty; logistic regression on both."""

    def _last_hidden(self, model: DefendedModel, x: torch.Tensor) -> np.ndarray:
        return batched(lambda xb: model.hidden(xb)[-1].cpu().numpy(), x)

    def fit_reference(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor) -> None:
        from sklearn.neighbors import KernelDensity

        n = int(self.params.get("fit_points", 2000))
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
        feats, labels = self._last_hidden(model, x[idx]), y[idx].numpy()
        bw = float(self.params.get("bandwidth", BANDWIDTH.get(self.dataset, 1.20)))
        self._kde = {int(c): KernelDensity(kernel="gaussian", bandwidth=bw).fit(feats[labels == c])
                     for c in np.unique(labels) if (labels == c).sum() >= 2}
        self._ref = {c: torch.as_tensor(feats[labels == c], dtype=torch.float32) for c in self._kde}

    def _bu(self, model: DefendedModel, x: torch.Tensor) -> np.ndarray:
        drops = [m for m in model.net.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.AlphaDropout))]
        if not drops:
            return np.zeros(len(x))
        passes = int(self.params.get("mc_passes", 50))
        for m in drops:
            m.train()
        try:
            with torch.no_grad():
                probs = torch.stack([torch.softmax(model.predict(x), 1) for _ in range(passes)])
        finally:
            for m in drops:
                m.eval()
        return probs.var(0).sum(1).cpu().numpy()

    def torch_features(self, model: DefendedModel, x: torch.Tensor) -> torch.Tensor:
        """Differentiable: the KDE in torch; BU from MC-dropout passes in torch (0 without dropout)."""
        feats = model.hidden(x)[-1]
        pred = model.predict(x).argmax(1)
        kd = torch.full((len(x),), -1e6, dtype=feats.dtype)
        for c, kde in self._kde.items():
            m = pred == c
            if m.any():
                kd = torch.where(m, torch_kde_logdensity(feats, self._ref[c], float(kde.bandwidth)), kd)
        drops = [m for m in model.net.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.AlphaDropout))]
        if drops:
            for m in drops:
                m.train()
            try:
                probs = torch.stack([torch.softmax(model.predict(x), 1)
                                     for _ in range(int(self.params.get("mc_passes", 50)))])
            finally:
                for m in drops:
                    m.eval()
            bu = probs.var(0).sum(1)
        else:
            bu = torch.zeros(len(x), dtype=feats.dtype)
        return torch.stack([kd.clamp_min(-1e6), bu], dim=1)

    def features(self, model: DefendedModel, x: torch.Tensor) -> np.ndarray:
        feats = self._last_hidden(model, x)
        pred = model.predict_label(x).cpu().numpy()
        kd = np.full(len(x), -1e6)
        for c, kde in self._kde.items():
            m = pred == c
            if m.any():
                kd[m] = kde.score_samples(feats[m])
        bu = batched(lambda xb: self._bu(model, xb), x)
        return np.stack([np.maximum(kd, -1e6), bu], axis=1)
