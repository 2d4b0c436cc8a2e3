"""E-CLA: the ER-Classifier's encoder and classifier without the critic (an ablation).

Paper: Li et al., "Towards Robustness of Deep Neural Networks via Regularization", ICCV 2021,
section 4.3 (Figure 4); reference code liyao880/ER-Classifier.

Threat model: white-box Linf; min-max PGD training (true labels), as ``er-classifier``.

The same encoder Q and classifier C as ER-Classifier (same presets, same Adam learning rates:
encoder lr, classifier 0.05 x lr; ``quick`` presets as documented in
:mod:`defenses.er_classifier`), trained on ``CE(C(Q(x)), y)`` alone: no critic, no prior, so
steps 1 and 3 of Algorithm 1 are dropped. It isolates what the embedding regularisation adds.

Source: ours (shares :class:`defenses._er_family.ERFamily`).

Difference from the paper: the paper's Figure 4 compares E-CLA and ER-Classifier both trained
without min-max; here E-CLA trains with min-max by default, to compare with ``er-classifier``.
Set ``min_max=False`` (and compare with ``er-classifier-``) for the paper's comparison.
"""

from __future__ import annotations

from defenses._er_family import ERFamily, er_presets
from robustbench_er.registry import register_defense


@register_defense("e-cla")
class ECla(ERFamily):
    """Encoder + classifier with a low-dimensional code, no regulariser; min-max training."""

    use_discriminator = False
    presets = er_presets()
