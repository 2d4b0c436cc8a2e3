"""Training machinery shared by defense plugins: building a plain backbone, clean training, the
adversarial batches of min-max training (PGD, via :mod:`robustbench_er.models.pgd`) and the TRADES
inner maximisation and loss (Zhang et al., ICML 2019, arXiv:1901.08573).

It also holds the epoch loop every defense trains with (:func:`fit`), the optimizer and batch
helpers it uses, and the clean-accuracy measure (:func:`accuracy`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_er.core.errors import UserInputError
from robustbench_er.data.datasets import Dataset, DatasetSpec
from robustbench_er.models import build_backbone
from robustbench_er.models.defended import DefendedModel, device_of
from robustbench_er.models.hparams import HParams
from robustbench_er.models.pgd import pgd

log = logging.getLogger(__name__)


def make_optimizer(params: Any, hp: HParams, lr: float | None = None) -> torch.optim.Optimizer:
    lr = hp.lr if lr is None else lr
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=hp.weight_decay)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    raise UserInputError(f"Unknown optimizer {hp.optimizer!r}; use 'sgd' or 'adam'.")


def training_batches(data: Dataset, hp: HParams, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    n = len(data.y_train)
    if hp.train_samples and hp.train_samples < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: hp.train_samples]
    else:
        idx = torch.arange(n)
    idx = idx[torch.randperm(len(idx), generator=g)]
    for i in range(0, len(idx), hp.batch_size):
        b = idx[i:i + hp.batch_size]
        yield data.x_train[b], data.y_train[b]



def fit(model: DefendedModel, data: Dataset, hp: HParams, seed: int, progress: bool,
        step: Callable[[torch.Tensor, torch.Tensor, int], dict[str, float]], desc: str = "train") -> dict[str, Any]:
    """The shared epoch loop: shuffling, device transfer, tqdm, loss history, timing.

    ``step(x, y, epoch)`` does one update on a batch and returns scalar losses to log.
    """
    from tqdm.auto import tqdm

    dev = device_of(model)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    n_batches = -(-min(len(data.y_train), hp.train_samples or len(data.y_train)) // hp.batch_size)
    bar = tqdm(total=hp.epochs * n_batches, desc=desc, disable=not progress, leave=False)
    for epoch in range(hp.epochs):
        sums: dict[str, float] = {}
        count = 0
        for xb, yb in training_batches(data, hp, seed, epoch):
            model.train()
            losses = step(xb.to(dev), yb.to(dev), epoch)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            bar.update(1)
            bar.set_postfix({k: f"{v / count:.3f}" for k, v in sums.items()})
        history.append({"epoch": epoch, **{k: v / max(count, 1) for k, v in sums.items()}})
        log.info("%s epoch %d: %s", desc, epoch, history[-1])
    bar.close()
    model.eval()
    return {"history": history, "train_seconds": time.perf_counter() - t0}


@torch.no_grad()
def accuracy(model: DefendedModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    dev = device_of(model)
    pred = model.predict_label(x.to(dev), batch_size=batch_size)
    return float((pred.cpu() == y).float().mean()) if len(y) else float("nan")


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
