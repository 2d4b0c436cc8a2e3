"""ER-Detector (ER1 and ER2): class-conditional densities of the ER-Classifier's codes.

Paper: Li et al., "Towards Robustness of Deep Neural Networks via Regularization", ICCV 2021,
section 3.3 and appendix D (no public code). One Gaussian KDE per class is fitted on the codes
of natural training points; an image's feature is the log density of its code under the class
the model predicts; a logistic regression on that feature separates adversarial from natural
and noisy images.

* ``er1`` uses the code z (``model.embed``).
* ``er2`` uses Z' = the per-layer means of the encoder's hidden outputs concatenated with z
  (``model.hidden(x, part="encoder")``; on a network without an ``encoder`` part, every hidden
  layer).
* ER1- and ER2- (Table 14, appendix D.2) are these detectors on a network with only the encoder
  and the classifier (no discriminator, no regulariser): the ``e-cla`` model. Not on
  ``er-classifier-``, which keeps the regulariser and only drops the min-max training.

Parameters: ``bandwidth`` (the paper gives none; default "scott", scikit-learn's rule of thumb
on the fitted codes), ``fit_points`` (natural training points the KDEs are fitted on, 2,000).
Uses scikit-learn's KernelDensity and LogisticRegression; for adaptive attacks the same KDE and
logistic regression are written in torch (``torch_features``), so they can be differentiated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robustbench_er.plugin import (
    DefendedModel,
    Detector,
    batched,
    register_detector,
    torch_kde_logdensity,
)


class _ERDetector(Detector):
    needs_embedding = True
    use_hidden = False

    def _torch_codes(self, model: DefendedModel, x: torch.Tensor) -> torch.Tensor:
        z = model.embed(x)
        if not self.use_hidden:
            return z
        part = "encoder" if hasattr(model.net, "encoder") else None
        means = torch.stack([h.mean(1) for h in model.hidden(x, part=part)], dim=1)
        return torch.cat([means, z], dim=1)

    def _codes(self, model: DefendedModel, x: torch.Tensor) -> np.ndarray:
        return batched(lambda xb: self._torch_codes(model, xb).cpu().numpy(), x)

    def torch_features(self, model: DefendedModel, x: torch.Tensor) -> torch.Tensor:
        """Differentiable: the KDE written in torch on the stored training codes (same bandwidth)."""
        codes = self._torch_codes(model, x)
        pred = model.predict(x).argmax(1)
        out = torch.full((len(x),), -1e6, dtype=codes.dtype, device=codes.device)
        for c, kde in self._kde.items():
            m = pred == c
            if m.any():
                out = torch.where(m, torch_kde_logdensity(codes, self._ref[c], float(kde.bandwidth_)), out)
        return out.clamp_min(-1e6)[:, None]

    def fit_reference(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor) -> None:
        from sklearn.neighbors import KernelDensity

        n = int(self.params.get("fit_points", 2000))
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
        codes, labels = self._codes(model, x[idx]), y[idx].numpy()
        bw: Any = self.params.get("bandwidth", "scott")
        self._kde = {int(c): KernelDensity(kernel="gaussian", bandwidth=bw).fit(codes[labels == c])
                     for c in np.unique(labels) if (labels == c).sum() >= 2}
        self._ref = {c: torch.as_tensor(codes[labels == c], dtype=torch.float32) for c in self._kde}

    def features(self, model: DefendedModel, x: torch.Tensor) -> np.ndarray:
        codes = self._codes(model, x)
        pred = model.predict_label(x).cpu().numpy()
        dens = np.full(len(x), -1e6)
        for c, kde in self._kde.items():
            m = pred == c
            if m.any():
                dens[m] = kde.score_samples(codes[m])
        return np.maximum(dens, -1e6)[:, None]


@register_detector("er1")
class ER1(_ERDetector):
    """ER-Detector on the code z."""


@register_detector("er2")
class ER2(_ERDetector):
    """ER-Detector on the encoder's per-layer hidden means concatenated with z."""

    use_hidden = True
