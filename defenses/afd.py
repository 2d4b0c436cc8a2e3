"""AFD: Adversarial Feature Desensitization.

Paper: Bashivan, Bayat, Ibrahim, Ahuja, Faramarzi, Laleh, Richards, Rish, "Adversarial Feature
Desensitization", NeurIPS 2021, arXiv:2006.04621. Reference code: BashivanLab/afd.

Threat model: white-box Linf (PGD in training); evaluated over epsilon grids (Table A3).

Method (Algorithm 1): an embedding network E (activations before the last linear layer), a
linear category decoder Dc and an adversarial decoder Da, a class-conditional projection
discriminator with spectral norm on every layer (:mod:`defenses._afd_nets`). Per batch:
x' = PGD(x) on E+Dc (eval mode, true labels), then, all losses taken at the current weights,

* L_EDc = CE(Dc(E(x)), y), a step of E and Dc;
* L_Da = mean softplus(-Da(E(x), y)) + mean softplus(Da(E(x'), y)) (clean = real, perturbed =
  fake), a step of Da;
* L_E = mean softplus(-Da(E(x'), y)) (perturbed embeddings made to look clean), a step of E.

Hyper-parameters (paper Table A2; appendix 8.1): SGD momentum 0.9 (0.8 for CIFAR in the text),
weight decay 1e-4 on the E and Dc updates, lr_EDc 0.1 (``lr``), lr_Da 0.1 (``lr_da``), lr_E 0.5
(``lr_e``); MNIST: ResNet5 (embedding 200), Da width 200, batch 50, 300 epochs, PGD eps 0.3,
40 steps of 0.01; CIFAR10 and CIFAR100 (Table A2 gives both the same values): ResNet18 (embedding 512),
Da width 512, batch 64, 850 epochs with all lrs / 10 after epochs 350 and 700, PGD eps 8/255
(0.031 in the text), 20 steps of 2/255 (the PGD-Linf setting of Table A3 and of the reference code).
Presets: ``paper`` for mnist (mnist5k, digits), cifar10 and cifar100 with those values; ``quick``
for each (CPU, below).

Source: ours.

Differences from the reference code and from the paper, and why:

* Da's loss is the paper's softplus (cross-entropy) form; the reference's default is the WGAN
  form (``L_Da = mean Da(E(x')) - mean Da(E(x))``, ``L_E = -mean Da(E(x'))``), selectable with
  ``da_loss="wgan"``;
* the embedding is not L2-normalised (the reference normalises it; the paper does not say so);
* Da is two hidden SN-Linear layers + the projection output, the reference's layout (the paper's
  text counts "three fully connected layers");
* ``quick`` presets (CPU): TinyCNN (embedding 64), Da width 64, Adam (weight decay 1e-4) with
  lr_EDc = lr_E = lr_Da = 2e-3 instead of SGD at Table A2's rates, 8 epochs, 10 PGD
  steps of 2.5 * eps / 10, one clean warm-up epoch and an eps ramp over three epochs (as
  ``madry``'s quick preset). Measured on mnist5k (8 epochs, PGD-40 at 0.3 on 500 test points):
  SGD at Table A2's rates diverges (10% accuracy); SGD at 1/10 of them gives 71% clean / 9% PGD;
  at 1/2 of them 80% / 18%; Adam 2e-3 87% / 31% (with lr_E 5e-3: 63% / 23%). The ``digits``
  paper preset uses ResNet5 on 8x8 inputs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from robustbench_er.defenses._afd_family import AFDBase, afd_presets, lr_scale, make_opt, set_lrs
from robustbench_er.defenses._afd_nets import AFDNet
from robustbench_er.plugin import Dataset, DefendedModel, UserInputError, fit, register_defense


@register_defense("afd")
class AFD(AFDBase):
    """Adversarial feature desensitization: CE on clean data + a class-conditional adversarial game
    making perturbed embeddings indistinguishable from clean ones."""

    presets = afd_presets()

    def train(self, model: DefendedModel, data: Dataset, hp: Any, seed: int, progress: bool = True) -> dict[str, Any]:
        net: AFDNet = model.net  # type: ignore[assignment]
        da = net.da
        if da is None:
            raise UserInputError("AFD needs its adversarial decoder.")
        enc = net.encoder_parameters()
        edc = list(net.backbone.parameters())
        da_params = list(da.parameters())
        opt_edc = make_opt(edc, hp, hp.lr, hp.weight_decay)
        opt_e = make_opt(enc, hp, hp.lr_e, hp.weight_decay)
        opt_da = make_opt(da_params, hp, hp.lr_da, 0.0)
        schedule = [(opt_edc, hp.lr), (opt_e, hp.lr_e), (opt_da, hp.lr_da)]

        def step(x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, float]:
            set_lrs(schedule, lr_scale(hp, epoch))
            frac = hp.eps_fraction(epoch)
            x_adv = self.adversarial(model, x, y, hp, frac) if frac > 0 else None
            e_clean = net.embed(model.normalize(x))
            ce = F.cross_entropy(net.backbone.fc(e_clean), y)
            if x_adv is None:
                opt_edc.zero_grad()
                ce.backward()
                opt_edc.step()
                return {"ce": ce.item()}
            e_adv = net.embed(model.normalize(x_adv))
            scores = da(torch.cat([e_clean, e_adv]), torch.cat([y, y]))
            s_clean, s_adv = scores[: len(y)], scores[len(y):]
            if hp.da_loss == "softplus":
                loss_da = F.softplus(-s_clean).mean() + F.softplus(s_adv).mean()
                loss_e = F.softplus(-s_adv).mean()
            else:
                loss_da = s_adv.mean() - s_clean.mean()
                loss_e = -s_adv.mean()
            # all three gradients at the current weights (Algorithm 1), then the three updates
            g_edc = torch.autograd.grad(ce, edc, retain_graph=True, allow_unused=True)
            g_e = torch.autograd.grad(loss_e, enc, retain_graph=True, allow_unused=True)
            g_da = torch.autograd.grad(loss_da, da_params, allow_unused=True)
            for opt, params, grads in ((opt_edc, edc, g_edc), (opt_da, da_params, g_da), (opt_e, enc, g_e)):
                for p, g in zip(params, grads):
                    p.grad = None if g is None else g.detach()
                opt.step()
            return {"ce": ce.item(), "loss_da": loss_da.item(), "loss_e": loss_e.item()}

        return fit(model, data, hp, seed, progress, step, desc="train afd")
