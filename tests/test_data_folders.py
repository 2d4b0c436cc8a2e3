"""Tests for robustbench_er.data.folders: tiny files in each real on-disk format."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_er.core.errors import UserInputError
from robustbench_er.data import folders as data_folders
from robustbench_er.data.folders import (
    load_cifar10,
    load_cifar100,
    load_mnist,
    load_stl10,
    load_tiny_imagenet,
)


def _check_splits(splits, n_train: int, n_test: int, shape: tuple[int, int, int]) -> None:
    x_tr, y_tr, x_te, y_te = splits
    assert x_tr.shape == (n_train, *shape) and x_te.shape == (n_test, *shape)
    assert y_tr.shape == (n_train,) and y_te.shape == (n_test,)
    assert x_tr.dtype == torch.float32 and x_te.dtype == torch.float32
    assert y_tr.dtype == torch.int64 and y_te.dtype == torch.int64
    for x in (x_tr, x_te):
        assert x.is_contiguous()
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


# --------------------------------------------------------------------------- MNIST


def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 200, size=(n, 28, 28), dtype=np.uint8)
    images[:, 3, 5] = 255  # known bright pixel at row 3, column 5
    images[:, 5, 3] = 0
    labels = np.arange(n, dtype=np.uint8) % 10
    return images, labels


def _write_mnist(folder: Path, gz: bool) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    xtr, ytr = _mnist_arrays(6, 0)
    xte, yte = _mnist_arrays(4, 1)
    files = {
        "train-images-idx3-ubyte": _idx_bytes(2051, xtr),
        "train-labels-idx1-ubyte": _idx_bytes(2049, ytr),
        "t10k-images-idx3-ubyte": _idx_bytes(2051, xte),
        "t10k-labels-idx1-ubyte": _idx_bytes(2049, yte),
    }
    for name, data in files.items():
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as fh:
                fh.write(data)
        else:
            (folder / name).write_bytes(data)
    return {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}


@pytest.mark.parametrize(("sub", "gz"), [("MNIST/raw", False), ("", True), ("", False)])
def test_mnist_round_trip(tmp_path: Path, sub: str, gz: bool) -> None:
    written = _write_mnist(tmp_path / sub if sub else tmp_path, gz)
    splits = load_mnist(tmp_path)
    _check_splits(splits, 6, 4, (1, 28, 28))
    x_tr, y_tr, x_te, y_te = splits
    assert torch.all(x_tr[:, 0, 3, 5] == 1.0) and torch.all(x_tr[:, 0, 5, 3] == 0.0)
    expected = torch.from_numpy(written["xtr"].astype(np.float32) / 255.0)
    assert torch.equal(x_tr[:, 0], expected)
    assert y_tr.tolist() == written["ytr"].tolist()
    assert y_te.tolist() == written["yte"].tolist()
    assert torch.equal(x_te[:, 0], torch.from_numpy(written["xte"].astype(np.float32) / 255.0))


def test_mnist_accepts_str_root(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    assert load_mnist(str(tmp_path))[0].shape == (6, 1, 28, 28)


def test_mnist_bad_magic(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(2051, np.zeros(6, np.uint8)))
    with pytest.raises(UserInputError, match="magic"):
        load_mnist(tmp_path)


def test_mnist_truncated_file(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserInputError, match="declares shape"):
        load_mnist(tmp_path)


# --------------------------------------------------------------------------- missing files


@pytest.mark.parametrize(
    ("loader", "name"),
    [
        (load_mnist, "MNIST"),
        (load_cifar10, "CIFAR-10"),
        (load_cifar100, "CIFAR-100"),
        (load_stl10, "STL-10"),
        (load_tiny_imagenet, "Tiny ImageNet"),
    ],
)
def test_missing_folder_is_user_error(tmp_path: Path, loader, name: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserInputError) as info:
        loader(missing)
    message = str(info.value)
    assert name in message
    assert str(missing) in message
    assert "--download" in message
    assert message.count(". ") == 0  # one sentence


def test_partial_mnist_is_missing(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserInputError, match="MNIST was not found"):
        load_mnist(tmp_path)


# --------------------------------------------------------------------------- CIFAR


def _cifar_images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 200, size=(n, 3, 32, 32), dtype=np.uint8)
    images[:, 2, 7, 11] = 255  # blue channel, row 7, column 11
    return images


def _cifar10_batches() -> list[tuple[np.ndarray, np.ndarray]]:
    """Five training batches (6 images in all) and one test batch (4 images)."""
    sizes = [2, 1, 1, 1, 1, 4]
    out = []
    for i, n in enumerate(sizes):
        out.append((_cifar_images(n, i), (np.arange(n) + i) % 10))
    return out


def _write_cifar10_binary(folder: Path, batches) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name, (x, y) in zip(names, batches):
        rows = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(len(x), -1)], axis=1)
        (folder / name).write_bytes(rows.tobytes())


def _pickle_batch(path: Path, x: np.ndarray, labels, label_key: bytes = b"labels",
                  extra: dict | None = None) -> None:
    batch = {b"batch_label": b"testing batch", b"data": x.reshape(len(x), -1), label_key: labels}
    batch.update(extra or {})
    with path.open("wb") as fh:
        pickle.dump(batch, fh, protocol=2)


def _write_cifar10_python(folder: Path, batches) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, (x, y) in zip(names, batches):
        _pickle_batch(folder / name, x, [int(v) for v in y])


def _check_cifar10(splits, batches) -> None:
    _check_splits(splits, 6, 4, (3, 32, 32))
    x_tr, y_tr, x_te, y_te = splits
    x_train = np.concatenate([x for x, _ in batches[:5]])
    y_train = np.concatenate([y for _, y in batches[:5]])
    assert torch.all(x_tr[:, 2, 7, 11] == 1.0) and torch.all(x_te[:, 2, 7, 11] == 1.0)
    assert torch.equal(x_tr, torch.from_numpy(x_train.astype(np.float32) / 255.0))
    assert torch.equal(x_te, torch.from_numpy(batches[5][0].astype(np.float32) / 255.0))
    assert y_tr.tolist() == y_train.tolist()
    assert y_te.tolist() == batches[5][1].tolist()


def test_cifar10_binary_parent_layout(tmp_path: Path) -> None:
    batches = _cifar10_batches()
    _write_cifar10_binary(tmp_path / "cifar-10-batches-bin", batches)
    _check_cifar10(load_cifar10(tmp_path), batches)


def test_cifar10_binary_direct_layout(tmp_path: Path) -> None:
    batches = _cifar10_batches()
    _write_cifar10_binary(tmp_path, batches)
    _check_cifar10(load_cifar10(tmp_path), batches)


def test_cifar10_python_version(tmp_path: Path) -> None:
    batches = _cifar10_batches()
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10_python(folder, batches)
    # the official files were written by numpy 1.x: same pickle, older module path
    path = folder / "data_batch_2"
    blob = path.read_bytes()
    assert b"numpy._core.multiarray" in blob
    path.write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    _check_cifar10(load_cifar10(tmp_path), batches)
    # labels stored as numpy integers are plain data too
    _pickle_batch(folder / "test_batch", batches[5][0], [np.int64(v) for v in batches[5][1]])
    _check_cifar10(load_cifar10(folder), batches)


class _Py2Pickler(pickle._Pickler):
    """Writes bytes the way Python 2 wrote ``str`` (BINSTRING opcodes), like the official files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def test_cifar100_python2_style_pickle(tmp_path: Path) -> None:
    import io

    x_train, x_test = _cifar_images(6, 0), _cifar_images(4, 1)
    for name, x, fine in (("train", x_train, [3, 1, 4, 1, 5, 9]), ("test", x_test, [2, 6, 5, 3])):
        buf = io.BytesIO()
        batch = {b"data": x.reshape(len(x), -1), b"fine_labels": fine, b"coarse_labels": fine}
        _Py2Pickler(buf, protocol=2).dump(batch)
        blob = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"_codecs" not in blob and pickle.SHORT_BINSTRING + b"\x04data" in blob
        (tmp_path / name).write_bytes(blob)
    x_tr, y_tr, x_te, y_te = load_cifar100(tmp_path)
    assert y_tr.tolist() == [3, 1, 4, 1, 5, 9] and y_te.tolist() == [2, 6, 5, 3]
    assert torch.equal(x_tr, torch.from_numpy(x_train.astype(np.float32) / 255.0))
    assert torch.all(x_te[:, 2, 7, 11] == 1.0)


def test_cifar10_binary_bad_size(tmp_path: Path) -> None:
    batches = _cifar10_batches()
    _write_cifar10_binary(tmp_path, batches)
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(UserInputError, match="multiple of 3073"):
        load_cifar10(tmp_path)


def test_cifar10_label_out_of_range(tmp_path: Path) -> None:
    batches = _cifar10_batches()
    batches[5] = (batches[5][0], np.array([0, 1, 2, 42]))
    _write_cifar10_binary(tmp_path, batches)
    with pytest.raises(UserInputError, match="0..9"):
        load_cifar10(tmp_path)


def test_cifar100_binary_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    written = {}
    for name, n, seed in (("train.bin", 6, 0), ("test.bin", 4, 1)):
        x = _cifar_images(n, seed)
        coarse = np.full(n, 19, dtype=np.uint8)
        fine = (np.arange(n) * 17 + 3).astype(np.uint8) % 100
        rows = np.concatenate([coarse[:, None], fine[:, None], x.reshape(n, -1)], axis=1)
        (folder / name).write_bytes(rows.tobytes())
        written[name] = (x, fine)
    splits = load_cifar100(tmp_path)
    _check_splits(splits, 6, 4, (3, 32, 32))
    x_tr, y_tr, x_te, y_te = splits
    assert y_tr.tolist() == written["train.bin"][1].tolist()
    assert y_te.tolist() == written["test.bin"][1].tolist()
    assert torch.equal(x_tr, torch.from_numpy(written["train.bin"][0].astype(np.float32) / 255.0))
    assert torch.all(x_te[:, 2, 7, 11] == 1.0)


def test_cifar100_python_version(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x_train, x_test = _cifar_images(6, 0), _cifar_images(4, 1)
    fine_train, fine_test = [99, 0, 5, 50, 7, 8], [1, 2, 98, 3]
    _pickle_batch(folder / "train", x_train, fine_train, b"fine_labels",
                  {b"coarse_labels": [0] * 6, b"filenames": [b"a.png"] * 6})
    _pickle_batch(folder / "test", x_test, fine_test, b"fine_labels",
                  {b"coarse_labels": [0] * 4})
    x_tr, y_tr, x_te, y_te = load_cifar100(tmp_path)
    assert y_tr.tolist() == fine_train and y_te.tolist() == fine_test
    assert torch.equal(x_te, torch.from_numpy(x_test.astype(np.float32) / 255.0))


class _Exploit:
    """Pickles into a call of ``os.system`` on load."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _EvalExploit:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


@pytest.mark.parametrize("kind", ["system", "eval"])
def test_cifar_malicious_pickle_is_refused(tmp_path: Path, kind: str) -> None:
    batches = _cifar10_batches()
    _write_cifar10_python(tmp_path, batches)
    marker = tmp_path / "pwned"
    if kind == "system":
        payload = _Exploit(f"echo pwned > '{marker}'")
    else:
        payload = _EvalExploit(f"open({str(marker)!r}, 'w').write('pwned')")
    with (tmp_path / "data_batch_3").open("wb") as fh:
        pickle.dump({b"data": payload, b"labels": [0]}, fh, protocol=2)
    with pytest.raises(UserInputError, match="not plain arrays"):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar_non_latin1_codec_is_refused(tmp_path: Path) -> None:
    batches = _cifar10_batches()
    _write_cifar10_python(tmp_path, batches)
    path = tmp_path / "test_batch"
    blob = path.read_bytes()
    # same length as "latin1", so the pickle stays well formed
    path.write_bytes(blob.replace(b"latin1", b"rot_13", 1))
    with pytest.raises(UserInputError, match="not plain arrays"):
        load_cifar10(tmp_path)


def test_cifar_garbage_pickle(tmp_path: Path) -> None:
    batches = _cifar10_batches()
    _write_cifar10_python(tmp_path, batches)
    (tmp_path / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(UserInputError, match="test_batch"):
        load_cifar10(tmp_path)


def test_cifar_pickle_without_data_key(tmp_path: Path) -> None:
    batches = _cifar10_batches()
    _write_cifar10_python(tmp_path, batches)
    with (tmp_path / "test_batch").open("wb") as fh:
        pickle.dump({b"labels": [1, 2]}, fh, protocol=2)
    with pytest.raises(UserInputError, match="'data'"):
        load_cifar10(tmp_path)


def test_restricted_unpickler_rejects_other_globals() -> None:
    import io

    blob = pickle.dumps({b"x": Path("/tmp")}, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        data_folders._ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()


# --------------------------------------------------------------------------- STL-10


def _write_stl_split(folder: Path, split: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Write a split and return the images as C x H x W (row-major) and labels 1..10."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 200, size=(n, 3, 96, 96), dtype=np.uint8)
    images[:, 1, 10, 40] = 255  # green channel, row 10, column 40
    images[:, 1, 40, 10] = 0
    labels = (np.arange(n) % 10 + 1).astype(np.uint8)
    stored = images.transpose(0, 1, 3, 2)  # on disk: channel, column, row
    (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(stored).tobytes())
    (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
    return images, labels


def test_stl10_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    x_train, y_train = _write_stl_split(folder, "train", 6, 0)
    x_test, y_test = _write_stl_split(folder, "test", 4, 1)
    (folder / "unlabeled_X.bin").write_bytes(b"")  # ignored
    splits = load_stl10(tmp_path)
    _check_splits(splits, 6, 4, (3, 96, 96))
    x_tr, y_tr, x_te, y_te = splits
    assert torch.all(x_tr[:, 1, 10, 40] == 1.0) and torch.all(x_tr[:, 1, 40, 10] == 0.0)
    assert torch.equal(x_tr, torch.from_numpy(x_train.astype(np.float32) / 255.0))
    assert torch.equal(x_te, torch.from_numpy(x_test.astype(np.float32) / 255.0))
    assert y_tr.tolist() == (y_train.astype(int) - 1).tolist()
    assert y_te.tolist() == [0, 1, 2, 3]
    assert load_stl10(folder)[3].tolist() == [0, 1, 2, 3]  # direct layout


def test_stl10_label_zero_is_rejected(tmp_path: Path) -> None:
    _write_stl_split(tmp_path, "train", 2, 0)
    _write_stl_split(tmp_path, "test", 2, 1)
    (tmp_path / "test_y.bin").write_bytes(bytes([0, 1]))
    with pytest.raises(UserInputError, match="1..10"):
        load_stl10(tmp_path)


# --------------------------------------------------------------------------- Tiny ImageNet

_COLOURS = {"n02": (250, 10, 10), "n01": (10, 10, 250)}


def _write_tiny(root: Path) -> Path:
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("n02\nn01\n")  # not sorted: n01 must get index 0
    for wnid, colour in _COLOURS.items():
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(2 if wnid == "n01" else 3):
            Image.new("RGB", (64, 64), colour).save(images / f"{wnid}_{i}.JPEG", quality=95)
    # val: a colour image of each class and one greyscale image
    Image.new("RGB", (64, 64), _COLOURS["n02"]).save(folder / "val" / "images" / "val_0.JPEG")
    Image.new("RGB", (64, 64), _COLOURS["n01"]).save(folder / "val" / "images" / "val_1.JPEG")
    Image.new("L", (64, 64), 128).save(folder / "val" / "images" / "val_2.JPEG")
    (folder / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn02\t0\t0\t63\t63\n"
        "val_1.JPEG\tn01\t1\t2\t30\t40\n"
        "val_2.JPEG\tn02\t0\t0\t10\t10\n"
    )
    return folder


def test_tiny_imagenet_round_trip(tmp_path: Path) -> None:
    folder = _write_tiny(tmp_path)
    for root in (tmp_path, folder):
        splits = load_tiny_imagenet(root)
        _check_splits(splits, 5, 3, (3, 64, 64))
        x_tr, y_tr, x_te, y_te = splits
        assert y_tr.tolist() == [0, 0, 1, 1, 1]  # n01 (2 images) then n02 (3 images)
        assert y_te.tolist() == [1, 0, 1]
        red = torch.tensor(_COLOURS["n02"], dtype=torch.float32) / 255.0
        blue = torch.tensor(_COLOURS["n01"], dtype=torch.float32) / 255.0
        tol = 3 / 255
        assert torch.allclose(x_tr[0], blue[:, None, None].expand(3, 64, 64), atol=tol)
        assert torch.allclose(x_tr[4], red[:, None, None].expand(3, 64, 64), atol=tol)
        assert torch.allclose(x_te[0], red[:, None, None].expand(3, 64, 64), atol=tol)
        assert torch.allclose(x_te[2], torch.full((3, 64, 64), 128 / 255), atol=tol)


def test_tiny_imagenet_unknown_wnid(tmp_path: Path) -> None:
    folder = _write_tiny(tmp_path)
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(UserInputError, match="Line 1"):
        load_tiny_imagenet(tmp_path)


def test_tiny_imagenet_wrong_size(tmp_path: Path) -> None:
    folder = _write_tiny(tmp_path)
    Image.new("RGB", (32, 32), (0, 0, 0)).save(folder / "val" / "images" / "val_1.JPEG")
    with pytest.raises(UserInputError, match="64x64"):
        load_tiny_imagenet(tmp_path)
