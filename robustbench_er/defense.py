"""The defense contract, the defended-model wrapper and checkpoints.

A defense plugin is a class registered with ``@register_defense("name")``::

    @register_defense("mine")
    class Mine(Defense):
        HParams = MineHParams              # a dataclass subclassing defense.HParams
        presets = {"mnist5k": {"quick": {...}, "paper": {...}}}
        def build(self, spec, hp): ...     # -> nn.Module taking normalised images
        def train(self, model, data, hp, seed, progress): ...   # -> dict report

``build`` returns a network on normalised images, ``(x - spec.mean) / spec.std`` (x itself when
the dataset has no mean). The harness wraps it in a :class:`DefendedModel` (normalisation
inside, ``predict(x) -> logits`` for x in [0, 1], optional ``embed``) as the plugin's class
attributes declare (``output``, ``randomized``, ``differentiable``, ``bpda``), trains it, and saves it as a
checkpoint: weights in safetensors plus JSON metadata. A trained checkpoint's folder is named by
the hash of its spec (defense, dataset, profile, hyper-parameters, seed), so a sweep that asks
for the same spec reuses it instead of retraining. The results of a model are keyed on
:func:`model_identity`, a hash of the weights actually loaded and the architecture, never on
what the metadata claims. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from robustbench_er.data import Dataset, DatasetSpec
from robustbench_er.errors import UserInputError
from robustbench_er.files import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

PROFILES = ("quick", "paper")
#: what a defense's network returns: logits, or probabilities (turned into log-probabilities)
OUTPUTS = ("logits", "probs")


@dataclass
class HParams:
    """Hyper-parameters every defense has; plugins subclass and add their own."""

    backbone: str = "small_cnn"
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd | adam
    momentum: float = 0.9
    weight_decay: float = 0.0
    #: cap on training images (0 = all); the quick profile uses it to stay CPU-sized
    train_samples: int = 0

    def validate(self) -> None:
        """Check the fields every defense has; subclasses add their own checks.

        :meth:`Defense.hparams` runs these checks even when a subclass's ``validate`` does not
        call ``super().validate()``.
        """
        HParams.check_common(self)

    def check_common(self) -> None:
        if self.epochs < 1:
            raise UserInputError(f"Hyper-parameter 'epochs' must be an integer >= 1; got {self.epochs}.")
        if self.batch_size < 1:
            raise UserInputError(f"Hyper-parameter 'batch_size' must be an integer >= 1; got {self.batch_size}.")
        if not self.lr > 0:
            raise UserInputError(f"Hyper-parameter 'lr' must be > 0; got {self.lr}.")
        if self.train_samples < 0:
            raise UserInputError(f"Hyper-parameter 'train_samples' must be >= 0 (0 = all); got {self.train_samples}.")
        if self.weight_decay < 0 or self.momentum < 0:
            raise UserInputError("Hyper-parameters 'weight_decay' and 'momentum' must be >= 0.")
        if self.optimizer not in ("sgd", "adam"):
            raise UserInputError(f"Hyper-parameter 'optimizer' must be 'sgd' or 'adam'; got {self.optimizer!r}.")


@dataclass
class AdversarialHParams(HParams):
    """Hyper-parameters of defenses that train on PGD-style examples.

    ``warmup_epochs`` clean epochs, then eps grows linearly to ``eps`` over ``ramp_epochs``
    (both 0 in the papers; the ``quick`` presets use them so a small net trained for a few
    epochs on a CPU still learns).
    """

    eps: float = 0.3
    attack_steps: int = 40
    step_size: float = 0.01
    #: clean epochs before adversarial training starts (0 in the papers)
    warmup_epochs: int = 0
    #: epochs over which eps grows linearly to ``eps`` after the warm-up (0 = none, the papers)
    ramp_epochs: int = 0

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.eps <= 1:
            raise UserInputError(f"Training eps must be in [0, 1] (images are in [0, 1]); got {self.eps}.")
        if self.attack_steps < 1:
            raise UserInputError(f"Training attacks need at least one step; got {self.attack_steps}.")
        if self.step_size <= 0:
            raise UserInputError(f"The training attack's step_size must be positive; got {self.step_size}.")
        if self.warmup_epochs < 0 or self.ramp_epochs < 0:
            raise UserInputError("warmup_epochs and ramp_epochs must be non-negative.")

    def eps_fraction(self, epoch: int) -> float:
        """Share of ``eps`` used at ``epoch``: 0 during the warm-up, then the linear ramp."""
        if epoch < self.warmup_epochs:
            return 0.0
        return min(1.0, (epoch - self.warmup_epochs + 1) / self.ramp_epochs) if self.ramp_epochs else 1.0


class DefendedModel(nn.Module):
    """Gives any network the harness's predict interface.

    ``predict(x)`` takes images in [0, 1] and returns logits N x classes; normalisation by
    ``mean``/``std`` happens inside. The adapter accepts networks that return a tuple (first
    element used), a dict (key ``logits``) or probabilities (declare ``output="probs"``: they
    are turned into log-probabilities, which have the same argmax and usable gradients).
    ``randomized`` declares a stochastic forward (attacks then use EOT and predictions a
    majority vote over ``n_passes``); ``differentiable=False`` tells gradient attacks to stay away
    unless ``bpda=True``: the network then has ``forward_bpda(x)``, a forward with the same
    outputs as ``forward`` whose gradients are a differentiable approximation of the defense
    (BPDA, Athalye et al. 2018). Gradient attacks run on :meth:`bpda_model`; ``predict`` and
    ``predict_label`` (and so verification) always use the real forward.
    """

    #: normalisation buffers (registered in ``__init__``), None when no ``mean`` is given
    mean: torch.Tensor | None
    std: torch.Tensor | None

    def __init__(self, net: nn.Module, classes: int, *, mean: tuple[float, ...] = (),
                 std: tuple[float, ...] = (), randomized: bool = False, differentiable: bool = True,
                 output: str = "logits", n_passes: int = 1, bpda: bool = False) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise UserInputError(f"output must be 'logits' or 'probs', not {output!r}.")
        if bpda and not callable(getattr(net, "forward_bpda", None)):
            raise UserInputError("A defense declared bpda=True must give its network a forward_bpda(x) method.")
        self.net = net
        self.classes = classes
        self.randomized = randomized
        self.differentiable = differentiable
        self.bpda = bpda
        self.output = output
        self.n_passes = max(1, int(n_passes)) if randomized else 1
        #: True on the twin :meth:`bpda_model` returns: ``predict`` goes through ``forward_bpda``
        self.approximate_gradients = False
        self._norm_args = (tuple(mean), tuple(std))
        if mean:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        else:
            self.mean = None
            self.std = None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        return (x - self.mean) / self.std

    @staticmethod
    def _unpack(out: Any) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            return out[0]
        if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
            return out["logits"]
        raise UserInputError("The model must return a tensor, a tuple whose first item is the logits, or a dict with 'logits'.")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalize(x)
        if self.approximate_gradients:
            fn = cast(Callable[[torch.Tensor], Any], self.net.forward_bpda)
            out = self._unpack(fn(z))
        else:
            out = self._unpack(self.net(z))
        if self.output == "probs":
            out = torch.log(out.clamp_min(1e-12))
        return out

    def bpda_model(self) -> DefendedModel:
        """The model gradient attacks run on: a twin sharing this network whose ``predict``
        uses ``forward_bpda`` (the defense's outputs, the approximation's gradients), or ``self``
        when the defense declares no approximation."""
        if not self.bpda:
            return self
        mean, std = self._norm_args
        twin = DefendedModel(self.net, self.classes, mean=mean, std=std, randomized=self.randomized,
                             differentiable=True, output=self.output, n_passes=self.n_passes, bpda=True)
        twin.approximate_gradients = True
        twin.training = self.training
        return twin.to(device_of(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)

    @property
    def has_embed(self) -> bool:
        return hasattr(self.net, "embed") or hasattr(self.net, "features")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The network's embedding (``net.embed`` or ``net.features``) for detectors and analyses."""
        z = self.normalize(x)
        for name in ("embed", "features"):
            if hasattr(self.net, name):
                fn = cast(Callable[[torch.Tensor], torch.Tensor], getattr(self.net, name))
                return fn(z)
        raise UserInputError("This defense exposes no embedding (no embed() or features() on its network).")

    @torch.no_grad()
    def predict_label(self, x: torch.Tensor, n_passes: int | None = None, batch_size: int = 500) -> torch.Tensor:
        """Predicted labels; a majority vote over ``n_passes`` forward passes if randomized."""
        n = (n_passes or self.n_passes) if self.randomized else 1
        labels = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            if n == 1:
                labels.append(self.predict(xb).argmax(1))
            else:
                votes = torch.zeros(len(xb), self.classes, device=xb.device)
                for _ in range(n):
                    votes += F.one_hot(self.predict(xb).argmax(1), self.classes).float()
                labels.append(votes.argmax(1))
        return torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64, device=x.device)


def check_model_output(model: DefendedModel, x: torch.Tensor) -> None:
    """Raise a clear error if the model's output is not N x classes finite logits."""
    with torch.no_grad():
        out = model.predict(x[:4])
    if out.ndim != 2 or out.shape != (len(x[:4]), model.classes):
        raise UserInputError(
            f"The model returned shape {tuple(out.shape)} for {len(x[:4])} images; expected N x {model.classes} logits."
        )
    if not torch.isfinite(out).all():
        raise UserInputError("The model returned NaN or infinite logits.")


class Defense:
    """Base class of defense plugins. Subclasses set ``HParams``, ``presets`` and implement
    ``build`` (a network on normalised images) and ``train``. Plain class attributes declare
    how the network behaves; :meth:`wrap` passes them to :class:`DefendedModel`."""

    name: ClassVar[str] = ""
    HParams: ClassVar[type[HParams]] = HParams
    #: {dataset: {profile: {field: value}}}
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    #: "logits", or "probs" for a network that returns probabilities (the wrapper takes their log)
    output: ClassVar[str] = "logits"
    #: a stochastic forward (attacks use EOT, predictions are majority votes)
    randomized: ClassVar[bool] = False
    #: False: gradients through the forward are meaningless (gradient attacks refused unless bpda)
    differentiable: ClassVar[bool] = True
    #: the network has ``forward_bpda``: gradient attacks use its gradients (BPDA)
    bpda: ClassVar[bool] = False
    #: a defense that only loads given weights (no training) sets this to False
    trainable: ClassVar[bool] = True

    def build(self, spec: DatasetSpec, hp: Any) -> nn.Module:
        raise NotImplementedError

    def train(self, model: DefendedModel, data: Dataset, hp: Any, seed: int,
              progress: bool = True) -> dict[str, Any]:
        raise NotImplementedError

    def wrap(self, net: nn.Module, spec: DatasetSpec, hp: Any) -> DefendedModel:
        """Wrap the built network as the class attributes declare (``n_passes`` from ``hp``)."""
        return DefendedModel(net, spec.classes, mean=spec.mean, std=spec.std,
                             randomized=self.randomized, differentiable=self.differentiable,
                             output=self.output, n_passes=int(getattr(hp, "n_passes", 1)), bpda=self.bpda)

    # ---- hyper-parameters -------------------------------------------------------------------
    @classmethod
    def hparams(cls, dataset: str, profile: str = "quick", overrides: dict[str, Any] | None = None) -> Any:
        """The preset for ``dataset`` and ``profile``, with ``overrides`` applied and checked."""
        if profile not in PROFILES:
            raise UserInputError(f"Unknown profile {profile!r}; use one of {', '.join(PROFILES)}.")
        if dataset not in cls.presets:
            raise UserInputError(
                f"Defense {cls.name!r} has no preset for dataset {dataset!r}; presets exist for "
                f"{', '.join(sorted(cls.presets)) or 'no dataset'}."
            )
        per = cls.presets[dataset]
        if profile not in per:
            raise UserInputError(
                f"Defense {cls.name!r} has no {profile!r} preset for {dataset!r}; it has {', '.join(sorted(per))}."
            )
        from robustbench_er.config import check_dataclass_values

        values = dict(per[profile])
        fields = {f.name: f for f in dataclasses.fields(cls.HParams)}
        for k, v in (overrides or {}).items():
            if k not in fields:
                raise UserInputError(
                    f"Defense {cls.name!r} has no hyper-parameter {k!r}; it has {', '.join(sorted(fields))}."
                )
            values[k] = v
        # typed overrides: ints must be ints (epochs=1.5 is refused), floats accept ints, bools strict
        check_dataclass_values(cls.HParams, overrides or {}, "Hyper-parameter", cls.name)
        try:
            hp = cls.HParams(**values)
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"Bad hyper-parameters for defense {cls.name!r}: {exc}.") from exc
        HParams.check_common(hp)  # every defense, whatever its own validate() does
        hp.validate()
        return hp


def validate_defense_class(name: str, obj: Any) -> None:
    """Called at registration: the plugin must follow the contract."""
    if not (isinstance(obj, type) and issubclass(obj, Defense)):
        raise TypeError(f"Defense {name!r} must be a subclass of robustbench_er.defense.Defense.")
    if not (dataclasses.is_dataclass(obj.HParams) and issubclass(obj.HParams, HParams)):
        raise TypeError(f"Defense {name!r}: HParams must be a dataclass subclassing defense.HParams.")
    if obj.build is Defense.build:
        raise TypeError(f"Defense {name!r} must implement build(spec, hp).")
    if obj.output not in OUTPUTS:
        raise TypeError(f"Defense {name!r}: output must be one of {OUTPUTS}, not {obj.output!r}.")
    for flag in ("randomized", "differentiable", "bpda", "trainable"):
        if not isinstance(getattr(obj, flag), bool):
            raise TypeError(f"Defense {name!r}: {flag} must be True or False.")
    if obj.trainable and obj.train is Defense.train:
        raise TypeError(f"Defense {name!r} must implement train(model, data, hp, seed, progress).")
    fields = {f.name for f in dataclasses.fields(obj.HParams)}
    for ds, per in obj.presets.items():
        for prof, values in per.items():
            if prof not in PROFILES:
                raise TypeError(f"Defense {name!r}: preset {ds}/{prof} is not a known profile ({PROFILES}).")
            unknown = set(values) - fields
            if unknown:
                raise TypeError(f"Defense {name!r}: preset {ds}/{prof} sets unknown fields {sorted(unknown)}.")


# ---- training helpers -----------------------------------------------------------------------

def make_optimizer(params: Any, hp: HParams, lr: float | None = None) -> torch.optim.Optimizer:
    lr = hp.lr if lr is None else lr
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=hp.weight_decay)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    raise UserInputError(f"Unknown optimizer {hp.optimizer!r}; use 'sgd' or 'adam'.")


def training_batches(data: Dataset, hp: HParams, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    n = len(data.y_train)
    if hp.train_samples and hp.train_samples < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: hp.train_samples]
    else:
        idx = torch.arange(n)
    idx = idx[torch.randperm(len(idx), generator=g)]
    for i in range(0, len(idx), hp.batch_size):
        b = idx[i:i + hp.batch_size]
        yield data.x_train[b], data.y_train[b]


def device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def fit(model: DefendedModel, data: Dataset, hp: HParams, seed: int, progress: bool,
        step: Callable[[torch.Tensor, torch.Tensor, int], dict[str, float]], desc: str = "train") -> dict[str, Any]:
    """The shared epoch loop: shuffling, device transfer, tqdm, loss history, timing.

    ``step(x, y, epoch)`` does one update on a batch and returns scalar losses to log.
    """
    from tqdm.auto import tqdm

    dev = device_of(model)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    n_batches = -(-min(len(data.y_train), hp.train_samples or len(data.y_train)) // hp.batch_size)
    bar = tqdm(total=hp.epochs * n_batches, desc=desc, disable=not progress, leave=False)
    for epoch in range(hp.epochs):
        sums: dict[str, float] = {}
        count = 0
        for xb, yb in training_batches(data, hp, seed, epoch):
            model.train()
            losses = step(xb.to(dev), yb.to(dev), epoch)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            bar.update(1)
            bar.set_postfix({k: f"{v / count:.3f}" for k, v in sums.items()})
        history.append({"epoch": epoch, **{k: v / max(count, 1) for k, v in sums.items()}})
        log.info("%s epoch %d: %s", desc, epoch, history[-1])
    bar.close()
    model.eval()
    return {"history": history, "train_seconds": time.perf_counter() - t0}


@torch.no_grad()
def accuracy(model: DefendedModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    dev = device_of(model)
    pred = model.predict_label(x.to(dev), batch_size=batch_size)
    return float((pred.cpu() == y).float().mean()) if len(y) else float("nan")


# ---- checkpoints ----------------------------------------------------------------------------

def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def spec_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()[:length]


def checkpoint_spec(defense: str, dataset: str, profile: str, hp: Any, seed: int) -> dict[str, Any]:
    return {"defense": defense, "dataset": dataset, "profile": profile,
            "hparams": dataclasses.asdict(hp), "seed": int(seed)}


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

    from robustbench_er import __version__

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
    return spec_hash({"defense": defense_name, "net": f"{type(model.net).__module__}.{type(model.net).__qualname__}",
                      "architecture": repr(model.net), "wrapper": wrapper, "hparams": hparams,
                      "weights": _weights_hash(state)})


def _load_given(cls: type[Defense], data: Dataset, folder: Path, device: torch.device | str) -> Trained:
    """Load a checkpoint folder the user named (``--checkpoint``), built from its own metadata.

    Its identity and clean accuracy are measured on the loaded weights; the metadata's ``id``
    and ``clean_acc`` (which may be missing, or belong to another model) are not used.
    """
    meta = read_meta(folder)
    if meta.get("defense") != cls.name:
        raise UserInputError(f"Checkpoint {str(folder)!r} holds defense {meta.get('defense')!r}, not {cls.name!r}.")
    if meta.get("dataset") != data.spec.name:
        raise UserInputError(
            f"Checkpoint {str(folder)!r} was trained on {meta.get('dataset')!r}; it cannot be evaluated on {data.spec.name!r}."
        )
    try:
        hp = cls.HParams(**meta.get("hparams", {}))
    except TypeError as exc:
        raise UserInputError(f"Checkpoint {str(folder)!r} has hyper-parameters {cls.name!r} does not know ({exc}).") from exc
    defense = cls()
    model = defense.wrap(defense.build(data.spec, hp), data.spec, hp)
    meta = load_checkpoint(folder, model)
    model.to(device).eval()
    return Trained(model, meta, folder, True, model_identity(cls.name, model, hp),
                   accuracy(model, data.x_test, data.y_test))


@dataclass
class Trained:
    """A trained or loaded model with its checkpoint.

    ``identity`` (:func:`model_identity`) and ``clean_acc`` (test-set accuracy) are measured
    on the model itself; ``meta`` is the checkpoint's metadata as written, for provenance.
    """

    model: DefendedModel
    meta: dict[str, Any]
    folder: Path
    reused: bool
    identity: str
    clean_acc: float


def build_model(defense_name: str, spec: DatasetSpec, hp: Any) -> DefendedModel:
    from robustbench_er.registry import get_defense

    d = get_defense(defense_name)()
    return d.wrap(d.build(spec, hp), spec, hp)


#: seconds between two looks at a checkpoint another process is training
TRAIN_POLL = 1.0


def get_or_train(defense_name: str, data: Dataset, *, profile: str = "quick", seed: int = 0,
                 out: Path = Path("results"), overrides: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu", progress: bool = True,
                 checkpoint_dir: Path | None = None) -> Trained:
    """Return the trained defense for this spec, reusing its checkpoint if one exists.

    A checkpoint is trained once even when several processes ask for it at the same time: a
    process trains only while it holds the lease on the checkpoint's folder name, kept in
    ``<out>/checkpoints/leases.sqlite`` with the same lease rules as the cells of a sweep
    (:class:`robustbench_er.store.LeaseTable`: claimed in one transaction, renewed by a
    background thread while training runs, released when the checkpoint is written). The
    others poll until the checkpoint appears, then load it; if the trainer crashes its lease
    expires and the next process to look trains instead. The lease lives beside the
    checkpoints rather than in the results store, which need not exist when training starts.
    """
    from robustbench_er.registry import get_defense
    from robustbench_er.store import LEASE_TTL, KeepAlive, LeaseTable, connect, lease_owner

    cls = get_defense(defense_name)
    if checkpoint_dir is not None:
        return _load_given(cls, data, Path(checkpoint_dir), device)
    hp = cls.hparams(data.spec.name, profile, overrides)
    spec = checkpoint_spec(cls.name, data.spec.name, profile, hp, seed)
    cid = spec_hash(spec)
    folder = Path(out) / "checkpoints" / f"{cls.name}-{data.spec.name}-{cid}"
    if (folder / "meta.json").is_file():
        return _load_cached(cls, data, hp, spec, seed, folder, device)
    if not cls.trainable:
        raise UserInputError(f"Defense {cls.name!r} cannot be trained; give it a checkpoint.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    lease_db = folder.parent / "leases.sqlite"
    owner = lease_owner()
    conn = connect(lease_db)
    try:
        leases = LeaseTable(conn)
        while not leases.claim(folder.name, owner, LEASE_TTL):
            log.info("another process is training %s; waiting", folder.name)
            time.sleep(TRAIN_POLL)
            if (folder / "meta.json").is_file():
                return _load_cached(cls, data, hp, spec, seed, folder, device)
        with KeepAlive(lease_db, folder.name, owner, LEASE_TTL):
            # the previous holder may have finished between our last look and the claim
            if (folder / "meta.json").is_file():
                return _load_cached(cls, data, hp, spec, seed, folder, device)
            return _train(cls, data, hp, spec, cid, profile, seed, folder, device, progress)
    finally:
        conn.close()


def _load_cached(cls: type[Defense], data: Dataset, hp: Any, spec: dict[str, Any], seed: int, folder: Path,
                 device: torch.device | str) -> Trained:
    """Load the harness's own checkpoint for ``spec``; its clean accuracy is measured again."""
    defense = cls()
    torch.manual_seed(seed)
    model = defense.wrap(defense.build(data.spec, hp), data.spec, hp)
    meta = load_checkpoint(folder, model)
    if meta.get("spec") != json.loads(_canonical(spec)):
        raise UserInputError(f"Checkpoint {str(folder)!r} was made for another spec than the one asked for.")
    if meta.get("dataset") != data.spec.name:
        raise UserInputError(
            f"Checkpoint {str(folder)!r} was trained on {meta.get('dataset')!r}, not {data.spec.name!r}."
        )
    model.to(device).eval()
    return Trained(model, meta, folder, True, model_identity(cls.name, model, hp),
                   accuracy(model, data.x_test, data.y_test))


def _train(cls: type[Defense], data: Dataset, hp: Any, spec: dict[str, Any], cid: str, profile: str, seed: int,
           folder: Path, device: torch.device | str, progress: bool) -> Trained:
    """Train the defense for ``spec`` and save its checkpoint into ``folder``."""
    defense = cls()
    torch.manual_seed(seed)
    model = defense.wrap(defense.build(data.spec, hp), data.spec, hp)
    model.to(device)
    torch.manual_seed(seed)
    report = defense.train(model, data, hp, seed, progress)
    model.eval()
    check_model_output(model, data.x_test[:4].to(device))
    clean = accuracy(model, data.x_test, data.y_test)
    meta = {"defense": cls.name, "dataset": data.spec.name, "profile": profile, "seed": seed,
            "hparams": dataclasses.asdict(hp), "spec": json.loads(_canonical(spec)), "id": cid,
            "clean_acc": clean, "train_seconds": report.get("train_seconds"),
            "history": report.get("history", []), "randomized": cls.randomized,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    save_checkpoint(folder, model, meta)
    log.info("trained %s on %s: clean accuracy %.4f", cls.name, data.spec.name, clean)
    return Trained(model, meta, folder, False, model_identity(cls.name, model, hp), clean)
