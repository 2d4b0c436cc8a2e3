"""Models trained elsewhere: import-model + sweep from the CLI, and the same numbers from the
Python API; full pickles are refused."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import robustbench_er
from robustbench_er.cli import main
from robustbench_er.data.datasets import load_dataset

ARCH = """
from torch import nn

def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
"""


@pytest.fixture(scope="module")
def trained_elsewhere(tmp_path_factory):
    """A net trained in plain torch (no harness), its architecture file and its state dict."""
    root = tmp_path_factory.mktemp("elsewhere")
    (root / "arch.py").write_text(ARCH)
    ns: dict = {}
    exec(ARCH, ns)
    torch.manual_seed(0)
    net = ns["make"]()
    data = load_dataset("digits")
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(net(data.x_train), data.y_train).backward()
        opt.step()
    net.eval()
    torch.save(net.state_dict(), root / "weights.pt")
    return root, net


def test_import_then_sweep_equals_benchmark(trained_elsewhere, tmp_path, capsys):
    root, net = trained_elsewhere
    out = tmp_path / "res"
    assert main(["import-model", "--dataset", "digits", "--arch", f"{root / 'arch.py'}:make",
                 "--weights", str(root / "weights.pt"), "--name", "plain", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "weights_only=True" in said  # the user is told how the file was read
    (folder,) = [p for p in (out / "checkpoints").iterdir() if p.is_dir()]
    # no --defense: the checkpoint names its model
    assert main(["sweep", "--dataset", "digits", "--checkpoint", str(folder), "--attack", "fgsm,pgd(steps=5)",
                 "--eps", "0:0.2:0.05", "--samples", "100", "--out", str(out), "--quiet"]) == 0
    cli = pd.read_csv(out / "curves.csv")
    res = robustbench_er.benchmark(net, dataset="digits", attacks="fgsm,pgd(steps=5)", eps="0:0.2:0.05",
                                   samples=100, name="plain", out=tmp_path / "api")
    key = ["attack", "eps"]
    merged = res.curves[key + ["robust_acc"]].merge(cli[key + ["robust_acc"]], on=key, suffixes=("_api", "_cli"))
    assert len(merged) == len(res.curves) > 0
    assert (merged["robust_acc_api"] == merged["robust_acc_cli"]).all()
    clean = res.curves[(res.curves["attack"] == "worst-case") & (res.curves["eps"] == 0)]["robust_acc"].iloc[0]
    assert clean > 0.8  # a real trained model, not chance
    assert res.checkpoint is not None and res.checkpoint.name == folder.name  # one identity for both paths


def test_safetensors_weights_import(trained_elsewhere, tmp_path):
    from safetensors.torch import save_file

    root, net = trained_elsewhere
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    assert main(["import-model", "--dataset", "digits", "--arch", f"{root / 'arch.py'}:make",
                 "--weights", str(tmp_path / "w.safetensors"), "--name", "st", "--out", str(tmp_path)]) == 0


@pytest.mark.parametrize("case", ["pickled-module", "wrong-shapes", "not-a-module", "missing-callable", "registered-name"])
def test_bad_imports_exit_2_and_write_nothing(trained_elsewhere, tmp_path, capsys, case):
    root, net = trained_elsewhere
    arch, weights, name = f"{root / 'arch.py'}:make", str(root / "weights.pt"), "m"
    if case == "pickled-module":
        weights = str(tmp_path / "whole.pt")
        torch.save(net, weights)  # a whole pickled model: needs full unpickling, refused
    elif case == "wrong-shapes":
        weights = str(tmp_path / "small.pt")
        torch.save({"1.weight": torch.zeros(3, 3)}, weights)
    elif case == "not-a-module":
        (tmp_path / "bad.py").write_text("def make():\n    return 5\n")
        arch = f"{tmp_path / 'bad.py'}:make"
    elif case == "missing-callable":
        arch = f"{root / 'arch.py'}:nothing"
    else:
        name = "madry"
    rc = main(["import-model", "--dataset", "digits", "--arch", arch, "--weights", weights, "--name", name,
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "checkpoints").exists()
    if case == "pickled-module":
        assert "weights_only=True" in err and "never loaded" in err
