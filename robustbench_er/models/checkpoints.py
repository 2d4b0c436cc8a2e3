"""Checkpoint I/O and hashing: a checkpoint is ``model.safetensors`` plus ``meta.json``, both
written atomically; nothing is ever unpickled. :func:`spec_hash` names a trained checkpoint's
folder after its training spec; :func:`model_identity` is the hash of the weights actually
loaded and the architecture, the key results are stored under.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.files import atomic_path, write_text_atomic
from robustbench_er.core.identity import identity_params, with_version
from robustbench_er.core.version import __version__
from robustbench_er.models.defended import DefendedModel

log = logging.getLogger(__name__)

def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: the text a spec is hashed by."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def spec_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def checkpoint_spec(defense: str, dataset: str, profile: str, hp: Any, seed: int,
                    version: int = 0) -> dict[str, Any]:
    """A training job's identity (its checkpoint folder's hash): hyper-parameters declared with
    ``added_field`` only when set, the defense's behaviour ``version`` when nonzero."""
    return with_version({"defense": defense, "dataset": dataset, "profile": profile,
                         "hparams": identity_params(hp), "seed": int(seed)}, version)


def _weights_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def versions() -> dict[str, str]:
    import numpy


    return {"robustbench_er": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def save_checkpoint(folder: Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``meta.json`` (with the weights' hash) into ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = dict(meta, weights_sha256=_weights_hash(state), versions=versions())
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_text_atomic(folder / "meta.json", json.dumps(meta, indent=2, sort_keys=True, default=str))
    return folder


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read safetensors weights; refuse anything else (never unpickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Weights file {str(path)!r} does not exist.")
    head = path.read_bytes()[:8]
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise UserInputError(f"{str(path)!r} is a pickle/torch.save file; only safetensors weights are read (never unpickled).")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserInputError(f"{str(path)!r} is not a valid safetensors file ({exc}).") from exc


class CheckpointMeta(BaseModel):
    """The fields of ``meta.json`` the harness reads; others are kept as they are."""

    model_config = ConfigDict(extra="allow")

    defense: str
    dataset: str
    weights_sha256: str
    hparams: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None
    clean_acc: float | None = None
    spec: dict[str, Any] | None = None


def read_meta(folder: Path) -> dict[str, Any]:
    """A checkpoint folder's ``meta.json`` (checked against :class:`CheckpointMeta`), with a
    clear error when it is missing, broken or lacks a field."""
    meta_path = Path(folder) / "meta.json"
    if not meta_path.is_file():
        raise UserInputError(f"Checkpoint {str(folder)!r} has no meta.json.")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"Checkpoint metadata {str(meta_path)!r} is not valid JSON.") from exc
    if not isinstance(meta, dict):
        raise UserInputError(f"Checkpoint metadata {str(meta_path)!r} must be a JSON object, not a {type(meta).__name__}.")
    try:
        CheckpointMeta.model_validate(meta)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        what = "is missing" if err["type"] == "missing" else f"is invalid ({err['msg']}, got {err['input']!r})"
        raise UserInputError(f"Checkpoint metadata {str(meta_path)!r}: the field {field!r} {what}.") from None
    return dict(meta)


def load_checkpoint(folder: Path, model: nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` after checking them against the metadata's hash."""
    folder = Path(folder)
    meta = read_meta(folder)
    state = load_weights(folder / "model.safetensors")
    if _weights_hash(state) != meta.get("weights_sha256"):
        raise UserInputError(f"Checkpoint {str(folder)!r}: the weights do not match the hash in its metadata.")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserInputError(f"Checkpoint {str(folder)!r} does not fit the {meta.get('defense')!r} network: {str(exc).splitlines()[0]}") from exc
    return meta


#: the built-in plugin folders were top-level packages in 0.1 (``defenses._er_nets``); they now
#: install under ``robustbench_er.``. Identities keep 0.1's module names, so stored results stay found.
_PLUGIN_PACKAGES = tuple(f"robustbench_er.{folder}." for folder in ("defenses", "attacks", "detectors", "analyses"))


def _keyed_module(module: str) -> str:
    """The module name a network's class enters an identity with (0.1's, for the built-in plugins)."""
    return module.removeprefix("robustbench_er.") if module.startswith(_PLUGIN_PACKAGES) else module


def model_identity(defense_name: str, model: DefendedModel, hp: Any) -> str:
    """The identity of a model as it runs: what a sweep keys its results on.

    A hash of the weights and buffers actually in ``model`` (names, dtypes, shapes, bytes), the
    network's architecture (its classes and layer settings as ``repr`` shows them, and the
    wrapper's normalisation, output kind and passes), the defense and the hyper-parameters the
    network was built with (they also set behaviour outside the weights, e.g. RSE's noise).
    It is computed from the model object, never read from a checkpoint's metadata: two
    checkpoints whose weights differ never share results, whatever their ``meta.json`` says,
    and the same weights reloaded give the same identity.
    """
    state = {**dict(model.named_buffers()), **model.state_dict()}
    wrapper = {"classes": model.classes, "randomized": model.randomized, "differentiable": model.differentiable,
               "output": model.output, "n_passes": model.n_passes,
               "mean": None if model.mean is None else model.mean.flatten().tolist(),
               "std": None if model.std is None else model.std.flatten().tolist()}
    hparams = dataclasses.asdict(hp) if dataclasses.is_dataclass(hp) and not isinstance(hp, type) else hp
    return spec_hash({"defense": defense_name, "net": f"{_keyed_module(type(model.net).__module__)}.{type(model.net).__qualname__}",
                      "architecture": repr(model.net), "wrapper": wrapper, "hparams": hparams,
                      "weights": _weights_hash(state)})
