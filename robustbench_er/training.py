"""Training machinery shared by defense plugins: building a plain backbone, clean training, the
adversarial batches of min-max training (PGD, via :mod:`robustbench_er.pgd`) and the TRADES
inner maximisation and loss (Zhang et al., ICML 2019, arXiv:1901.08573).

The epoch loop itself is :func:`robustbench_er.defense.fit`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_er.data import Dataset, DatasetSpec
from robustbench_er.defense import DefendedModel, HParams, fit, make_optimizer
from robustbench_er.models import build_backbone
from robustbench_er.pgd import pgd


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode for the block, then give every module and submodule back the
    train/eval mode it had (also when the block raises)."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


def build_from_backbone(spec: DatasetSpec, hp: HParams) -> nn.Module:
    """The shared backbone named by ``hp.backbone``, sized for ``spec`` (plain classifiers)."""
    return build_backbone(hp.backbone, spec.shape[0], spec.classes, spec.shape[1])


def train_clean(model: DefendedModel, data: Dataset, hp: Any, seed: int, progress: bool, desc: str) -> dict[str, Any]:
    """Cross-entropy training on clean batches (also RSE's training: its noise is in the net)."""
    opt = make_optimizer(model.parameters(), hp)

    def step(x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, float]:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        return {"ce": loss.item()}

    return fit(model, data, hp, seed, progress, step, desc=desc)


def adversarial_batch(model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                      step_size: float) -> torch.Tensor:
    """PGD-Linf examples for training (model in eval mode while attacking, as in the references)."""
    with eval_mode(model):
        return pgd(model, x, y, eps, norm="Linf", steps=steps, rel_stepsize=step_size / max(eps, 1e-12),
                   random_start=True, early_stop=False)


def trades_adversarial(model: nn.Module, x: torch.Tensor, *, eps: float, steps: int,
                       step_size: float) -> torch.Tensor:
    """TRADES inner maximisation: the point of the Linf ball (and [0, 1]) that maximises
    ``KL(softmax f(x) || softmax f(x_adv))``, by ``steps`` sign-gradient ascent steps from
    ``x + 0.001 * N(0, I)``. The model is put in eval mode for the attack and restored after;
    ``model(x)`` must return logits. Returns a detached tensor shaped like ``x``."""
    with eval_mode(model):
        x = x.detach()
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                beta: float) -> torch.Tensor:
    """``CE(logits_clean, y) + beta * KL(softmax clean || softmax adv)`` (KL averaged over the
    batch), the TRADES outer objective."""
    ce = F.cross_entropy(logits_clean, y)
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
    return ce + beta * kl
