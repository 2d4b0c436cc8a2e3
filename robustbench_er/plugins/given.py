"""Models given as modules rather than trained by a plugin: a one-off defense around a user's network
(the Python API's benchmark(model=...), import-model, the RobustBench zoo), its checkpoint
folder, and state dicts read without unpickling."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from robustbench_er.core.errors import UserInputError
from robustbench_er.models.checkpoints import model_identity, save_checkpoint
from robustbench_er.models.defended import OUTPUTS, DefendedModel
from robustbench_er.models.hparams import HParams
from robustbench_er.plugins.defense import Defense
from robustbench_er.plugins.registry import DEFENSES, normalize

#: what ``meta.json`` of an imported model records under ``declared``
DECLARATIONS = ("mean", "std", "randomized", "differentiable", "output")


def given_defense(name: str, dataset: str, net: nn.Module, *, classes: int, mean: Sequence[float] = (),
                  std: Sequence[float] = (), randomized: bool = False, differentiable: bool = True,
                  output: str = "logits") -> Any:
    """A one-off defense class for a network built elsewhere: ``build`` returns a fresh copy of
    ``net`` (the weights come from the checkpoint), ``wrap`` applies the model's own declarations
    instead of the dataset's normalisation. It trains nothing."""

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

    return save_checkpoint(folder, given.model, {
        "defense": given.key, "dataset": given.dataset, "profile": "quick", "hparams": {}, "classes": given.classes,
        "declared": given.declared, "id": given.identity, "randomized": given.declared["randomized"], **provenance})


@contextlib.contextmanager
def registered(name: str, cls: Any, origin: str) -> Iterator[None]:
    """Register ``cls`` as defense ``name`` for the block (a name a real defense has is refused)."""

    if name in DEFENSES:
        raise UserInputError(f"name {name!r} is a registered defense; give your model another name.")
    DEFENSES.register(name, cls, origin=origin)
    cls.name = normalize(name)
    try:
        yield
    finally:
        DEFENSES.unregister(name)


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
