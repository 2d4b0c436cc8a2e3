"""The defended-model wrapper: :class:`DefendedModel` gives any network the harness's predict
interface (images in [0, 1] in, logits out, normalisation inside, majority votes for randomized
networks, an optional embedding), and :func:`check_model_output` checks what it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_er.core.errors import UserInputError

log = logging.getLogger(__name__)

#: what a defense's network returns: logits, or probabilities (turned into log-probabilities)
OUTPUTS = ("logits", "probs")

def device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


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
        #: the (mean, std) the model normalises its [0, 1] inputs with (empty: none)
        self.normalization = (tuple(mean), tuple(std))
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
        mean, std = self.normalization
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

    #: the activation modules :meth:`hidden` taps, in call order
    HIDDEN_TYPES = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus)

    def hidden(self, x: torch.Tensor, part: str | None = None) -> list[torch.Tensor]:
        """The outputs of the network's hidden layers for images ``x`` in [0, 1], in call order,
        each flattened to N x features: what detectors (KD, LID, ER2) and analyses read.

        The taps are the activation modules (:data:`HIDDEN_TYPES`) of the network, or of its
        submodule named ``part`` (``"encoder"`` for the ER family), recorded by forward hooks
        during one forward pass; a module applied twice is recorded twice. A network that wants
        other taps defines ``hidden_modules(part) -> list[nn.Module]``.
        """
        root: nn.Module = self.net
        if part is not None:
            if not isinstance(getattr(self.net, part, None), nn.Module):
                raise UserInputError(f"This defense's network has no part {part!r} to read hidden layers from.")
            root = getattr(self.net, part)
        pick = getattr(self.net, "hidden_modules", None)
        mods = list(pick(part)) if callable(pick) else [m for m in root.modules() if isinstance(m, self.HIDDEN_TYPES)]
        if not mods:
            raise UserInputError("This defense's network has no activation layers to read hidden outputs from.")
        outs: list[torch.Tensor] = []
        handles = [m.register_forward_hook(lambda _m, _i, o: outs.append(o.flatten(1))) for m in mods]
        try:
            self.predict(x)
        finally:
            for h in handles:
                h.remove()
        return outs

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


def first_call(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, what: str, classes: int | None = None) -> Any:
    """``fn(x)`` without gradients, where a model first meets some images: a network built for
    other images (3 channels on MNIST, say) is named with their shape rather than left to torch's
    bare matmul or convolution message."""
    try:
        with torch.no_grad():
            return fn(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        shape = " x ".join(str(s) for s in x.shape[1:])
        of = f"shape {shape}, {classes} classes" if classes is not None else f"shape {shape}"
        raise UserInputError(f"The model cannot take {what} ({of}): {type(exc).__name__}: {first}."
                             " Check that the network was built for these images.") from None


def check_model_output(model: DefendedModel, x: torch.Tensor) -> None:
    """Raise a clear error if the model cannot take the data's images (:func:`first_call`), or if
    its output is not N x classes finite logits; the first call of a model on a dataset goes
    through here."""
    out = first_call(model.predict, x[:4], "this dataset's images", model.classes)
    if out.ndim != 2 or out.shape != (len(x[:4]), model.classes):
        raise UserInputError(
            f"The model returned shape {tuple(out.shape)} for {len(x[:4])} images; expected N x {model.classes} logits."
        )
    if not torch.isfinite(out).all():
        raise UserInputError("The model returned NaN or infinite logits.")
