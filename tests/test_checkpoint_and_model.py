"""Checkpoints (safetensors + JSON, hash identity) and the defended-model contract."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from robustbench_er.core.errors import UserInputError
from robustbench_er.engine.spec import AttackConfig, SweepConfig
from robustbench_er.engine.trained import build_model, get_or_train
from robustbench_er.jobs.sweep import run_sweep
from robustbench_er.models.checkpoints import load_checkpoint, load_weights
from robustbench_er.plugins import registry
from robustbench_er.plugins.defense import DefendedModel, Defense, HParams, check_model_output


def test_reload_is_bit_identical(none_digits, digits):
    hp = registry.get_defense("none").hparams("digits", "quick")
    fresh = build_model("none", digits.spec, hp)
    meta = load_checkpoint(none_digits.folder, fresh)
    assert meta["defense"] == "none" and meta["dataset"] == "digits"
    for (k, a), (_, b) in zip(none_digits.model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    x = digits.x_test[:50]
    assert torch.equal(none_digits.model.predict(x), fresh.predict(x))
    assert set(meta) >= {"hparams", "seed", "clean_acc", "versions", "train_seconds", "weights_sha256"}


def test_tampered_weights_are_refused(none_digits, digits, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    shutil.copytree(none_digits.folder, folder)
    state = load_file(str(folder / "model.safetensors"))
    k = next(iter(state))
    state[k] = state[k] + 1.0
    save_file(state, str(folder / "model.safetensors"))
    hp = registry.get_defense("none").hparams("digits", "quick")
    with pytest.raises(UserInputError, match="do not match the hash"):
        load_checkpoint(folder, build_model("none", digits.spec, hp))


def test_pickle_is_never_read(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(UserInputError, match="never unpickled"):
        load_weights(bad)
    torch.save({"w": torch.zeros(2)}, tmp_path / "t.pt")
    with pytest.raises(UserInputError, match="never unpickled"):
        load_weights(tmp_path / "t.pt")


def test_checkpoint_for_another_dataset_is_refused(none_digits, tmp_path):
    from robustbench_er.data.datasets import load_dataset

    with pytest.raises(UserInputError):
        get_or_train("none", load_dataset("mnist5k"), out=tmp_path, checkpoint_dir=none_digits.folder, progress=False)


def test_missing_preset_lists_existing():
    with pytest.raises(UserInputError, match="presets exist for .*digits"):
        registry.get_defense("none").hparams("no-such-dataset", "quick")
    with pytest.raises(UserInputError, match="Unknown profile"):
        registry.get_defense("none").hparams("digits", "fast")
    with pytest.raises(UserInputError, match="no hyper-parameter 'epochz'"):
        registry.get_defense("none").hparams("digits", "quick", {"epochz": 3})


class _Wrong(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)
        self.mode = mode

    def forward(self, x):
        out = self.lin(x.flatten(1))
        if self.mode == "shape":
            return out[:, :7]
        if self.mode == "nan":
            return out * float("nan")
        if self.mode == "tuple":
            return out, x
        if self.mode == "dict":
            return {"logits": out}
        return out.softmax(1)


def test_model_output_checks(digits):
    x = digits.x_test[:8]
    with pytest.raises(UserInputError, match="expected N x 10"):
        check_model_output(DefendedModel(_Wrong("shape"), 10), x)
    with pytest.raises(UserInputError, match="NaN"):
        check_model_output(DefendedModel(_Wrong("nan"), 10), x)
    a = DefendedModel(_Wrong("tuple"), 10).predict(x)
    b = DefendedModel(_Wrong("dict"), 10).predict(x)
    assert a.shape == (8, 10) and b.shape == (8, 10)
    probs = DefendedModel(_Wrong("probs"), 10, output="probs").predict(x)
    assert torch.all(probs <= 0)  # log-probabilities


@pytest.mark.parametrize("mode", ["shape", "nan"])
def test_sweep_refuses_bad_model_and_writes_no_store(mode, tmp_path):
    @dataclass
    class HP(HParams):
        pass

    @registry.register_defense(f"broken-{mode}")
    class Broken(Defense):
        HParams = HP
        presets = {"digits": {"quick": {}}}
        trainable = True

        def build(self, spec, hp):
            return _Wrong(mode)

        def train(self, model, data, hp, seed, progress=True):
            return {}

    try:
        cfg = SweepConfig(dataset="digits", defenses=[f"broken-{mode}"], attacks=[AttackConfig("pgd")], eps=[0, 0.1],
                          samples=20, out=tmp_path, progress=False)
        with pytest.raises(UserInputError):
            run_sweep(cfg)
        assert not (tmp_path / "store.sqlite").exists()
    finally:
        registry.DEFENSES.unregister(f"broken-{mode}")


def test_metadata_is_json(none_digits):
    meta = json.loads((none_digits.folder / "meta.json").read_text())
    assert isinstance(meta["clean_acc"], float) and meta["id"] in str(none_digits.folder)
