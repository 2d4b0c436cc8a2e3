"""Models trained elsewhere: from a user's architecture and weights to a harness checkpoint.

``import_model`` builds the network from ``module:callable`` (a dotted Python path, or
``path/to/file.py:callable``), loads a weights file into it (safetensors, or a state dict
saved with ``torch.save`` read with ``weights_only=True``, never unpickled in full) and writes
a checkpoint folder (``model.safetensors`` + ``meta.json``) whose ``meta.json`` records the
architecture and the model's declarations. Such a folder is evaluated like any other with
``--checkpoint``: :func:`registered_checkpoint` enters it as a one-off defense for the run.

The Python API's :func:`robustbench_er.benchmark` uses the same one-off defense
(:func:`given_defense`), so a model imported here and the same module passed to ``benchmark``
have the same identity and give the same numbers.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from robustbench_er.core.errors import UserInputError
from robustbench_er.data.datasets import load_dataset
from robustbench_er.inputs.config import check_output_folder
from robustbench_er.jobs import zoo
from robustbench_er.models.checkpoints import read_meta
from robustbench_er.models.defended import check_model_output
from robustbench_er.models.training import accuracy
from robustbench_er.plugins.given import (
    DECLARATIONS,
    given_defense,
    given_model,
    read_state_dict,
    registered,
    save_given,
)
from robustbench_er.plugins.registry import DEFENSES


def load_callable(ref: str) -> Callable[..., Any]:
    """``package.module:callable`` or ``path/to/file.py:callable`` -> the callable."""
    if not isinstance(ref, str) or ref.count(":") < 1:
        raise UserInputError(f"--arch must be 'module:callable' or 'file.py:callable'; got {ref!r}.")
    mod_ref, _, attr = ref.rpartition(":")
    if not mod_ref or not attr:
        raise UserInputError(f"--arch must be 'module:callable' or 'file.py:callable'; got {ref!r}.")
    try:
        if mod_ref.endswith(".py"):
            path = Path(mod_ref)
            if not path.is_file():
                raise UserInputError(f"--arch: the file {mod_ref!r} does not exist.")
            name = f"robustbench_er_arch_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None:
                    raise UserInputError(f"--arch: {mod_ref!r} is not a Python file.")
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules[name] = module
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # as `python -m` would find it
            module = importlib.import_module(mod_ref)
    except UserInputError:
        raise
    except (Exception, SystemExit) as exc:
        raise UserInputError(f"--arch: cannot import {mod_ref!r}: {type(exc).__name__}: {exc}".rstrip(".") + ".") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserInputError(f"--arch: {mod_ref!r} has no callable {attr!r}.")
    return fn


def build_network(ref: str) -> nn.Module:
    """Call the architecture callable (no arguments) and check it returns an ``nn.Module``;
    ``robustbench:<dataset>/<norm>/<ModelName>`` builds a RobustBench zoo architecture."""

    if zoo.is_zoo(ref):
        dataset, norm, model = ref[len(zoo.PREFIX):].split("/", 2)
        return zoo.zoo_architecture(model, dataset, norm)
    fn = load_callable(ref)
    try:
        net = fn()
    except Exception as exc:
        raise UserInputError(f"--arch: {ref!r} raised {type(exc).__name__}: {exc}".rstrip(".") + ".") from None
    if not isinstance(net, nn.Module):
        raise UserInputError(f"--arch: {ref!r} returned a {type(net).__name__}, not a torch.nn.Module.")
    return net


def import_model(*, arch: str, weights: str | Path, dataset: str, name: str, out: str | Path,
                 mean: Sequence[float] = (), std: Sequence[float] = (), randomized: bool = False,
                 differentiable: bool = True, output: str = "logits",
                 data_dir: str | None = None) -> tuple[Path, str, float]:
    """Build ``arch``, load ``weights`` into it and write a checkpoint under ``out/checkpoints``.

    Returns (folder, how the weights were read, clean accuracy on the test split). The folder is
    named after the model's identity (a hash of the loaded weights and the architecture).
    """

    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\,()"):
        raise UserInputError(f"--name must be a plain non-empty string; got {name!r}.")
    if name in DEFENSES:
        raise UserInputError(f"--name {name!r} is a registered defense; give your model another name.")
    check_output_folder(out, "--out")
    data = load_dataset(dataset, data_dir, False)
    if len(mean) != len(std) or len(mean) not in (0, 1, data.spec.shape[0]):
        raise UserInputError(f"--normalize needs one mean and one std per channel ({data.spec.shape[0]}).")
    net = build_network(arch)
    state, how = read_state_dict(weights)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise UserInputError(f"--weights: they do not fit {arch!r}: {str(exc).splitlines()[0]}") from None
    given = given_model(name, data.spec, net, mean=mean, std=std, randomized=randomized,
                        differentiable=differentiable, output=output)
    check_model_output(given.model, data.x_test[:4])
    arch_ref = arch
    mod_ref, _, attr = arch.rpartition(":")
    if mod_ref.endswith(".py"):
        arch_ref = f"{Path(mod_ref).resolve()}:{attr}"  # found again from any working folder
    folder = Path(out) / "checkpoints" / f"{given.key}-{data.spec.name}-{given.identity}"
    save_given(given, folder, architecture=arch_ref, imported_from=str(Path(weights).resolve()),
               weights_read_with=how)
    model = given.model
    return folder, how, accuracy(model, data.x_test, data.y_test)


@contextlib.contextmanager
def registered_checkpoint(folder: str | Path) -> Iterator[str | None]:
    """If ``folder`` holds an imported model (its ``meta.json`` names an ``architecture``), enter
    it as a one-off defense for the block and yield its name; otherwise yield None."""

    meta = read_meta(Path(folder))
    arch = meta.get("architecture")
    if not arch:
        yield None
        return
    declared = meta.get("declared") or {}
    unknown = set(declared) - set(DECLARATIONS)
    if not isinstance(declared, dict) or unknown:
        raise UserInputError(f"Checkpoint {str(folder)!r}: unknown declarations {sorted(unknown)} in meta.json.")
    classes = meta.get("classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise UserInputError(f"Checkpoint {str(folder)!r}: meta.json of an imported model needs 'classes' (an integer >= 2).")
    net = build_network(str(arch))
    cls = given_defense(meta["defense"], meta["dataset"], net, classes=classes,
                        mean=declared.get("mean", ()), std=declared.get("std", ()),
                        randomized=bool(declared.get("randomized", False)),
                        differentiable=bool(declared.get("differentiable", True)),
                        output=str(declared.get("output", "logits")))
    with registered(meta["defense"], cls, origin=f"imported model {folder}"):
        yield meta["defense"]
