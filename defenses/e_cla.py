"""E-CLA: the ER-Classifier's encoder and classifier without the critic (an ablation).

Paper: Li et al., "Towards Robustness of Deep Neural Networks via Regularization", ICCV 2021,
section 4.3 (Figure 4); reference code liyao880/ER-Classifier.

Threat model: white-box Linf; trained on clean batches (no min-max), as ``er-classifier-``.

The same encoder Q and classifier C as ER-Classifier (same presets, same Adam learning rates:
encoder lr, classifier 0.05 x lr; ``quick`` presets as documented in
:mod:`defenses.er_classifier`), trained on ``CE(C(Q(x)), y)`` alone: no critic, no prior, so
steps 1 and 3 of Algorithm 1 are dropped. It isolates what the embedding regularisation adds.

``min_max`` (default False, the paper's Figure 4 setting, where all compared structures are
trained without min-max robust optimisation for fairness): compare with ``er-classifier-``,
as the paper does. ``min_max=True`` trains on PGD batches like ``er-classifier`` (with the
quick presets' clean warm-up and eps ramp), a comparison the paper does not make. The reference
code (liyao880/ER-Classifier) publishes no E-CLA.

Source: ours (shares :class:`defenses._er_family.ERFamily`).
"""

from __future__ import annotations

from dataclasses import dataclass

from robustbench_er.defenses._er_family import ERFamily, ERHParams, er_presets
from robustbench_er.plugin import register_defense


@dataclass
class EClaHParams(ERHParams):
    #: min-max training on PGD batches (False: the paper's Figure 4 ablation)
    min_max: bool = False


@register_defense("e-cla")
class ECla(ERFamily):
    """Encoder + classifier with a low-dimensional code, no regulariser; clean training by default."""

    HParams = EClaHParams
    use_discriminator = False
    presets = er_presets(min_max=False)
