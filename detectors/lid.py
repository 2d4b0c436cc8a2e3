"""LID: local intrinsic dimensionality of every hidden layer (Ma et al., "Characterizing
Adversarial Subspaces Using Local Intrinsic Dimensionality", ICLR 2018; reference code
xingjunm/lid_adversarial_subspace_detection).

For an image and each hidden layer, the maximum-likelihood LID estimate from its ``k`` (20)
nearest neighbours among a minibatch of ``batch`` (100) natural points:
``LID = -k / sum_i log(r_i / r_k)``. The features (one per layer) are min-max scaled and a
logistic regression decides. Uses scikit-learn's LogisticRegression and MinMaxScaler; the
distances are torch's ``cdist``.

Deviation: the reference code takes the neighbours within each minibatch of the evaluated
natural points; we take them within one fixed minibatch of ``batch`` natural *training* points
(drawn once, seed 0), so an image's features do not depend on which other images are scored
with it.
"""

from __future__ import annotations

import numpy as np
import torch

from robustbench_er.plugin import DefendedModel, Detector, register_detector


def lid_mle(dist: torch.Tensor, k: int) -> torch.Tensor:
    """LID estimates from each row's distances to the reference points (its k smallest)."""
    r = torch.topk(dist, k, dim=1, largest=False).values.clamp_min(1e-12)
    return -k / torch.log(r / r[:, -1:]).sum(1).clamp_max(-1e-12)


@register_detector("lid")
class LID(Detector):
    """Local intrinsic dimensionality of every hidden layer; logistic regression."""

    scaler = "minmax"

    def fit_reference(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor) -> None:
        n = int(self.params.get("batch", 100))
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
        with torch.no_grad():
            self._ref = [h.cpu() for h in model.hidden(x[idx])]

    def torch_features(self, model: DefendedModel, x: torch.Tensor) -> torch.Tensor:
        """Differentiable as it stands: distances and the k smallest of them are torch operations
        (no BPDA needed)."""
        k = min(int(self.params.get("k", 20)), len(self._ref[0]) - 1)
        return torch.stack([lid_mle(torch.cdist(h, ref), k) for h, ref in zip(model.hidden(x), self._ref)], dim=1)

    def features(self, model: DefendedModel, x: torch.Tensor) -> np.ndarray:
        k = min(int(self.params.get("k", 20)), len(self._ref[0]) - 1)
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 256):
                hs = model.hidden(x[i:i + 256])
                out.append(torch.stack([lid_mle(torch.cdist(h.cpu(), ref), k) for h, ref in zip(hs, self._ref)],
                                       dim=1).numpy())
        return np.concatenate(out)
