"""RobustBench's model zoo, offline: a zoo architecture's weights in RobustBench's layout are
loaded and swept on a CIFAR-10 folder written in the real binary format."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_er.cli import main

if importlib.util.find_spec("robustbench") is None:  # installed by `make test` (the dev extra includes the zoo's)
    pytest.skip("the zoo extra is not installed (pip install 'robustbench-er[zoo]')", allow_module_level=True)

MODEL = "Ding2020MMA"  # the smallest cifar10/Linf architecture of the zoo (WideResNet-28-4, 5.8M weights)


def _cifar(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        n = 20 if name == "test_batch.bin" else 2
        x = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        (folder / name).write_bytes(np.concatenate([y[:, None], x], axis=1).tobytes())


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    from robustbench_er.jobs.zoo import weights_path, zoo_architecture

    root = tmp_path_factory.mktemp("zoo")
    _cifar(root / "data" / "cifar-10-batches-bin")
    torch.manual_seed(0)
    net = zoo_architecture(MODEL, "cifar10", "Linf")
    path = weights_path(root / "models", MODEL, "cifar10", "Linf")
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)  # as zoo files are
    return root, net


def test_zoo_model_is_swept_offline(zoo_dir, tmp_path, capsys):
    root, net = zoo_dir
    out = tmp_path / "res"
    rc = main(["sweep", "--dataset", "cifar10", "--data-dir", str(root / "data"), "--defense", f"robustbench:{MODEL}",
               "--model-dir", str(root / "models"), "--attack", "fgsm", "--eps", "0,8/255", "--samples", "20",
               "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    (folder,) = [p for p in (out / "checkpoints").iterdir() if p.is_dir()]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["architecture"] == f"robustbench:cifar10/Linf/{MODEL}"
    assert "weights_only=True" in meta["weights_read_with"] and "module." in meta["weights_read_with"]
    board = json.loads((out / "leaderboard.json").read_text())
    (row,) = board
    assert row["name"] == f"robustbench:{MODEL.lower()}" and row["dataset"] == "cifar10" and row["threat_model"] == "Linf"
    for field in ("clean_acc", "autoattack_acc", "eps", "additional_data", "number_forward_passes", "reported",
                  "link", "authors", "venue", "architecture", "footnote"):
        assert field in row  # RobustBench's model_info fields
    # the numbers are the loaded weights': the clean accuracy the sweep printed is the net's own
    from robustbench_er.data.datasets import load_dataset

    data = load_dataset("cifar10", str(root / "data"))
    ids = data.sample_ids(20)
    net.eval()
    with torch.no_grad():
        acc = float((net(data.x_test[ids]).argmax(1) == data.y_test[ids]).float().mean())
    assert row["clean_acc"] == pytest.approx(acc)


def test_missing_weights_are_one_sentence_and_nothing_downloaded(zoo_dir, tmp_path, capsys):
    root, _ = zoo_dir
    rc = main(["sweep", "--dataset", "cifar10", "--data-dir", str(root / "data"), "--defense",
               "robustbench:Wong2020Fast", "--model-dir", str(root / "models"), "--attack", "fgsm", "--eps", "0,8/255",
               "--samples", "5", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not found" in err and "--download" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "store.sqlite").exists()
