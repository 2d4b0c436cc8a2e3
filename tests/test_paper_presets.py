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

from robustbench_er.data import SPECS, Dataset
from robustbench_er.registry import DEFENSES, get_attack, get_defense

CASES = [(d, ds) for d in DEFENSES.names() for ds, per in sorted(get_defense(d).presets.items())
         if "paper" in per and ds in SPECS]

#: hyper-parameters that set the schedule's length (whichever a defense has)
SHRINK = {"epochs": 1, "batch_size": 2, "train_samples": 2, "gan_iters": 1, "gan_batch_size": 2,
          "restarts": 1, "rec_steps": 2, "n_passes": 2, "attack_steps": 1}


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
