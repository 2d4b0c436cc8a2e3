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
import copy
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from robustbench_er.core.errors import UserInputError
from robustbench_er.models.defended import OUTPUTS, DefendedModel

#: what ``meta.json`` of an imported model records under ``declared``
DECLARATIONS = ("mean", "std", "randomized", "differentiable", "output")


def given_defense(name: str, dataset: str, net: nn.Module, *, classes: int, mean: Sequence[float] = (),
                  std: Sequence[float] = (), randomized: bool = False, differentiable: bool = True,
                  output: str = "logits") -> Any:
    """A one-off defense class for a network built elsewhere: ``build`` returns a fresh copy of
    ``net`` (the weights come from the checkpoint), ``wrap`` applies the model's own declarations
    instead of the dataset's normalisation. It trains nothing."""
    from robustbench_er.models.hparams import HParams
    from robustbench_er.plugins.defense import Defense

    if output not in OUTPUTS:
        raise UserInputError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}.")
    template = copy.deepcopy(net).cpu()
    mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    class GivenModel(Defense):
        presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {dataset: {"quick": {}, "paper": {}}}
        trainable = False

        def build(self, spec: Any, hp: Any) -> nn.Module:
            return copy.deepcopy(template)

        def wrap(self, net: nn.Module, spec: Any, hp: Any) -> DefendedModel:
            return DefendedModel(net, classes, mean=mean_t, std=std_t, randomized=randomized,
                                 differentiable=differentiable, output=output, n_passes=1)

    GivenModel.HParams = HParams
    GivenModel.randomized = bool(randomized)
    GivenModel.differentiable = bool(differentiable)
    GivenModel.output = output
    GivenModel.__name__ = GivenModel.__qualname__ = f"GivenModel[{name}]"
    return GivenModel


@dataclass
class Given:
    """A network built elsewhere, entered as a one-off defense and wrapped as it declares."""

    key: str
    dataset: str
    classes: int
    cls: Any
    model: DefendedModel
    identity: str
    declared: dict[str, Any]


def given_model(name: str, spec: Any, net: nn.Module, *, mean: Sequence[float] = (), std: Sequence[float] = (),
                randomized: bool = False, differentiable: bool = True, output: str = "logits") -> Given:
    """The one-off defense of ``net`` (:func:`given_defense`), the wrapped model and its identity
    (a hash of the weights and the architecture): what ``benchmark()``, ``import-model`` and the
    RobustBench zoo share before writing a checkpoint with :func:`save_given`."""
    from robustbench_er.models.checkpoints import model_identity
    from robustbench_er.models.hparams import HParams
    from robustbench_er.plugins.registry import normalize

    key = normalize(name)
    cls = given_defense(key, spec.name, net, classes=spec.classes, mean=mean, std=std, randomized=randomized,
                        differentiable=differentiable, output=output)
    model = cls().wrap(cls().build(spec, None), spec, None).eval()
    declared = {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "randomized": bool(randomized),
                "differentiable": bool(differentiable), "output": output}
    return Given(key, spec.name, spec.classes, cls, model, model_identity(key, model, HParams()), declared)


def save_given(given: Given, folder: Path, **provenance: Any) -> Path:
    """Write ``given`` as a checkpoint folder; ``provenance`` (where it came from, its
    ``architecture`` when it can be rebuilt) joins the metadata every such checkpoint has."""
    from robustbench_er.models.checkpoints import save_checkpoint

    return save_checkpoint(folder, given.model, {
        "defense": given.key, "dataset": given.dataset, "profile": "quick", "hparams": {}, "classes": given.classes,
        "declared": given.declared, "id": given.identity, "randomized": given.declared["randomized"], **provenance})


@contextlib.contextmanager
def registered(name: str, cls: Any, origin: str) -> Iterator[None]:
    """Register ``cls`` as defense ``name`` for the block (a name a real defense has is refused)."""
    from robustbench_er.plugins.registry import DEFENSES, normalize

    if name in DEFENSES:
        raise UserInputError(f"name {name!r} is a registered defense; give your model another name.")
    DEFENSES.register(name, cls, origin=origin)
    cls.name = normalize(name)
    try:
        yield
    finally:
        DEFENSES.unregister(name)


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
    from robustbench_er.jobs import zoo

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


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """A weights file as a state dict, and how it was read.

    ``.safetensors`` files are read with safetensors. Anything else is read with
    ``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary
    objects; a file that needs full unpickling (a whole pickled model, say) is refused. A dict
    holding the weights under ``state_dict`` or ``model`` (common in training checkpoints) is
    unwrapped, and a ``module.`` prefix (from DataParallel) is removed.
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"--weights: the file {str(path)!r} does not exist.")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(p))
        except Exception as exc:
            raise UserInputError(f"--weights: {str(path)!r} is not a readable safetensors file ({exc}).") from None
        how = "safetensors"
    else:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserInputError(
                f"--weights: {str(path)!r} could not be read as tensors only (torch.load with weights_only=True):"
                f" {first.rstrip('.')}. Save a state dict (torch.save(model.state_dict(), path)) or safetensors;"
                " full pickles are never loaded.") from None
        how = "torch.load(weights_only=True)"
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            how += f", unwrapped from the key {key!r}"
            break
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UserInputError(f"--weights: {str(path)!r} does not hold a state dict (names -> tensors).")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        how += ", 'module.' prefix removed"
    return state, how


def import_model(*, arch: str, weights: str | Path, dataset: str, name: str, out: str | Path,
                 mean: Sequence[float] = (), std: Sequence[float] = (), randomized: bool = False,
                 differentiable: bool = True, output: str = "logits",
                 data_dir: str | None = None) -> tuple[Path, str, float]:
    """Build ``arch``, load ``weights`` into it and write a checkpoint under ``out/checkpoints``.

    Returns (folder, how the weights were read, clean accuracy on the test split). The folder is
    named after the model's identity (a hash of the loaded weights and the architecture).
    """
    from robustbench_er.data.datasets import load_dataset
    from robustbench_er.inputs.config import check_output_folder
    from robustbench_er.models.defended import check_model_output
    from robustbench_er.models.training import accuracy
    from robustbench_er.plugins.registry import DEFENSES

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
    from robustbench_er.models.checkpoints import read_meta

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
