"""The public Python API: the examples of docs/python-api.md run as written, and benchmark()
gives the numbers the CLI gives for the same weights."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import robustbench_er
from robustbench_er.core.errors import UserInputError

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_api_is_exported():
    assert set(robustbench_er.__all__) == {"BenchmarkResult", "benchmark", "compare", "load_defense"}
    assert callable(robustbench_er.benchmark) and callable(robustbench_er.load_defense)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_docs_example_runs(i, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[i], f"{DOC.name} example {i + 1}", "exec"), {"__name__": f"example{i}"})
    assert capsys.readouterr().out.strip()  # every example prints what it measured


def _net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_benchmark_matches_the_cli_on_the_same_weights(tmp_path):
    from robustbench_er.cli import main

    net = _net()
    res = robustbench_er.benchmark(net, dataset="digits", attacks="fgsm,pgd(steps=5)", eps="0:0.2:0.05",
                                   samples=80, out=tmp_path / "api", name="mine")
    assert res.checkpoint is not None and (res.checkpoint / "model.safetensors").is_file()
    # the same checkpoint through the command line, into another folder
    rc = main(["sweep", "--dataset", "digits", "--defense", "mine", "--checkpoint", str(res.checkpoint),
               "--attack", "fgsm,pgd(steps=5)", "--eps", "0:0.2:0.05", "--samples", "80",
               "--out", str(tmp_path / "cli"), "--quiet", "--plugin", str(_plugin(tmp_path))])
    assert rc == 0
    cli = pd.read_csv(tmp_path / "cli" / "curves.csv")
    api = res.curves
    key = ["attack", "eps"]
    merged = api[key + ["robust_acc"]].merge(cli[key + ["robust_acc"]], on=key, suffixes=("_api", "_cli"))
    assert len(merged) == len(api) > 0
    assert (merged["robust_acc_api"] == merged["robust_acc_cli"]).all()
    # real numbers: the clean accuracy of an untrained net is low, and attacks lower it further
    wc = api[api["attack"] == "worst-case"].sort_values("eps")["robust_acc"].to_numpy()
    assert wc[-1] <= wc[0]
    assert res.robust_accuracy(0.2) == pytest.approx(wc[-1])


def _plugin(tmp_path: Path) -> Path:
    # the architecture as a defense plugin, so the CLI can rebuild the checkpoint's network
    p = tmp_path / "mine.py"
    p.write_text(
        "from torch import nn\n"
        "from robustbench_er.plugins.defense import Defense, DefendedModel, HParams\n"
        "from robustbench_er.plugins.registry import register_defense\n"
        "@register_defense('mine')\n"
        "class Mine(Defense):\n"
        "    presets = {'digits': {'quick': {}, 'paper': {}}}\n"
        "    trainable = False\n"
        "    def build(self, spec, hp):\n"
        "        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))\n"
        "    def wrap(self, net, spec, hp):\n"
        "        return DefendedModel(net, spec.classes)\n"
    )
    return p


def test_other_weights_never_get_old_numbers(tmp_path):
    a = robustbench_er.benchmark(_net(), dataset="digits", attacks="fgsm", eps=[0, 0.1], samples=60,
                                 out=tmp_path, name="m")
    torch.manual_seed(99)
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    b = robustbench_er.benchmark(other, dataset="digits", attacks="fgsm", eps=[0, 0.1], samples=60,
                                 out=tmp_path, name="m")
    assert a.checkpoint != b.checkpoint
    assert a.leaderboard["clean_acc"].iloc[0] != b.leaderboard["clean_acc"].iloc[0]


@pytest.mark.parametrize("kwargs, field", [
    ({"attacks": "pgdx"}, "pgdx"),
    ({"eps": "0,abc"}, "eps"),
    ({"samples": 0}, "samples"),
    ({"normalize": ([0.5, 0.5], [0.2])}, "normalize"),
    ({"name": "a/b"}, "name"),
    ({"name": "none"}, "registered"),
    ({"mode": "sideways"}, "mode"),
])
def test_bad_inputs_are_one_sentence_and_write_nothing(tmp_path, kwargs, field):
    args = {"dataset": "digits", "attacks": "fgsm", "eps": [0, 0.1], "samples": 20, "out": tmp_path / "o"}
    args.update(kwargs)
    with pytest.raises(UserInputError, match=field):
        robustbench_er.benchmark(_net(), **args)
    assert not (tmp_path / "o" / "store.sqlite").exists()


def test_a_model_that_is_not_a_module_is_refused():
    with pytest.raises(UserInputError, match="torch.nn.Module"):
        robustbench_er.benchmark(lambda x: x, dataset="digits", attacks="fgsm", eps=[0, 0.1])  # type: ignore[arg-type]


@pytest.mark.parametrize("net", [
    nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)),  # built for CIFAR-10's 3 x 32 x 32
    nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)),
], ids=["linear", "conv"])
def test_a_model_built_for_other_images_names_the_datas_shape(tmp_path, net):
    with pytest.raises(UserInputError, match=r"shape 1 x 8 x 8, 10 classes\): RuntimeError: .*(mat1|channels)"):
        robustbench_er.benchmark(net, dataset="digits", attacks="fgsm", eps=[0, 0.1], samples=20, out=tmp_path / "o")
    assert not (tmp_path / "o" / "store.sqlite").exists()


def _digits_points(n: int):
    from robustbench_er.data.datasets import load_dataset

    d = load_dataset("digits")
    ids = d.sample_ids(n)
    return d.x_test[ids], d.y_test[ids]


def test_your_own_points_give_the_datasets_numbers_and_never_its_cells(tmp_path):
    """FGSM is deterministic: the same 80 points as tensors score as the dataset's own 80 points,
    under their own name, so neither run reuses the other's cells."""
    net = _net()
    kw = {"attacks": "fgsm", "eps": [0, 0.05, 0.1, 0.2], "out": tmp_path, "name": "lin"}
    ours = robustbench_er.benchmark(net, data=_digits_points(80), **kw)
    theirs = robustbench_er.benchmark(net, dataset="digits", samples=80, **kw)
    (name,) = set(ours.curves["dataset"])
    assert name.startswith("data@") and set(theirs.curves["dataset"]) == {"digits"}
    a = ours.curves.sort_values(["attack", "eps"])["robust_acc"].to_numpy()
    b = theirs.curves.sort_values(["attack", "eps"])["robust_acc"].to_numpy()
    assert len(a) == 8 and (a == b).all() and a[0] > a[-1]
    other = robustbench_er.benchmark(net, data=_digits_points(60), **kw)
    assert set(other.curves["dataset"]) != {name} and set(other.leaderboard["n"]) == {60}


@pytest.mark.parametrize("make, match", [
    (lambda x, y: {"data": (x, y + 10)}, "labels go up to"),
    (lambda x, y: {"data": (x * 3, y)}, r"\[0, 1\]"),
    (lambda x, y: {"data": (x[:, :, :4], y)}, "shape 1 x 4 x 8"),
    (lambda x, y: {"data": (x, y[:5])}, "labels"),
    (lambda x, y: {"data": (x, y), "dataset": "digits"}, "not both"),
    (lambda x, y: {"data": "points.npz"}, "DataLoader"),
], ids=["labels", "range", "shape", "lengths", "both", "not-tensors"])
def test_bad_points_are_one_sentence_and_write_nothing(tmp_path, make, match):
    x, y = _digits_points(20)
    with pytest.raises(UserInputError, match=match):
        robustbench_er.benchmark(_net(), attacks="fgsm", eps=[0, 0.1], out=tmp_path / "o", **make(x, y))
    assert not (tmp_path / "o" / "store.sqlite").exists()
