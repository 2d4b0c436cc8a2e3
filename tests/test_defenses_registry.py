"""Every registered defense (built-ins through entry points): train a tiny model on digits, save,
reload bit-identically, predict finite logits. Defense-specific properties live in the
test_defenses_* files."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from robustbench_er.engine.trained import get_or_train
from robustbench_er.models.checkpoints import _weights_hash, read_meta
from robustbench_er.plugins import registry

#: one epoch on 128 images; shorter inner loops where a defense has them (a second or two each)
TINY = dict(epochs=1, train_samples=128, warmup_epochs=0, ramp_epochs=0, attack_steps=2,
            gan_iters=30, restarts=1, rec_steps=5)


def _overrides(name: str) -> dict[str, object]:
    fields = {f.name for f in dataclasses.fields(registry.get_defense(name).HParams)}
    return {k: v for k, v in TINY.items() if k in fields}


@pytest.mark.parametrize("name", registry.list_defenses())
def test_train_save_reload_predict(name, digits, tmp_path):
    cls = registry.get_defense(name)
    assert "quick" in cls.presets.get("digits", {}), f"{name} has no digits quick preset"
    torch.manual_seed(0)
    first = get_or_train(name, digits, profile="quick", seed=0, out=tmp_path, overrides=_overrides(name),
                         progress=False)
    second = get_or_train(name, digits, profile="quick", seed=0, out=tmp_path, overrides=_overrides(name),
                          progress=False)
    assert not first.reused and second.reused and second.folder == first.folder
    assert (first.folder / "model.safetensors").is_file()
    s1, s2 = first.model.state_dict(), second.model.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert _weights_hash(s1) == _weights_hash(s2) == read_meta(first.folder)["weights_sha256"]
    x = digits.x_test[:17]
    with torch.no_grad():
        torch.manual_seed(1)
        out1 = first.model.predict(x)
        torch.manual_seed(1)
        out2 = second.model.predict(x)
    assert out1.shape == (17, digits.spec.classes) and torch.isfinite(out1).all()
    assert torch.equal(out1, out2)  # same weights, same random draws: same logits
