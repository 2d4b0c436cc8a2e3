"""Defense-GAN: "Defense-GAN: Protecting Classifiers Against Adversarial Attacks Using
Generative Models" (Samangouei, Kabkab, Chellappa; ICLR 2018; arXiv:1805.06605).

Threat model: any norm; the defense is input purification. A GAN is trained on clean training
images; at inference an input ``x`` is projected onto the generator's range,
``z* = argmin_z ||G(z) - x||^2`` by ``L`` gradient-descent steps from each of ``R`` random starts,
and the classifier labels the best reconstruction ``G(z*)``. The classifier is trained with
standard cross-entropy on clean images (the paper's setting; Defense-GAN needs no adversarial
training).

Evaluation: the projection is an inner optimisation with random restarts, so the defense is
declared ``randomized = True`` and ``differentiable = False`` (gradients through an unrolled,
randomly started optimisation would be meaningless or obfuscated). It declares ``bpda = True``:
gradient attacks run through :meth:`DefenseGANNet.forward_bpda`, which outputs exactly what the
defense outputs but treats the projection as the identity in the backward pass (BPDA with the
straight-through approximation, as Athalye, Carlini and Wagner, "Obfuscated Gradients Give a
False Sense of Security", ICML 2018, arXiv:1802.00420, broke Defense-GAN). Every example is
verified on the real defense. Score- and decision-based attacks (Square, RayS) see the real
defense too.

Hyper-parameters and paper / reference values (kabkabm/defensegan, ``experiments/cfgs/gans/
mnist.yml`` and ``models/gan.py``):

* GAN: WGAN-GP, 5 critic iterations per generator iteration, gradient-penalty weight 10, Adam
  lr 1e-4 with betas (0.5, 0.9), latent dimension 128, width 64, batch 50, 200,000 generator
  iterations (``default.yml``);
* reconstruction: ``R = 10`` restarts, ``L = 200`` steps (the paper's MNIST setting), SGD with
  momentum 0.7 and learning rate 10.0 on the per-image mean squared error, decayed by 10x after
  80% of the steps; ``z`` initialised from N(0, 1/latent_dim);
* classifier: standard training on clean images (the paper's model A etc.; here the harness's
  backbones).

Source: ours (generator/critic in :mod:`defenses._gan_nets`).

Differences from the reference code and why:

* The generator and critic are sized for any side (8x8 digits, 28x28 MNIST, 32x32 CIFAR10) and
  kept small; our generator uses batch norm (the reference's ``USE_BN: False``), which made the
  short CPU runs converge; the critic is not part of the saved model (inference needs only G and the
  classifier, which live in one module and one safetensors checkpoint).
* ``gan_loss`` selects WGAN-GP (the reference; all presets) or the non-saturating DCGAN loss
  (an option only: with our small nets and a few hundred CPU iterations it collapsed, while
  WGAN-GP already reconstructed digits test images better than their nearest training image).
  The ``quick`` presets train a narrower GAN (width 32, latent 32) for a few hundred generator
  iterations at lr 5e-4 instead of 1e-4, and project with R = 2, L = 30 so that evaluation
  stays CPU-sized; reconstructions are coarser and clean accuracy lower than the paper's.
* CIFAR10 was not evaluated with Defense-GAN in the paper (MNIST, Fashion-MNIST, CelebA); the
  cifar10 presets are ours.
* ``n_passes`` (majority votes of the harness) defaults to 1: one prediction already takes the best
  of ``R`` restarts, as in the paper.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_er.defenses._gan_nets import Critic, Generator, gan_step_losses, gradient_penalty
from robustbench_er.plugin import (
    Dataset,
    DatasetSpec,
    DefendedModel,
    Defense,
    HParams,
    UserInputError,
    build_from_backbone,
    device_of,
    fit,
    make_optimizer,
    register_defense,
    training_batches,
)

GAN_LOSSES = ("wgan-gp", "dcgan")


@dataclass
class DefenseGANHParams(HParams):
    #: "wgan-gp" (the reference) or "dcgan" (non-saturating; converges faster on a CPU)
    gan_loss: str = "wgan-gp"
    #: generator updates
    gan_iters: int = 20000
    gan_batch_size: int = 64
    gan_lr: float = 1e-4
    #: critic updates per generator update (5 for WGAN-GP in the reference)
    critic_iters: int = 5
    gp_weight: float = 10.0
    latent_dim: int = 128
    gan_width: int = 64
    #: random restarts R and gradient steps L of the projection
    restarts: int = 10
    rec_steps: int = 200
    rec_lr: float = 10.0
    rec_momentum: float = 0.7
    #: forward passes per prediction in the harness's majority vote (one pass = best of R)
    n_passes: int = 1

    def validate(self) -> None:
        if self.gan_loss not in GAN_LOSSES:
            raise UserInputError(f"Defense-GAN gan_loss must be one of {', '.join(GAN_LOSSES)}; got {self.gan_loss!r}.")
        if self.restarts < 1:
            raise UserInputError(f"Defense-GAN needs at least one random restart; got restarts={self.restarts}.")
        if self.rec_steps < 1:
            raise UserInputError(f"Defense-GAN needs at least one projection step; got rec_steps={self.rec_steps}.")
        if self.rec_lr <= 0:
            raise UserInputError(f"Defense-GAN rec_lr must be positive; got {self.rec_lr}.")
        if not 0 <= self.rec_momentum < 1:
            raise UserInputError(f"Defense-GAN rec_momentum must be in [0, 1); got {self.rec_momentum}.")
        if self.gan_iters < 0 or self.critic_iters < 1 or self.gan_batch_size < 1:
            raise UserInputError("Defense-GAN needs gan_iters >= 0, critic_iters >= 1 and gan_batch_size >= 1.")
        if self.latent_dim < 1 or self.gan_width < 1:
            raise UserInputError("Defense-GAN latent_dim and gan_width must be at least 1.")
        if self.n_passes < 1:
            raise UserInputError(f"Defense-GAN n_passes must be at least 1; got {self.n_passes}.")


class DefenseGANNet(nn.Module):
    """Generator + classifier. ``forward`` takes normalised images, projects them (in [0, 1]
    pixel space) onto the generator's range and classifies the best reconstruction."""

    def __init__(self, generator: Generator, classifier: nn.Module, *, mean: tuple[float, ...],
                 std: tuple[float, ...], restarts: int, rec_steps: int, rec_lr: float,
                 rec_momentum: float) -> None:
        super().__init__()
        self.generator = generator
        self.classifier = classifier
        channels = len(mean) or 1
        self.register_buffer("mean", torch.tensor(mean or (0.0,) * channels).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or (1.0,) * channels).view(1, -1, 1, 1), persistent=False)
        self.restarts = restarts
        self.rec_steps = rec_steps
        self.rec_lr = rec_lr
        self.rec_momentum = rec_momentum

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def to_normalised(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def project(self, x01: torch.Tensor, restarts: int | None = None, steps: int | None = None) -> torch.Tensor:
        """Best reconstruction ``G(z*)`` of images in [0, 1] over ``restarts`` random starts of
        ``steps`` momentum-SGD steps on the per-image mean squared error. Works under
        ``torch.no_grad``; the result is detached."""
        r = self.restarts if restarts is None else restarts
        steps = self.rec_steps if steps is None else steps
        n = len(x01)
        g = self.generator
        was_training = g.training
        g.eval()
        target = x01.detach().repeat_interleave(r, dim=0)
        z = torch.randn(n * r, g.latent_dim, device=x01.device) * (1.0 / g.latent_dim) ** 0.5
        velocity = torch.zeros_like(z)
        decay_at = int(-(-steps * 0.8 // 1))
        try:
            with torch.enable_grad():
                for i in range(steps):
                    lr = self.rec_lr * (0.1 if i >= decay_at else 1.0)
                    z.requires_grad_(True)
                    per_image = ((g(z) - target) ** 2).flatten(1).mean(1)
                    (grad,) = torch.autograd.grad(per_image.sum(), z)
                    velocity = self.rec_momentum * velocity + grad
                    z = (z - lr * velocity).detach()
            with torch.no_grad():
                recs = g(z)
                err = ((recs - target) ** 2).flatten(1).mean(1).view(n, r)
                best = err.argmin(1) + torch.arange(n, device=x01.device) * r
                out = recs[best]
        finally:
            g.train(was_training)
        return out.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rec = self.project(self.to_pixels(x))
        return self.classifier(self.to_normalised(rec))

    def forward_bpda(self, x: torch.Tensor) -> torch.Tensor:
        """``forward``'s outputs with the projection treated as the identity when differentiating
        (straight-through BPDA): the classifier sees ``x + (G(z*) - x)`` with the bracket detached."""
        x01 = self.to_pixels(x)
        rec = self.project(x01)
        return self.classifier(self.to_normalised(x01 + (rec - x01).detach()))


def _train_gan(net: DefenseGANNet, data: Dataset, hp: Any, seed: int, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    dev = device_of(net)
    spec = data.spec
    critic = Critic(spec.shape[0], spec.shape[1], width=hp.gan_width).to(dev)
    gen = net.generator
    betas = (0.5, 0.9) if hp.gan_loss == "wgan-gp" else (0.5, 0.999)
    opt_g = torch.optim.Adam(gen.parameters(), lr=hp.gan_lr, betas=betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=hp.gan_lr, betas=betas)
    gan_hp = HParams(batch_size=hp.gan_batch_size, train_samples=hp.train_samples)

    def batches() -> Any:
        for epoch in itertools.count():
            for xb, _ in training_batches(data, gan_hp, seed + 7, epoch):
                if len(xb) == hp.gan_batch_size:
                    yield xb.to(dev)

    stream = batches()
    n_critic = hp.critic_iters if hp.gan_loss == "wgan-gp" else 1
    history: list[dict[str, float]] = []
    gen.train()
    d_sum = g_sum = 0.0
    for it in tqdm(range(hp.gan_iters), desc="train defense-gan GAN", disable=not progress, leave=False):
        for _ in range(n_critic):
            real = next(stream)
            with torch.no_grad():
                fake = gen(torch.randn(len(real), hp.latent_dim, device=dev))
            d_loss, _ = gan_step_losses(hp.gan_loss, critic, real, fake)
            if hp.gan_loss == "wgan-gp":
                d_loss = d_loss + hp.gp_weight * gradient_penalty(critic, real, fake)
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
        fake = gen(torch.randn(hp.gan_batch_size, hp.latent_dim, device=dev))
        _, g_loss = gan_step_losses(hp.gan_loss, critic, real, fake)
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        d_sum += d_loss.item()
        g_sum += g_loss.item()
        if (it + 1) % 200 == 0 or it + 1 == hp.gan_iters:
            k = (it % 200) + 1
            history.append({"gan_iter": it + 1, "d_loss": d_sum / k, "g_loss": g_sum / k})
            d_sum = g_sum = 0.0
    gen.eval()
    return {"history": history}


@register_defense("defense-gan")
class DefenseGAN(Defense):
    """Project inputs onto a GAN's range, then classify the reconstruction."""

    HParams = DefenseGANHParams
    randomized = True
    differentiable = False
    bpda = True
    presets = {
        "digits": {"quick": dict(backbone="tiny_cnn", epochs=8, batch_size=64, optimizer="adam", lr=3e-3,
                                 gan_loss="wgan-gp", gan_iters=300, gan_lr=5e-4, gan_width=32, latent_dim=32,
                                 restarts=2, rec_steps=30, rec_lr=10.0),
                   "paper": dict(backbone="small_cnn", epochs=50, batch_size=64, lr=0.01, gan_loss="wgan-gp",
                                 gan_iters=200000, gan_batch_size=50, latent_dim=128, restarts=10, rec_steps=200, rec_lr=10.0)},
        "mnist5k": {"quick": dict(backbone="tiny_cnn", epochs=6, batch_size=64, optimizer="adam", lr=2e-3,
                                  gan_loss="wgan-gp", gan_iters=400, gan_lr=5e-4, gan_width=32, latent_dim=32,
                                  restarts=2, rec_steps=30, rec_lr=10.0),
                    "paper": dict(backbone="small_cnn", epochs=100, batch_size=128, lr=0.01, gan_loss="wgan-gp",
                                  gan_iters=200000, gan_batch_size=50, latent_dim=128, restarts=10, rec_steps=200, rec_lr=10.0)},
        "mnist": {"quick": dict(backbone="tiny_cnn", epochs=1, batch_size=128, optimizer="adam", lr=2e-3,
                                train_samples=10000, gan_loss="wgan-gp", gan_iters=400, gan_lr=5e-4, gan_width=32,
                                latent_dim=32, restarts=2, rec_steps=30, rec_lr=10.0),
                  "paper": dict(backbone="small_cnn", epochs=100, batch_size=128, lr=0.01, gan_loss="wgan-gp",
                                gan_iters=200000, gan_batch_size=50, latent_dim=128, restarts=10, rec_steps=200, rec_lr=10.0)},
        "cifar10": {"quick": dict(backbone="tiny_cnn", epochs=2, batch_size=128, optimizer="adam", lr=2e-3,
                                  train_samples=10000, gan_loss="wgan-gp", gan_iters=400, gan_lr=5e-4,
                                  gan_width=32, latent_dim=64, restarts=2, rec_steps=30, rec_lr=10.0),
                    "paper": dict(backbone="resnet18", epochs=100, batch_size=128, lr=0.1, weight_decay=5e-4,
                                  gan_loss="wgan-gp", gan_iters=200000, gan_batch_size=50, latent_dim=128, restarts=10,
                                  rec_steps=200, rec_lr=10.0)},
    }

    def build(self, spec: DatasetSpec, hp: Any) -> nn.Module:
        gen = Generator(spec.shape[0], spec.shape[1], latent_dim=hp.latent_dim, width=hp.gan_width)
        return DefenseGANNet(gen, build_from_backbone(spec, hp), mean=spec.mean, std=spec.std,
                             restarts=hp.restarts, rec_steps=hp.rec_steps, rec_lr=hp.rec_lr,
                             rec_momentum=hp.rec_momentum)

    def train(self, model: DefendedModel, data: Dataset, hp: Any, seed: int, progress: bool = True) -> dict[str, Any]:
        t0 = time.perf_counter()
        net: DefenseGANNet = model.net  # type: ignore[assignment]
        gan_report = _train_gan(net, data, hp, seed, progress)
        clf = net.classifier
        opt = make_optimizer(clf.parameters(), hp)

        def step(x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, float]:
            # the classifier learns on clean images (normalised as the wrapper would)
            loss = F.cross_entropy(clf(model.normalize(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return {"ce": loss.item()}

        report = fit(model, data, hp, seed, progress, step, desc="train defense-gan classifier")
        report["history"] = gan_report["history"] + report["history"]
        report["train_seconds"] = time.perf_counter() - t0
        return report
