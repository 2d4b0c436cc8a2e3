"""A user's own test set: tensors (``benchmark(data=(x, y))``) or a file (``--data-file``).

A given test set becomes a dataset registered for the duration of the run, named after the hash
of its contents (``data@<hash>``, or ``<dataset>@<hash>`` when it replaces the test split of a
registered dataset). Cells are keyed on that name as they are on a model's weights, so a rerun
with the same points resumes and another test set never reuses a result.

* ``data@<hash>`` (the Python API's ``data=``): the test points alone; shape from the tensors,
  classes from the model's output width. There is no training split: only given models are
  evaluated on it.
* ``<dataset>@<hash>`` (``--dataset mnist5k --data-file mine.npz``): the dataset's spec,
  training split and presets, with the file's points as its test split. Models trained on the
  dataset (checkpoints, imported models) are evaluated on it as they are on the dataset's own
  test split: :attr:`~robustbench_er.data.datasets.DatasetSpec.models_on` names the dataset.

Files are read without unpickling: safetensors, or ``.npz`` with ``allow_pickle=False``, each
holding ``x`` (N x C x H x W floats in [0, 1], or uint8 in [0, 255]) and ``y`` (integer labels).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_er.core.errors import UserInputError
from robustbench_er.data.datasets import DATASETS, Dataset, DatasetSpec, check_images, load_dataset

#: a given test set's name: ``<base or "data">@<first hex digits of the content hash>``
HASH_DIGITS = 12


def as_tensors(data: Any, where: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` tensors (or arrays), or an iterable of ``(x, y)`` batches such as a DataLoader,
    as one float32 image tensor and one int64 label tensor, checked."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not _is_batch_list(data):
        x, y = data
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, torch.Tensor, np.ndarray)):
        xs, ys = [], []
        for i, batch in enumerate(data):
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise UserInputError(f"{where}: batch {i} of the loader is not an (images, labels) pair.")
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
        if not xs:
            raise UserInputError(f"{where}: the loader gave no batches.")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise UserInputError(f"{where} must be (images, labels) tensors or a DataLoader of such pairs;"
                             f" got {type(data).__name__}.")
    return _checked(x, y, where)


def _is_batch_list(data: Any) -> bool:
    return all(isinstance(b, (tuple, list)) and len(b) == 2 for b in data)


def _checked(x: Any, y: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        x, y = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x), torch.as_tensor(
            np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserInputError(f"{where}: images and labels must be tensors or arrays ({exc}).") from None
    x, y = x.detach().cpu(), y.detach().cpu()
    if x.dtype == torch.uint8:
        x = x.float() / 255
    if not x.is_floating_point() or x.ndim != 4:
        raise UserInputError(f"{where}: images must be a float N x C x H x W tensor in [0, 1];"
                             f" got {x.dtype} of shape {tuple(x.shape)}.")
    x = x.float().contiguous()
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise UserInputError(f"{where}: labels must be whole numbers.")
    y = y.long().reshape(-1)
    if len(y) != len(x) or len(x) == 0:
        raise UserInputError(f"{where}: {len(x)} images but {len(y)} labels.")
    if not torch.isfinite(x).all() or float(x.min()) < 0 or float(x.max()) > 1:
        raise UserInputError(f"{where}: images must lie in [0, 1] (no normalisation in the data);"
                             f" got values in [{float(x.min()):g}, {float(x.max()):g}].")
    if int(y.min()) < 0:
        raise UserInputError(f"{where}: labels must be 0 or more; got {int(y.min())}.")
    return x, y


def content_hash(x: torch.Tensor, y: torch.Tensor) -> str:
    """The hash that names a given test set: shape, image bytes (float32) and labels (int64)."""
    h = hashlib.sha256()
    h.update(repr(tuple(x.shape)).encode())
    h.update(x.float().contiguous().numpy().tobytes())
    h.update(y.long().contiguous().numpy().tobytes())
    return h.hexdigest()[:HASH_DIGITS]


def read_data_file(path: str | Path, where: str = "--data-file") -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``y`` from a safetensors or ``.npz`` file, never unpickled."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserInputError(f"{where}: the file {str(path)!r} does not exist.")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            arrays: dict[str, Any] = load_file(str(p))
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        else:
            raise UserInputError(f"{where}: {str(path)!r} is neither .safetensors nor .npz.")
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(f"{where}: {str(path)!r} could not be read ({type(exc).__name__}: {exc}).") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise UserInputError(f"{where}: {str(path)!r} has no {' or '.join(missing)!r} array;"
                             f" it has {', '.join(sorted(arrays)) or 'none'}.")
    return _checked(arrays["x"], arrays["y"], where)


def test_set(x: torch.Tensor, y: torch.Tensor, *, classes: int, base: Dataset | None = None,
             where: str = "data") -> Dataset:
    """The dataset holding the points ``x, y`` as its test split: ``base``'s spec and training split
    when given (shape and labels checked against them), else the points alone."""
    if int(y.max()) >= classes:
        raise UserInputError(f"{where}: labels go up to {int(y.max())} but the "
                             f"{'dataset ' + repr(base.spec.name) if base else 'model'} has {classes} classes.")
    digest = content_hash(x, y)
    if base is None:
        spec = DatasetSpec(f"data@{digest}", tuple(x.shape[1:]), classes)  # type: ignore[arg-type]
        empty = torch.zeros((0, *x.shape[1:]))
        return Dataset(spec, empty, torch.zeros(0, dtype=torch.long), x, y)
    spec = dataclasses.replace(base.spec, name=f"{base.spec.name}@{digest}", base=base.spec.name)
    if tuple(x.shape[1:]) != tuple(base.spec.shape):
        raise UserInputError(f"{where}: the images have shape {' x '.join(map(str, x.shape[1:]))} but"
                             f" {base.spec.name} has {' x '.join(map(str, base.spec.shape))}.")
    check_images(x, spec, "given test images")
    return Dataset(spec, base.x_train, base.y_train, x, y)


@contextlib.contextmanager
def registered_test_set(data: Dataset) -> Iterator[str]:
    """Register ``data`` under its name for the block (so every layer loads it by name); yield the name."""
    name = data.spec.name
    owned = name not in DATASETS
    if owned:
        DATASETS.register(name, lambda data_dir=None, download=False: data, origin="a given test set")
    try:
        yield name
    finally:
        if owned:
            DATASETS.unregister(name)


def file_test_set(path: str | Path, dataset: str, data_dir: str | None = None,
                  where: str = "--data-file") -> Dataset:
    """``--dataset NAME --data-file PATH``: the file's points as the test split of ``NAME``."""
    x, y = read_data_file(path, where)
    base = load_dataset(dataset, data_dir)
    return test_set(x, y, classes=base.spec.classes, base=base, where=where)
