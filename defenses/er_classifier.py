"""ER-Classifier and ER-Classifier- (embedding-regularised classifier).

Paper: Li, Min, Lee, Yu, Kruus, Wang, Hsieh, "Towards Robustness of Deep Neural Networks via
Regularization", ICCV 2021 (earlier version: "Defending against adversarial examples by
regularized deep embedding", ICLR 2020 submission). Reference code: liyao880/ER-Classifier.

Threat model: white-box Linf; min-max training with PGD adversarial examples (true labels).

Method (Algorithm 1): an encoder Q maps an image to a low-dimensional code z (k = 4 on MNIST,
16 on CIFAR10 and STL10, 20 on Tiny ImageNet); a classifier C predicts from z; a WGAN critic D
tells codes Q(x) from samples of a prior P_Z (N(0, I); Uniform(-3, 3) and Cauchy(0, 1) are the
alternatives of appendix C.4). Per batch x (the PGD adversarial batch under min-max training):

1. D ascends ``lambda * (mean D(z_prior) - mean D(Q(x)))``, then every D weight is clipped to
   [-0.01, 0.01];
2. Q and C descend ``CE(C(Q(x)), y)``;
3. Q ascends ``lambda1 * mean D(Q(x))`` (one Adam step).

Hyper-parameters (paper / reference values): Adam; encoder lr 1e-4 on MNIST and 5e-5 otherwise,
critic 0.5 x lr and classifier 0.05 x lr (reference-code ratios; the papers give no others);
lambda (``lambda_d``) 1, lambda1 (``lambda_enc``) 0.0005 on MNIST and 0.1 otherwise; batch 100
(64 on STL10); 30 epochs; training PGD (Li et al. 2021, Table 9): MNIST eps 0.3, 40 steps of 0.01;
CIFAR10 0.03, 20 of 0.01; STL10 0.03, 20 of 2/255; Tiny ImageNet 0.01, 10 steps (step size not
given; we use 2.5 * eps / 10). Architectures: see :mod:`defenses._er_nets`.

``er-classifier-`` is the same framework trained on clean batches only (no min-max, so no attack
is ever run in training), the paper's "ER-Classifier-".

Source: ours.

Differences from the reference code, and why (the paper's intent is the default):

* PGD in training attacks the true label (the reference attacks the predicted label);
* gradients are zeroed before each of the three updates (the reference zeroes once per batch, so
  the later updates reuse accumulated gradients);
* no learning-rate schedule (the reference builds a StepLR but never steps it, so the effective
  rate is constant as here);
* step 2 uses the adversarial batch only, as Algorithm 1 (the reference averages clean and
  adversarial cross-entropy and repeats steps 1 and 3 on the adversarial batch);
* the critic step reuses the codes of the forward pass that step 2 back-propagates through (Q has
  not changed between steps 1 and 2, so the numbers are the same; it saves one forward pass).
* ``quick`` presets (CPU): a small conv encoder (``er_small``), narrower classifier and critic,
  lr 2e-3-3e-3 with classifier factor 0.5 (at 0.05 x lr the classifier barely moves in a few
  epochs), 10 PGD steps of 2.5 * eps / 10, one clean warm-up epoch and a linear eps ramp (as
  ``madry``'s quick preset). On mnist5k the quick preset reaches 89% clean accuracy and 69% under
  PGD-40 at eps 0.3 (500 test points) after ~81 s of single-thread CPU training (width 32 instead
  of 16: 92% / 74% but ~3 x the cost). The ``paper`` presets carry the paper's values; ``digits`` (8x8)
  cannot take the four stride-2 convs of the MNIST encoder, so its presets use ``er_small``.
"""

from __future__ import annotations

from dataclasses import dataclass

from robustbench_er.defenses._er_family import ERFamily, ERHParams, er_presets
from robustbench_er.plugin import UserInputError, register_defense


@register_defense("er-classifier")
class ERClassifier(ERFamily):
    """ER-Classifier: encoder, critic on codes, classifier; min-max PGD training."""

    presets = er_presets()


@dataclass
class ERMinusHParams(ERHParams):
    min_max: bool = False

    def validate(self) -> None:
        super().validate()
        if self.min_max:
            raise UserInputError("er-classifier- trains without min-max; use 'er-classifier' for min-max training.")


@register_defense("er-classifier-")
class ERClassifierMinus(ERFamily):
    """ER-Classifier-: the same framework trained on clean batches only (never attacks)."""

    HParams = ERMinusHParams
    presets = er_presets(min_max=False, warmup_epochs=0, ramp_epochs=0)
