"""ER-Trades: ER-Classifier trained with the TRADES loss.

Paper: Li et al., "Towards Robustness of Deep Neural Networks via Regularization", ICCV 2021
(section 4, "ER-Trades ... combines the proposed framework with the loss function of Trades");
TRADES: Zhang et al., ICML 2019, arXiv:1901.08573. Reference code: liyao880/ER-Classifier.

Threat model: white-box Linf.

Per batch: x' = TRADES inner maximisation of KL(f(x) || f(x')) in the eps-ball
(:func:`robustbench_er.models.training.trades_adversarial`); (1) critic step on the codes Q(x');
(2) Q and C descend ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` (:func:`robustbench_er.models.training.trades_loss`);
(3) Q ascends ``lambda1 * mean D(Q(x'))``. Everything else (architectures, priors, Adam rates,
lambda, lambda1, clipping, eps and steps per dataset, ``quick`` presets) is ER-Classifier's
(:mod:`defenses.er_classifier`). ``beta``: the papers give no value for ER-Trades; we use the
TRADES reference default 1.0 on MNIST-like data and 6.0 (the published CIFAR10 TRADES model)
on the colour datasets.

Source: ours (shares :class:`defenses._er_family.ERFamily` and the TRADES helpers).

Difference from the paper: the regularisers (steps 1 and 3) see the TRADES adversarial batch;
the paper does not say which batch they see (ER-Classifier's steps use the adversarial one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robustbench_er.defenses._er_family import ERFamily, ERHParams, er_presets
from robustbench_er.defenses._er_nets import ERNet
from robustbench_er.plugin import (
    DefendedModel,
    UserInputError,
    register_defense,
    trades_adversarial,
    trades_loss,
)


@dataclass
class ERTradesHParams(ERHParams):
    #: weight of the TRADES KL term (1 / lambda of the TRADES paper)
    beta: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.beta < 0:
            raise UserInputError(f"TRADES beta must be non-negative; got {self.beta}.")


def _presets() -> dict[str, dict[str, dict[str, Any]]]:
    p = er_presets()
    for ds in ("cifar10", "stl10", "tiny-imagenet"):
        for values in p[ds].values():
            values["beta"] = 6.0
    return p


@register_defense("er-trades")
class ERTrades(ERFamily):
    """ER-Classifier with the TRADES objective in step 2."""

    HParams = ERTradesHParams
    presets = _presets()

    def adversarial(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, hp: Any, frac: float) -> torch.Tensor:
        return trades_adversarial(model, x, eps=hp.eps * frac, steps=hp.attack_steps, step_size=hp.step_size * frac)

    def classification_loss(self, model: DefendedModel, x: torch.Tensor, x_adv: torch.Tensor | None,
                            y: torch.Tensor, hp: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if x_adv is None:
            return super().classification_loss(model, x, None, y, hp)
        net: ERNet = model.net  # type: ignore[assignment]
        z_clean = net.code(model.normalize(x))[0]
        z_adv = net.code(model.normalize(x_adv))[0]
        loss = trades_loss(net.classifier(z_clean), net.classifier(z_adv), y, hp.beta)
        return loss, {"z": z_adv, "mu": z_adv, "x": x_adv}
