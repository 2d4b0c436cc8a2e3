"""Every defense's `paper` preset, on every dataset it has one for, builds the papers' network,
runs one training step and one attack batch at batch size 2 on the CPU.

This is what a GPU user runs first; the test machines have no GPU. Only the schedule is
shrunk (one epoch on two images, a GAN of one iteration, short reconstructions); the
architecture and every other hyper-parameter are the preset's.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_folders import SHRINK

from robustbench_er.data.datasets import SPECS, Dataset
from robustbench_er.plugins.registry import DEFENSES, get_attack, get_defense

CASES = [(d, ds) for d in DEFENSES.names() for ds, per in sorted(get_defense(d).presets.items())
         if "paper" in per and ds in SPECS]



def _tiny(spec) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand((4, *spec.shape), generator=g)
    y = torch.arange(4, dtype=torch.int64) % spec.classes
    return Dataset(spec, x[:2], y[:2], x[2:], y[2:])


@pytest.mark.parametrize("defense, dataset", CASES, ids=[f"{d}-{ds}" for d, ds in CASES])
def test_paper_preset_trains_a_step_and_is_attacked(defense, dataset):
    cls = get_defense(defense)
    fields = {f.name for f in dataclasses.fields(cls.HParams)}
    hp = cls.hparams(dataset, "paper", {k: v for k, v in SHRINK.items() if k in fields})
    preset = cls.presets[dataset]["paper"]
    assert all(getattr(hp, k) == v for k, v in preset.items() if k not in SHRINK)  # the papers' settings
    data = _tiny(SPECS[dataset])
    torch.manual_seed(0)
    d = cls()
    model = d.wrap(d.build(data.spec, hp), data.spec, hp)
    before = [p.detach().clone() for p in model.parameters()]
    if cls.trainable:
        report = d.train(model, data, hp, seed=0, progress=False)
        assert isinstance(report, dict)
        assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # a step was taken
    model.eval()
    logits = model.predict(data.x_test)
    assert logits.shape == (2, data.spec.classes) and torch.isfinite(logits).all()
    attack = get_attack("pgd")("Linf", steps=2)
    attack.check_model(model)
    target = attack.target(model)
    eps = torch.full((2,), float(data.spec.headline.get("Linf", 0.03)))
    x_adv = attack.run(target, data.x_test, data.y_test, eps)
    assert x_adv.shape == data.x_test.shape
    assert ((x_adv - data.x_test).abs().flatten(1).amax(1) <= eps + 1e-6).all()


# ---- forward pass and embedding of every paper network; the Table 15 backbones -------------

def _paper_hparams(cls, dataset):
    fields = {f.name for f in dataclasses.fields(cls.HParams)}
    return cls.hparams(dataset, "paper", {k: v for k, v in SHRINK.items() if k in fields})


@pytest.mark.parametrize("defense, dataset", CASES, ids=[f"{d}-{ds}" for d, ds in CASES])
def test_paper_network_forward_gives_logits_and_features(defense, dataset):
    cls = get_defense(defense)
    spec = SPECS[dataset]
    hp = _paper_hparams(cls, dataset)
    torch.manual_seed(0)
    d = cls()
    model = d.wrap(d.build(spec, hp), spec, hp).eval()
    x = torch.rand((2, *spec.shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.predict(x)
        assert logits.shape == (2, spec.classes) and torch.isfinite(logits).all()
        if model.has_embed:
            e = model.embed(x)
            assert e.dim() == 2 and e.shape[0] == 2 and torch.isfinite(e).all()


#: Li et al. 2021, Table 15: (backbone, input shape, classes) -> (conv, BatchNorm, max-pool,
#: linear) counts
TABLE15 = {
    ("mnist_4c4f", (1, 28, 28), 10): (4, 0, 2, 4),
    ("vgg19_bn", (3, 32, 32), 10): (16, 16, 5, 3),
    ("stl10_6c4f", (3, 96, 96), 10): (6, 6, 5, 4),
    ("tiny_13c4f", (3, 64, 64), 200): (13, 13, 5, 4),
}
#: parameter counts, in millions, the widths documented in robustbench_er/models/paper_nets.py give
PARAMS_M = {"mnist_4c4f": (0.3, 0.4), "vgg19_bn": (20.0, 21.0), "stl10_6c4f": (7.0, 7.8), "tiny_13c4f": (16.0, 16.8)}


@pytest.mark.parametrize("key", list(TABLE15), ids=[k[0] for k in TABLE15])
def test_table15_backbones_have_the_papers_layers(key):
    from torch import nn

    from robustbench_er.models import BACKBONES, build_backbone

    name, shape, classes = key
    assert name in BACKBONES
    net = build_backbone(name, shape[0], classes, shape[1])
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.Linear)
    assert tuple(sum(isinstance(m, k) for m in net.modules()) for k in kinds) == TABLE15[key]
    n = sum(p.numel() for p in net.parameters()) / 1e6
    lo, hi = PARAMS_M[name]
    assert lo <= n <= hi, f"{name}: {n:.2f}M parameters"
    net.train()
    x = torch.rand((2, *shape))
    out = net(x)
    assert out.shape == (2, classes) and torch.isfinite(out).all()
    f = net.features(x)
    assert f.shape == (2, net.fc.in_features)  # features = the input of the last linear layer
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_table15_backbones_refuse_too_small_images_and_adapt_to_larger_ones():
    from robustbench_er.core.errors import UserInputError
    from robustbench_er.models import build_backbone

    for name in ("vgg19_bn", "stl10_6c4f", "tiny_13c4f"):
        with pytest.raises(UserInputError, match="at least 32x32"):
            build_backbone(name, 3, 10, 16)
    assert build_backbone("vgg19_bn", 3, 10, 64).eval()(torch.rand(1, 3, 64, 64)).shape == (1, 10)
    assert build_backbone("mnist_4c4f", 1, 10, 8).eval()(torch.rand(1, 1, 8, 8)).shape == (1, 10)


def test_rse_table15_nets_put_noise_before_every_conv():
    from torch import nn

    from robustbench_er.defenses._rse_nets import Noise, build_rse_net

    net = build_rse_net("rse_stl10_6c4f", 3, 10, 96, init_std=(0.4, 0.4, 0.4), inner_std=0.1).eval()
    mods = list(net.modules())
    convs = [i for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 and all(isinstance(mods[i - 1], Noise) for i in convs)
    assert mods[convs[0] - 1].stds == (0.4, 0.4, 0.4) and mods[convs[1] - 1].stds == (0.1,)
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))  # fresh noise on every pass, in eval mode too


# ---- presets that follow the papers' protocols ----------------------------------------------

@pytest.mark.parametrize("defense", ["madry", "trades", "none", "rse"])
def test_stl10_and_tiny_imagenet_follow_er_protocol(defense):
    cls = get_defense(defense)
    for dataset, net, eps, steps, batch in (("stl10", "stl10_6c4f", 0.03, 20, 64),
                                            ("tiny-imagenet", "tiny_13c4f", 0.01, 10, 100)):
        hp = cls.hparams(dataset, "paper")
        assert hp.backbone.removeprefix("rse_") == net and hp.epochs == 30 and hp.batch_size == batch
        if hasattr(hp, "eps"):  # Li et al. 2021, Table 9
            assert (hp.eps, hp.attack_steps) == (eps, steps)


@pytest.mark.parametrize("defense", ["afd", "madry", "trades", "none"])
def test_cifar100_presets_use_resnet18(defense):
    cls = get_defense(defense)
    paper, quick = cls.hparams("cifar100", "paper"), cls.hparams("cifar100", "quick")
    assert paper.backbone == "resnet18" and quick.backbone == "tiny_cnn"
    # Bashivan et al. 2021 train CIFAR10 and CIFAR100 alike
    assert paper == cls.hparams("cifar10", "paper")
    if hasattr(paper, "eps"):
        assert abs(paper.eps - 8 / 255) < 1e-3
    if defense == "afd":  # Bashivan et al. 2021, Table A2, CIFAR-100 row
        assert (paper.lr_e, paper.lr_da, paper.lr, paper.weight_decay, paper.batch_size, paper.epochs) == (
            0.5, 0.1, 0.1, 1e-4, 64, 850)


def test_er_protocol_variants_of_the_docs_are_valid():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "defenses.md").read_text()
    variants = re.findall(r"`((?:madry|trades|none|rse)\[[^`]+\])`", doc)
    assert len(variants) >= 8
    for v in variants:
        for dataset in ("mnist", "cifar10"):
            hp = get_defense(v).hparams(dataset, "paper")
            if "vgg19_bn" in v:
                assert hp.backbone.removeprefix("rse_") == "vgg19_bn" and hp.epochs == 30
    hp = get_defense("madry[backbone=vgg19_bn,epochs=30,batch_size=100,lr=0.01,eps=0.03,attack_steps=20,"
                     "step_size=0.01]").hparams("cifar10", "paper")
    assert (hp.eps, hp.attack_steps, hp.step_size, hp.backbone, hp.epochs) == (0.03, 20, 0.01, "vgg19_bn", 30)
    assert get_defense("madry").hparams("cifar10", "paper").eps == 8 / 255  # Madry's own protocol stays


def test_docs_table_lists_every_paper_preset():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "defenses.md").read_text()
    section = doc.split("## Paper presets", 1)[1]
    rows: dict[tuple[str, str], list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0].startswith("`") and cells[2].startswith("`"):
            for ds in cells[1].split(", "):
                rows[(cells[0].strip("`"), ds)] = cells
    assert set(rows) == set(CASES)
    for (d, ds), cells in rows.items():
        hp = get_defense(d).hparams(ds, "paper")
        assert cells[2].split("`")[1] == hp.backbone and cells[3] == str(hp.epochs) and cells[4] == str(hp.batch_size)
