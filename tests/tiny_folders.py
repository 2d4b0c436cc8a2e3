"""Tiny datasets written in the real on-disk formats the folder readers take (MNIST idx, CIFAR
binary, STL-10 binary, Tiny ImageNet JPEG folders): a few random images per class, so a paper
configuration can run end to end on a CPU before anyone spends GPU hours on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _idx(magic: int, array: np.ndarray) -> bytes:
    import struct

    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...], labels: np.ndarray) -> np.ndarray:
    """Random images with a class-dependent brightness, so a model can learn something."""
    x = rng.integers(0, 120, size=(n, *shape)).astype(np.int64)
    x += (labels.reshape(-1, *([1] * len(shape))) * 12) % 130
    return np.clip(x, 0, 255).astype(np.uint8)


def write_mnist(root: Path, per_class: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 10 * per_class), ("t10k", 10 * per_class)):
        y = np.arange(n) % 10
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(2051, _images(rng, n, (28, 28), y)))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(2049, y))
    return root


def write_cifar(root: Path, classes: int = 10, per_class: int = 3, seed: int = 0,
                test_images: int | None = None) -> Path:
    """CIFAR-10 (``cifar-10-batches-bin``) or CIFAR-100 (``cifar-100-binary``) binary version;
    ``test_images`` test images (labels cycling over the classes; default ``per_class`` a class)."""
    rng = np.random.default_rng(seed)
    if classes == 10:
        folder = root / "cifar-10-batches-bin"
        folder.mkdir(parents=True, exist_ok=True)
        y = np.arange(10 * per_class) % 10
        x = _images(rng, len(y), (3, 32, 32), y)
        parts = np.array_split(np.arange(len(y)), 5)
        for i, idx in enumerate(parts, 1):
            rows = np.concatenate([y[idx].astype(np.uint8)[:, None], x[idx].reshape(len(idx), -1)], axis=1)
            (folder / f"data_batch_{i}.bin").write_bytes(rows.tobytes())
        yt = np.arange(test_images or 10 * per_class) % 10
        xt = _images(rng, len(yt), (3, 32, 32), yt)
        rows = np.concatenate([yt.astype(np.uint8)[:, None], xt.reshape(len(yt), -1)], axis=1)
        (folder / "test_batch.bin").write_bytes(rows.tobytes())
        return root
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.bin", classes * per_class), ("test.bin", test_images or classes * per_class)):
        fine = (np.arange(n) % classes).astype(np.uint8)
        x = _images(rng, len(fine), (3, 32, 32), fine)
        coarse = (fine // 5).astype(np.uint8)
        rows = np.concatenate([coarse[:, None], fine[:, None], x.reshape(len(fine), -1)], axis=1)
        (folder / name).write_bytes(rows.tobytes())
    return root


def write_stl10(root: Path, per_class: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        y = np.arange(10 * per_class) % 10
        x = _images(rng, len(y), (3, 96, 96), y)
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
    return root


def write_tiny_imagenet(root: Path, per_class: int = 1, seed: int = 0, val_classes: int = 200) -> Path:
    """All 200 classes (ids n00000000 ...), ``per_class`` training JPEGs each and one validation
    JPEG for each of the first ``val_classes``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    wnids = [f"n{i:08d}" for i in range(200)]
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    notes = []
    for c, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = _images(rng, 1, (64, 64, 3), np.array([c]))[0]
            Image.fromarray(arr).save(images / f"{wnid}_{i}.JPEG", quality=90)
        if c < val_classes:
            arr = _images(rng, 1, (64, 64, 3), np.array([c]))[0]
            Image.fromarray(arr).save(folder / "val" / "images" / f"val_{c}.JPEG", quality=90)
            notes.append(f"val_{c}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(notes) + "\n")
    return root


#: hyper-parameters that set a training schedule's length (whichever a defense has), shrunk to one
#: epoch on two images so a paper preset trains on a CPU in seconds
SHRINK = {"epochs": 1, "batch_size": 2, "train_samples": 2, "gan_iters": 1, "gan_batch_size": 2,
          "restarts": 1, "rec_steps": 2, "n_passes": 2, "attack_steps": 1}

WRITERS = {
    "mnist": write_mnist,
    # 100 training images: enough for a detection job's quick networks to learn the tiny classes
    "cifar10": lambda root: write_cifar(root, 10, per_class=10, test_images=50),
    # test splits of 20 images: every checkpoint's clean accuracy is measured on the whole split
    "cifar100": lambda root: write_cifar(root, 100, per_class=1, test_images=20),
    "stl10": write_stl10,
    "tiny-imagenet": lambda root: write_tiny_imagenet(root, val_classes=20),
}
