"""VAE-CLA: a variational encoder regularised by KL to N(0, I) instead of a critic (an ablation).

Paper: Li et al., "Towards Robustness of Deep Neural Networks via Regularization", ICCV 2021,
section 4.3 (Figure 4); reference code liyao880/ER-Classifier (no VAE-CLA code is published).

Threat model: white-box Linf; trained on clean batches (no min-max) by default, as
``er-classifier-`` and ``e-cla``: Figure 4 of Li et al. 2021 compares E-CLA, VAE-CLA and
ER-Classifier without min-max (the paper's text on the ablation). ``min_max=True`` trains on PGD batches like
``er-classifier``; the paper does not report that setting, and the reference code
(liyao880/ER-Classifier) publishes no VAE-CLA.

The encoder outputs a mean mu and log-variance of q(z|x) (dimension k each); training samples
z = mu + sigma * N(0, I) (reparameterisation) and descends
``CE(C(z), y) + kl_weight * KL(q(z|x) || N(0, I))`` (KL summed over code dimensions, averaged over
the batch). Evaluation and ``embed`` use mu, so the defense is deterministic. Other
hyper-parameters and presets are ER-Classifier's (:mod:`defenses.er_classifier`).

``kl_weight``: the paper gives no value (it reports that the KL and classification losses are
hard to balance). We use 0.01: on digits (quick preset) weight 1.0, the evidence lower bound's,
collapses the posterior (KL -> 0, 10% accuracy), 0.1 reaches 49% and 0.01 62% clean accuracy.

Source: ours (shares :class:`defenses._er_family.ERFamily`).
"""

from __future__ import annotations

from dataclasses import dataclass

from robustbench_er.defenses._er_family import ERFamily, ERHParams, er_presets
from robustbench_er.plugin import UserInputError, register_defense


@dataclass
class VAEClaHParams(ERHParams):
    #: weight of KL(q(z|x) || N(0, I)) against the cross-entropy
    kl_weight: float = 0.01
    #: min-max training on PGD batches (False: the paper's Figure 4 ablation)
    min_max: bool = False

    def validate(self) -> None:
        super().validate()
        if self.kl_weight < 0:
            raise UserInputError(f"kl_weight must be non-negative; got {self.kl_weight}.")


@register_defense("vae-cla")
class VAECla(ERFamily):
    """Variational encoder + classifier; KL regulariser to N(0, I); clean training by default."""

    HParams = VAEClaHParams
    use_discriminator = False
    variational = True
    presets = er_presets(min_max=False)
