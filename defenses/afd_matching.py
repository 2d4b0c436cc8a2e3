"""AFD ablation "embedding matching": cross-entropy + L2 distance of clean and perturbed embeddings.

Paper: Bashivan et al., "Adversarial Feature Desensitization", NeurIPS 2021, arXiv:2006.04621,
section 4 ("Matching vs. Indiscrimination", Figure A5). Reference code: BashivanLab/afd.

Threat model: white-box Linf (PGD in training, as ``afd``).

Per batch: x' = PGD(x) on E+Dc (eval mode, true labels); one step of E and Dc on
``CE(Dc(E(x)), y) + match_weight * mean_i ||E(x_i) - E(x'_i)||_2``. No adversarial decoder.
Network, optimiser (paper: SGD momentum 0.9, weight decay 1e-4, lr = AFD's lr_EDc), training
attack and presets are AFD's (:mod:`defenses.afd`). ``match_weight``: the paper gives no value; we use 0.1 (on digits, quick preset, weight 1.0
collapses the embedding to a constant: distance 0, 10% accuracy; 0.1 gives 93%).

Source: ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from robustbench_er.defenses._afd_family import (
    AFDBase,
    AFDHParams,
    afd_presets,
    lr_scale,
    make_opt,
    set_lrs,
)
from robustbench_er.defenses._afd_nets import AFDNet
from robustbench_er.plugin import Dataset, DefendedModel, UserInputError, fit, register_defense


@dataclass
class AFDMatchingHParams(AFDHParams):
    #: weight of the L2 distance between clean and perturbed embeddings
    match_weight: float = 0.1

    def validate(self) -> None:
        super().validate()
        if self.match_weight < 0:
            raise UserInputError(f"match_weight must be non-negative; got {self.match_weight}.")


@register_defense("afd-matching")
class AFDMatching(AFDBase):
    """Embedding matching: CE on clean images + L2 distance of clean and perturbed embeddings."""

    HParams = AFDMatchingHParams
    with_da = False
    presets = afd_presets()

    def train(self, model: DefendedModel, data: Dataset, hp: Any, seed: int, progress: bool = True) -> dict[str, Any]:
        net: AFDNet = model.net  # type: ignore[assignment]
        opt = make_opt(net.parameters(), hp, hp.lr, hp.weight_decay)

        def step(x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, float]:
            set_lrs([(opt, hp.lr)], lr_scale(hp, epoch))
            frac = hp.eps_fraction(epoch)
            x_adv = self.adversarial(model, x, y, hp, frac) if frac > 0 else None
            e_clean = net.embed(model.normalize(x))
            ce = F.cross_entropy(net.backbone.fc(e_clean), y)
            out = {"ce": ce.item()}
            loss = ce
            if x_adv is not None:
                dist = (e_clean - net.embed(model.normalize(x_adv))).norm(dim=1).mean()
                loss = ce + hp.match_weight * dist
                out["l2"] = dist.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return out

        return fit(model, data, hp, seed, progress, step, desc="train afd-matching")
