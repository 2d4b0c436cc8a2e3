"""Readers for datasets kept in a local folder (``--data-dir``).

Nothing is downloaded unless the caller passes ``download=True``; every reader parses the
files itself (no md5 checks, so trimmed or re-packed copies work) and returns
``(x_train, y_train, x_test, y_test)``: float32 images N x C x H x W in [0, 1] (never
normalised) and int64 labels.

``root`` may be the folder that directly holds the files or its usual parent, as listed below.

MNIST (:func:`load_mnist`) -> 1 x 28 x 28, labels 0..9
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte`` (also ``train-images.idx3-ubyte`` spelling, each optionally
    ``.gz``) in ``root``, ``root/MNIST/raw`` (torchvision's layout), ``root/MNIST`` or
    ``root/raw``. idx format: big-endian int32 magic (2051 images, 2049 labels), then one
    big-endian int32 per dimension, then unsigned bytes.

CIFAR-10 (:func:`load_cifar10`) -> 3 x 32 x 32, labels 0..9
    binary version ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and ``test_batch.bin``, each
    record 1 label byte + 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major); or the
    python version ``cifar-10-batches-py/data_batch_{1..5}`` and ``test_batch``, Python-2
    pickles of ``{b'data': uint8 array N x 3072, b'labels': [...]}``. Looked for in ``root``,
    ``root/cifar-10-batches-bin`` and ``root/cifar-10-batches-py``.

CIFAR-100 (:func:`load_cifar100`) -> 3 x 32 x 32, fine labels 0..99
    binary version ``cifar-100-binary/train.bin`` and ``test.bin``, each record 1 coarse label
    byte + 1 fine label byte + 3072 pixel bytes; or the python version
    ``cifar-100-python/train`` and ``test``, pickles with ``b'data'`` and ``b'fine_labels'``.
    Looked for in ``root``, ``root/cifar-100-binary`` and ``root/cifar-100-python``.

STL-10 (:func:`load_stl10`) -> 3 x 96 x 96, labels 0..9
    ``stl10_binary/train_X.bin``, ``train_y.bin``, ``test_X.bin``, ``test_y.bin`` (the labelled
    5,000 / 8,000 splits; the unlabelled split is ignored). Each image is 27,648 bytes stored
    column-major (channel, column, row); labels are bytes 1..10. Looked for in ``root`` and
    ``root/stl10_binary``.

Tiny ImageNet (:func:`load_tiny_imagenet`) -> 3 x 64 x 64, labels 0..199
    ``tiny-imagenet-200/wnids.txt``, ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG``
    with ``val/val_annotations.txt`` (tab-separated: file name, wnid, bounding box). The test
    split is the val folder; class index = position of the wnid in ``sorted(wnids)``. Looked
    for in ``root`` and ``root/tiny-imagenet-200``.

The python version of CIFAR is a pickle; it is read with a restricted unpickler that only
rebuilds plain numpy arrays, lists, dicts and byte strings, so a file that tries to call
anything else is refused with :class:`~robustbench_er.core.errors.UserInputError`.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import logging
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_er.core.errors import UserInputError

__all__ = [
    "Splits",
    "load_mnist",
    "load_cifar10",
    "load_cifar100",
    "load_stl10",
    "load_tiny_imagenet",
]

log = logging.getLogger(__name__)

Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""``(x_train, y_train, x_test, y_test)``."""

_TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


# --------------------------------------------------------------------------- helpers


def _root(root: str | Path) -> Path:
    return Path(root).expanduser()


def _dedupe(paths: Sequence[Path]) -> list[Path]:
    seen: set[Path] = set()
    out: list[Path] = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _not_found(dataset: str, looked: Sequence[Path], wanted: str) -> UserInputError:
    where = ", ".join(str(p) for p in looked)
    return UserInputError(
        f"{dataset} was not found: none of {where} contains {wanted}; "
        f"put the files there or pass --download to fetch it."
    )


def _images_to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 N x C x H x W -> contiguous float32 tensor in [0, 1]."""
    out = np.ascontiguousarray(images, dtype=np.float32)
    out /= 255.0
    return torch.from_numpy(out)


def _labels_to_tensor(labels: np.ndarray | Sequence[int], classes: int, dataset: str,
                      source: Path) -> torch.Tensor:
    arr = np.asarray(labels).astype(np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= classes):
        raise UserInputError(
            f"{dataset} labels in {source} must lie in 0..{classes - 1} but range from "
            f"{arr.min()} to {arr.max()}, so the file is not a {dataset} label file."
        )
    return torch.from_numpy(arr)


def _check_counts(dataset: str, split: str, n_images: int, n_labels: int, source: Path) -> None:
    if n_images != n_labels:
        raise UserInputError(
            f"{dataset} {split} split in {source} has {n_images} images but {n_labels} labels."
        )


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise UserInputError(f"Could not read {path}: {exc}.") from exc


def _run_download(dataset: str, fetch: Callable[[], object]) -> None:
    log.info("Downloading %s (download=True)", dataset)
    try:
        fetch()
    except (OSError, RuntimeError) as exc:
        raise UserInputError(f"Downloading {dataset} failed: {exc}.") from exc


# --------------------------------------------------------------------------- MNIST

_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049


def _mnist_dirs(root: Path) -> list[Path]:
    return _dedupe([root, root / "MNIST" / "raw", root / "MNIST", root / "raw"])


def _find_mnist(root: Path) -> dict[str, Path] | None:
    for folder in _mnist_dirs(root):
        found: dict[str, Path] = {}
        for key, names in _MNIST_FILES.items():
            for name in names:
                for candidate in (folder / name, folder / f"{name}.gz"):
                    if candidate.is_file():
                        found[key] = candidate
                        break
                if key in found:
                    break
        if len(found) == len(_MNIST_FILES):
            return found
    return None


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Read an idx file of unsigned bytes with the given magic number and rank."""
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserInputError(f"{path} is too short to be an idx file.")
    found_magic = int.from_bytes(data[:4], "big")
    if found_magic != magic:
        raise UserInputError(
            f"{path} is not an MNIST idx file: magic number {found_magic}, expected {magic}."
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise UserInputError(
            f"{path} declares shape {dims} ({expected} bytes) but holds {len(data) - header} bytes."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(root: str | Path, download: bool = False) -> Splits:
    """Read MNIST (60,000 train / 10,000 test, 1 x 28 x 28) from idx files under ``root``."""
    base = _root(root)
    files = _find_mnist(base)
    if files is None and download:
        from torchvision.datasets import MNIST

        def fetch() -> None:
            MNIST(str(base), train=True, download=True)
            MNIST(str(base), train=False, download=True)

        _run_download("MNIST", fetch)
        files = _find_mnist(base)
    if files is None:
        raise _not_found(
            "MNIST", _mnist_dirs(base),
            "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
            "t10k-labels-idx1-ubyte (optionally .gz)",
        )
    log.info("Reading MNIST from %s", files["train_images"].parent)

    out: list[torch.Tensor] = []
    for split in ("train", "test"):
        img_path, lab_path = files[f"{split}_images"], files[f"{split}_labels"]
        images = _read_idx(img_path, _IDX_IMAGES_MAGIC, 3)
        labels = _read_idx(lab_path, _IDX_LABELS_MAGIC, 1)
        if images.shape[1:] != (28, 28):
            raise UserInputError(
                f"{img_path} holds {images.shape[1]}x{images.shape[2]} images, not MNIST's 28x28."
            )
        _check_counts("MNIST", split, images.shape[0], labels.shape[0], img_path.parent)
        out.append(_images_to_float(images[:, None, :, :]))
        out.append(_labels_to_tensor(labels, 10, "MNIST", lab_path))
    return out[0], out[1], out[2], out[3]


# --------------------------------------------------------------------------- CIFAR

_CIFAR_PIXELS = 3 * 32 * 32


class _ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle asked for something other than plain arrays."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode`` that only does what protocol-2 pickles of bytes need."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in (
        "latin1", "latin-1", "iso-8859-1",
    ):
        raise _ForbiddenGlobal("_codecs.encode with a non-latin-1 codec")
    return text.encode("latin-1")


@functools.lru_cache(maxsize=1)
def _safe_globals() -> dict[tuple[str, str], Any]:
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 1.26
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytes"): bytes,
        ("__builtin__", "bytes"): bytes,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays, dicts, lists and bytes, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        target = _safe_globals().get((module, name))
        if target is None:
            raise _ForbiddenGlobal(f"{module}.{name}")
        return target


def _load_restricted_pickle(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return _ArrayUnpickler(fh, encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise UserInputError(
            f"Refusing to load {path}: the file contains objects that are not plain arrays ({exc})."
        ) from exc
    except OSError as exc:
        raise UserInputError(f"Could not read {path}: {exc}.") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError) as exc:
        raise UserInputError(f"{path} is not a readable CIFAR python batch ({exc}).") from exc


def _pick(batch: dict[Any, Any], key: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    return None


def _read_cifar_python(path: Path, label_key: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_restricted_pickle(path)
    data = _pick(batch, "data") if isinstance(batch, dict) else None
    labels = _pick(batch, label_key) if isinstance(batch, dict) else None
    if data is None or labels is None:
        raise UserInputError(
            f"{path} is not a {dataset} python batch: it needs the keys 'data' and '{label_key}'."
        )
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        raise UserInputError(
            f"{path} is not a {dataset} python batch: 'data' must be a uint8 array N x 3072, "
            f"got {data.dtype} {data.shape}."
        )
    try:
        label_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"{path}: '{label_key}' is not a list of integers.") from exc
    return data.reshape(-1, 3, 32, 32), label_arr


def _read_cifar_binary(path: Path, label_bytes: int, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + _CIFAR_PIXELS
    raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise UserInputError(
            f"{path} is not a {dataset} binary batch: its size {raw.size} is not a multiple of "
            f"{record} bytes per record."
        )
    rows = raw.reshape(-1, record)
    # the last label byte is the one we want (CIFAR-100: coarse, then fine)
    labels = rows[:, label_bytes - 1].astype(np.int64)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32)
    return images, labels


def _cifar_layouts(root: Path, variants: Sequence[tuple[str, str, list[str], list[str]]]
                   ) -> tuple[list[Path], tuple[str, list[Path], list[Path]] | None]:
    """Find the first folder with a complete binary or python layout.

    ``variants`` holds ``(subfolder, kind, train_names, test_names)``; returns the folders
    looked at and ``(kind, train_paths, test_paths)`` or None.
    """
    folders = _dedupe([root] + [root / sub for sub, _, _, _ in variants])
    for folder in folders:
        for _, kind, train_names, test_names in variants:
            train = [folder / n for n in train_names]
            test = [folder / n for n in test_names]
            if all(p.is_file() for p in train + test):
                return folders, (kind, train, test)
    return folders, None


def _load_cifar(root: str | Path, download: bool, dataset: str, classes: int,
                variants: Sequence[tuple[str, str, list[str], list[str]]], label_key: str,
                label_bytes: int, wanted: str, fetch: Callable[[Path], None]) -> Splits:
    base = _root(root)
    folders, found = _cifar_layouts(base, variants)
    if found is None and download:
        _run_download(dataset, lambda: fetch(base))
        folders, found = _cifar_layouts(base, variants)
    if found is None:
        raise _not_found(dataset, folders, wanted)
    kind, train_paths, test_paths = found
    log.info("Reading %s (%s version) from %s", dataset, kind, train_paths[0].parent)

    out: list[torch.Tensor] = []
    for split, paths in (("train", train_paths), ("test", test_paths)):
        parts_x: list[np.ndarray] = []
        parts_y: list[torch.Tensor] = []
        for path in paths:
            if kind == "binary":
                x, y = _read_cifar_binary(path, label_bytes, dataset)
            else:
                x, y = _read_cifar_python(path, label_key, dataset)
            _check_counts(dataset, split, x.shape[0], y.shape[0], path)
            parts_x.append(x)
            parts_y.append(_labels_to_tensor(y, classes, dataset, path))
        out.append(_images_to_float(np.concatenate(parts_x)))
        out.append(torch.cat(parts_y))
    return out[0], out[1], out[2], out[3]


def load_cifar10(root: str | Path, download: bool = False) -> Splits:
    """Read CIFAR-10 (50,000 / 10,000, 3 x 32 x 32), binary or python version, under ``root``."""
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    variants = [
        ("cifar-10-batches-bin", "binary", [f"{b}.bin" for b in batches], ["test_batch.bin"]),
        ("cifar-10-batches-py", "python", batches, ["test_batch"]),
    ]

    def fetch(base: Path) -> None:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(base), train=True, download=True)

    return _load_cifar(
        root, download, "CIFAR-10", 10, variants, "labels", 1,
        "data_batch_1..5 and test_batch (binary .bin or python version)", fetch,
    )


def load_cifar100(root: str | Path, download: bool = False) -> Splits:
    """Read CIFAR-100 (50,000 / 10,000, 3 x 32 x 32, fine labels) under ``root``."""
    variants = [
        ("cifar-100-binary", "binary", ["train.bin"], ["test.bin"]),
        ("cifar-100-python", "python", ["train"], ["test"]),
    ]

    def fetch(base: Path) -> None:
        from torchvision.datasets import CIFAR100

        CIFAR100(str(base), train=True, download=True)

    return _load_cifar(
        root, download, "CIFAR-100", 100, variants, "fine_labels", 2,
        "train and test (binary .bin or python version)", fetch,
    )


# --------------------------------------------------------------------------- STL-10

_STL_SIDE = 96
_STL_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


def _stl_dirs(root: Path) -> list[Path]:
    return _dedupe([root, root / "stl10_binary"])


def _find_stl(root: Path) -> Path | None:
    for folder in _stl_dirs(root):
        if all((folder / name).is_file() for name in _STL_FILES):
            return folder
    return None


def _read_stl_images(path: Path) -> np.ndarray:
    per_image = 3 * _STL_SIDE * _STL_SIDE
    raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    if raw.size == 0 or raw.size % per_image:
        raise UserInputError(
            f"{path} is not an STL-10 image file: its size {raw.size} is not a multiple of "
            f"{per_image} bytes per image."
        )
    # stored column-major: channel, column, row -> swap to channel, row, column
    return raw.reshape(-1, 3, _STL_SIDE, _STL_SIDE).transpose(0, 1, 3, 2)


def load_stl10(root: str | Path, download: bool = False) -> Splits:
    """Read STL-10's labelled splits (5,000 train / 8,000 test, 3 x 96 x 96) under ``root``."""
    base = _root(root)
    folder = _find_stl(base)
    if folder is None and download:
        from torchvision.datasets import STL10

        _run_download("STL-10", lambda: STL10(str(base), split="train", download=True))
        folder = _find_stl(base)
    if folder is None:
        raise _not_found("STL-10", _stl_dirs(base), ", ".join(_STL_FILES))
    log.info("Reading STL-10 from %s", folder)

    out: list[torch.Tensor] = []
    for split in ("train", "test"):
        images = _read_stl_images(folder / f"{split}_X.bin")
        labels_path = folder / f"{split}_y.bin"
        labels = np.frombuffer(_read_bytes(labels_path), dtype=np.uint8).astype(np.int64)
        _check_counts("STL-10", split, images.shape[0], labels.shape[0], folder)
        if labels.size and labels.min() < 1:
            raise UserInputError(
                f"STL-10 labels in {labels_path} must lie in 1..10 but include {labels.min()}."
            )
        out.append(_images_to_float(images))
        out.append(_labels_to_tensor(labels - 1, 10, "STL-10", labels_path))
    return out[0], out[1], out[2], out[3]


# --------------------------------------------------------------------------- Tiny ImageNet

_TINY_SIDE = 64
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def _tiny_dirs(root: Path) -> list[Path]:
    return _dedupe([root, root / "tiny-imagenet-200"])


def _find_tiny(root: Path) -> Path | None:
    for folder in _tiny_dirs(root):
        if ((folder / "wnids.txt").is_file() and (folder / "train").is_dir()
                and (folder / "val" / "val_annotations.txt").is_file()
                and (folder / "val" / "images").is_dir()):
            return folder
    return None


def _read_rgb(path: Path, out: np.ndarray) -> None:
    """Decode one image into ``out`` (64 x 64 x 3 uint8)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise UserInputError(f"Could not read the image {path}: {exc}.") from exc
    if rgb.size != (_TINY_SIDE, _TINY_SIDE):
        raise UserInputError(
            f"{path} is {rgb.size[0]}x{rgb.size[1]} pixels; Tiny ImageNet images are 64x64."
        )
    out[...] = np.asarray(rgb, dtype=np.uint8)


def _decode_all(paths: Sequence[Path]) -> torch.Tensor:
    images = np.empty((len(paths), _TINY_SIDE, _TINY_SIDE, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        _read_rgb(path, images[i])
    return _images_to_float(images.transpose(0, 3, 1, 2))


def load_tiny_imagenet(root: str | Path, download: bool = False) -> Splits:
    """Read Tiny ImageNet (100,000 train / 10,000 val as test, 3 x 64 x 64) under ``root``."""
    base = _root(root)
    folder = _find_tiny(base)
    if folder is None and download:
        from torchvision.datasets.utils import download_and_extract_archive

        _run_download(
            "Tiny ImageNet",
            lambda: download_and_extract_archive(_TINY_IMAGENET_URL, download_root=str(base)),
        )
        folder = _find_tiny(base)
    if folder is None:
        raise _not_found(
            "Tiny ImageNet", _tiny_dirs(base),
            "wnids.txt, train/<wnid>/images/ and val/images/ with val/val_annotations.txt",
        )
    log.info("Reading Tiny ImageNet from %s", folder)

    wnids_path = folder / "wnids.txt"
    try:
        wnids = sorted({line.strip() for line in wnids_path.read_text().splitlines() if line.strip()})
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"Could not read {wnids_path}: {exc}.") from exc
    if not wnids:
        raise UserInputError(f"{wnids_path} lists no classes.")
    index = {wnid: i for i, wnid in enumerate(wnids)}

    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        class_dir = folder / "train" / wnid / "images"
        if not class_dir.is_dir():
            raise UserInputError(
                f"Tiny ImageNet class {wnid} from {wnids_path} has no folder {class_dir}."
            )
        files = sorted(p for p in class_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
        train_paths.extend(files)
        train_labels.extend([index[wnid]] * len(files))

    ann_path = folder / "val" / "val_annotations.txt"
    test_paths: list[Path] = []
    test_labels: list[int] = []
    try:
        lines = ann_path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"Could not read {ann_path}: {exc}.") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in index:
            raise UserInputError(
                f"Line {number} of {ann_path} must be 'file<TAB>wnid...' with a wnid from "
                f"wnids.txt, got {line.strip()!r}."
            )
        image = folder / "val" / "images" / fields[0].strip()
        if not image.is_file():
            raise UserInputError(f"{ann_path} line {number} names {image}, which does not exist.")
        test_paths.append(image)
        test_labels.append(index[fields[1].strip()])

    if not train_paths or not test_paths:
        raise UserInputError(f"Tiny ImageNet in {folder} has no training or no validation images.")
    classes = len(wnids)
    return (
        _decode_all(train_paths),
        _labels_to_tensor(train_labels, classes, "Tiny ImageNet", wnids_path),
        _decode_all(test_paths),
        _labels_to_tensor(test_labels, classes, "Tiny ImageNet", ann_path),
    )
