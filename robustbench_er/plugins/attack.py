"""The attack contracts and the runner's verification step.

An attack plugin is a class registered with ``@register_attack("name")``. It subclasses one of
the two typed kinds (as Foolbox 3 does):

* :class:`FixedEpsilonAttack` (``kind = "fixed"``): ``run(model, x, y, eps) -> x_adv`` for a
  per-sample epsilon tensor;
* :class:`MinimizationAttack` (``kind = "min"``): ``run(model, x, y) -> x_adv``, the smallest
  adversarial example it finds; one run gives the whole accuracy-vs-epsilon curve.

A plain :class:`Attack` subclass that sets ``kind`` itself is still accepted (the contract before
the typed kinds). It declares

* ``norms``: the threat models it supports (``Linf``, ``L2``, ``L1``);
* ``access``: ``"gradient"``, ``"score"``, ``"decision"`` (label only) or ``"none"`` (crafting
  makes no query to the target at all, e.g. a transfer attack working on a surrogate model; the
  runner's verification is its only contact with the target);
* ``single_step``: True for a one-step gradient attack (FGSM); the cross-attack checks treat
  every other gradient attack as iterative;
* ``Params``: a dataclass of its parameters (validated in ``__post_init__`` or ``validate``);
* ``needs_models``: the names of its string parameters that name another model (a defense, a
  variant ``NAME[key=value]`` or a checkpoint folder), e.g. a transfer attack's surrogate. The
  sweep checks them with every other input, trains or loads each model in its training step
  (the sweep's dataset, profile, seed and output folder) and hands them to the attack with
  :meth:`Attack.use_models` before planning; :meth:`Attack.describe` then records each model's
  identity, so it is part of the cell's.

Attacks never decide what counts: :func:`verify` re-checks every returned example (inside the
ball up to a float tolerance, inside [0, 1], misclassified by a fresh forward pass, a majority
over n passes for randomized models). An attack's own success flag is never trusted.

BPDA: a gradient attack on a defense that declares a differentiable approximation
(``DefendedModel.bpda``) runs on :meth:`Attack.target`, the model whose outputs are the real
defense's and whose gradients are the approximation's; :func:`verify` always uses the real model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.identity import added_field as added_field
from robustbench_er.core.identity import identity_params, with_version
from robustbench_er.core.norms import NORM_ATOL, NORM_RTOL, NORMS, perturbation_norm

# re-exported: plugins written against 0.1 import these from the attack contract
from robustbench_er.core.norms import canonical_norm as canonical_norm
from robustbench_er.core.norms import clip_to_ball as clip_to_ball
from robustbench_er.models.defended import DefendedModel

KINDS = ("fixed", "min")
#: what an attack needs from the target, most to least: gradients, scores (logits), decisions
#: (labels), none (no query: its examples are crafted elsewhere, e.g. on a surrogate model)
ACCESS = ("gradient", "score", "decision", "none")
@dataclass
class AttackParams:
    """Parameters every attack accepts."""

    #: gradient/EOT samples for randomized defenses (1 = plain gradients)
    eot: int = 1


class Attack:
    """Base class of attack plugins. Subclass :class:`FixedEpsilonAttack` or
    :class:`MinimizationAttack` and implement ``run``; a direct subclass must set ``kind``."""

    name: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = ("Linf",)
    kind: ClassVar[str] = "fixed"
    access: ClassVar[str] = "gradient"
    #: one gradient step (FGSM); the cross-attack checks compare it with the iterative attacks
    single_step: ClassVar[bool] = False
    Params: ClassVar[type[AttackParams]] = AttackParams
    #: a fixed-epsilon attack that accepts ``x_init`` (warm start from the last epsilon)
    warm_start: ClassVar[bool] = False
    #: in the per-sample grid search, attack each sample once more at its largest surviving eps
    #: (worth it for a single-restart attack such as PGD; an ensemble with its own restarts,
    #: such as AutoAttack, turns it off)
    search_retry: ClassVar[bool] = True
    #: the RobustBench model_info field this attack's robust accuracy fills (e.g. ``autoattack_acc``)
    leaderboard_field: ClassVar[str | None] = None
    #: string parameters naming another model the attack uses (a defense, variant or checkpoint
    #: folder); the sweep resolves them to trained models and calls :meth:`use_models`
    needs_models: ClassVar[tuple[str, ...]] = ()
    #: behaviour version: bump it when a change alters results (its cells are then recomputed);
    #: a new parameter whose default keeps the old behaviour is an ``added_field`` instead
    version: ClassVar[int] = 0
    #: the flags this attack is a remedy for, each with the parameters it then runs with: when a
    #: sweep's check raises such a flag, the sweep escalates (``robustbench_er.engine.escalate``)
    #: by running this attack as a further cascade stage on the points still standing
    remedies: ClassVar[dict[str, dict[str, Any]]] = {}
    #: the integer parameters that buy strength (steps, restarts, queries): an escalation that asks
    #: this attack to try harder (:meth:`stronger`) doubles each
    effort_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, norm: str = "Linf", **params: Any) -> None:
        self.norm = canonical_norm(norm)
        if self.norm not in self.norms:
            raise UserInputError(
                f"Attack {self.name!r} does not support the {self.norm} norm; it supports {', '.join(self.norms)}."
            )
        fields = {f.name for f in dataclasses.fields(self.Params)}
        unknown = set(params) - fields
        if unknown:
            raise UserInputError(
                f"Attack {self.name!r} has no parameter {sorted(unknown)[0]!r}; it has {', '.join(sorted(fields))}."
            )
        try:
            self.params = self.Params(**params)
        except TypeError as exc:
            raise UserInputError(f"Bad parameters for attack {self.name!r}: {exc}.") from exc
        if self.params.eot < 1:
            raise UserInputError(f"EOT samples must be at least 1; got {self.params.eot}.")
        self.validate()
        self.queries = 0
        #: messages about the evaluation (an adapter passes on its library's own checks here);
        #: the runner clears them before each batch and stores what the batch added with its step
        self.warnings: list[str] = []
        #: set by :meth:`check_model` when gradients come from the defense's BPDA approximation
        self.bpda = False
        #: the models named by ``needs_models`` (parameter -> ``trained.Trained``), once attached
        self.models: dict[str, Any] = {}
        #: where :meth:`report_progress` goes: set by the runner while a local step runs (its
        #: progress bar), None otherwise; never pickled (a Ray worker reports nothing)
        self.progress: Callable[[str], None] | None = None

    def report_progress(self, text: str) -> None:
        """Say, in one short line, where a long call is (AutoAttack: the component running, the
        points left, an ETA); the runner shows it beside the step's progress bar."""
        if self.progress is not None:
            self.progress(text)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["progress"] = None
        return state

    def validate(self) -> None:
        """Check ``self.params``; raise UserInputError with one sentence."""

    def evaluations_per_point(self) -> int:
        """About how many model evaluations (forward or backward passes) one call spends on one
        point at most, for ``--dry-run``'s cost estimate. This default reads the usual parameter
        names: ``steps`` (times ``binary_search_steps``, times 2 for a gradient attack's forward
        and backward), ``query_budget`` or ``n_queries``, restarts, and ``eot``. Attacks whose
        cost follows another rule override it."""
        p = self.params
        per = int(getattr(p, "query_budget", 0) or getattr(p, "n_queries", 0) or getattr(p, "steps", 0) or 1)
        per *= int(getattr(p, "binary_search_steps", 1) or 1)
        per *= int(getattr(p, "restarts", 1) or getattr(p, "n_restarts", 1) or 1)
        if self.access == "gradient":
            per *= 2
        return per * max(1, int(p.eot))

    def stronger(self, how: str) -> dict[str, Any] | None:
        """The parameters of a stronger run of this attack for an escalation, or None when this
        attack has no such knob: ``how`` is ``"effort"`` (each of :attr:`effort_params` doubled)
        or ``"eot"`` (twice the EOT passes, at least 2). The parameters given are kept otherwise.
        An attack with another notion of strength overrides it."""
        params = identity_params(self.params)
        if how == "eot":
            return {**params, "eot": max(2, 2 * int(self.params.eot))}
        if how == "effort":
            knobs = [k for k in self.effort_params if isinstance(getattr(self.params, k, None), int)
                     and not isinstance(getattr(self.params, k), bool)]
            if not knobs:
                return None
            return {**params, **{k: 2 * max(1, int(getattr(self.params, k))) for k in knobs}}
        raise ValueError(f"unknown escalation {how!r}")

    def use_models(self, models: dict[str, Any]) -> None:
        """Attach the models named by ``needs_models`` (parameter -> ``trained.Trained``); the
        sweep calls it once per cell, before :meth:`check_model`."""
        missing = set(self.needs_models) - set(models)
        if missing:
            raise RuntimeError(f"attack {self.name!r} was given no model for {sorted(missing)[0]!r}")
        self.models = dict(models)

    def model(self, param: str) -> DefendedModel:
        """The model attached for ``param`` (one of ``needs_models``)."""
        if param not in self.models:
            raise RuntimeError(f"attack {self.name!r} has no model for {param!r}; the sweep attaches it")
        return self.models[param].model

    def describe(self) -> dict[str, Any]:
        """The attack's part of a cell's identity (see :mod:`robustbench_er.core.identity`): its name,
        norm and parameters (a parameter declared with ``added_field`` only when set), its
        ``version`` when nonzero, the identities of the models it uses, and BPDA."""
        params = identity_params(self.params)
        out: dict[str, Any] = with_version({"attack": self.name, "norm": self.norm, "params": params},
                                           self.version)
        if self.models:
            # a model parameter is recorded by the identity of the model it named (measured on its
            # weights), not by the name or folder path that named it
            for p in self.needs_models:
                params.pop(p, None)
            out["models"] = {p: self.models[p].identity for p in self.needs_models}
        if self.bpda:
            out["bpda"] = True
        return out

    def check_model(self, model: DefendedModel) -> None:
        """Refuse a model this attack cannot run on (called once per cell).

        A gradient attack on a defense with a BPDA approximation is let through and remembers it
        (``self.bpda``, recorded by :meth:`describe`); it must then run on :meth:`target`.
        """
        self.bpda = self.access == "gradient" and bool(getattr(model, "bpda", False))
        if self.access == "gradient" and not self.bpda and not getattr(model, "differentiable", True):
            raise UserInputError(
                f"Attack {self.name!r} needs gradients, but this defense is declared non-differentiable"
                " and declares no BPDA approximation; use a score- or decision-based attack."
            )
        if self.access == "decision" and getattr(model, "randomized", False) and self.params.eot < 2:
            raise UserInputError(
                f"Attack {self.name!r} is decision-based and the defense is randomized; set eot >= 2"
                " so each query is a majority vote."
            )

    def target(self, model: DefendedModel) -> DefendedModel:
        """The model ``run`` attacks: ``model`` itself, or for a gradient attack on a BPDA defense
        its approximate-gradient twin (same outputs, the approximation's gradients). Verification
        never uses it."""
        if self.access == "gradient" and model.bpda:
            return model.bpda_model()
        return model

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError


class FixedEpsilonAttack(Attack):
    """An attack at a given epsilon per sample: the runner calls it once per grid point, on the
    points that survived the smaller epsilons."""

    kind: ClassVar[str] = "fixed"

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, *,
            generator: torch.Generator | None = None, x_init: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial examples for ``x`` (labels ``y``) inside the ball of radius ``eps[i]`` around
        ``x[i]``. Random draws come from ``generator``; ``x_init`` is the example found at the
        previous epsilon, passed only to attacks declaring ``warm_start = True``."""
        raise NotImplementedError


class MinimizationAttack(Attack):
    """An attack that returns the smallest adversarial example it finds (no epsilon): one run per
    cell gives the whole accuracy-vs-epsilon curve."""

    kind: ClassVar[str] = "min"

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, *,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """Adversarial examples for ``x`` (labels ``y``), as close to ``x`` as the attack can find;
        a point it could not break may come back unchanged."""
        raise NotImplementedError


_TYPED_KINDS: dict[type[Attack], str] = {FixedEpsilonAttack: "fixed", MinimizationAttack: "min"}


def validate_attack_class(name: str, obj: Any) -> None:
    if not (isinstance(obj, type) and issubclass(obj, Attack)):
        raise TypeError(f"Attack {name!r} must be a subclass of robustbench_er.plugins.attack.Attack.")
    if obj.run in (Attack.run, FixedEpsilonAttack.run, MinimizationAttack.run):
        raise TypeError(f"Attack {name!r} must implement run().")
    for base, kind in _TYPED_KINDS.items():
        if issubclass(obj, base) and obj.kind != kind:
            raise TypeError(f"Attack {name!r} subclasses {base.__name__}, so its kind must be {kind!r}, not {obj.kind!r}.")
    if obj.kind not in KINDS:
        raise TypeError(f"Attack {name!r}: kind must be one of {KINDS}.")
    if obj.access not in ACCESS:
        raise TypeError(f"Attack {name!r}: access must be one of {ACCESS}.")
    if not isinstance(obj.single_step, bool) or (obj.single_step and obj.access != "gradient"):
        raise TypeError(f"Attack {name!r}: single_step must be a bool, and True only for a gradient attack.")
    if not obj.norms or any(n not in NORMS for n in obj.norms):
        raise TypeError(f"Attack {name!r}: norms must be a non-empty subset of {NORMS}.")
    if not (dataclasses.is_dataclass(obj.Params) and issubclass(obj.Params, AttackParams)):
        raise TypeError(f"Attack {name!r}: Params must be a dataclass subclassing attack.AttackParams.")
    fields = {f.name for f in dataclasses.fields(obj.Params)}
    if not isinstance(obj.needs_models, tuple) or any(not isinstance(p, str) or p not in fields
                                                      for p in obj.needs_models):
        raise TypeError(f"Attack {name!r}: needs_models must be a tuple of names of its Params fields.")


@torch.no_grad()
def verify(model: DefendedModel, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, norm: str,
           eps: torch.Tensor | None = None, n_passes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-check adversarial examples; return (counted mask, measured norms).

    An example counts when it is finite, inside [0, 1], inside the ball (if ``eps`` is given:
    norm <= eps * (1 + rtol) + atol) and misclassified by a fresh forward pass (a majority
    vote over ``n_passes`` passes for a randomized model).
    """
    if x_adv.shape != x.shape:
        raise RuntimeError(f"attack returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    x_adv = x_adv.to(x.dtype)
    finite = torch.isfinite(x_adv.reshape(len(x), -1)).all(1)
    x_adv = torch.where(torch.isfinite(x_adv), x_adv, x)
    in_range = ((x_adv >= 0) & (x_adv <= 1)).reshape(len(x), -1).all(1)
    norms = perturbation_norm(x_adv - x, norm)
    ok = finite & in_range
    if eps is not None:
        ok &= norms <= eps * (1 + NORM_RTOL) + NORM_ATOL
    pred = model.predict_label(x_adv, n_passes=n_passes)
    ok &= pred != y
    return ok, norms


# --- helpers for adapters of third-party attack libraries (pyautoattack, foolbox, torchattacks) ---


class LibraryModel(torch.nn.Module):
    """A defended model as a third-party attack library sees it: ``forward(x) -> logits``.

    * EOT: for a randomized model with ``eot > 1`` each call makes ``eot`` forward passes and
      returns their mean logits (``mode="mean"``: expectation over logits, the standard EOT
      approximation for gradient and score attacks; the gradient of the mean is the mean of
      the per-pass gradients) or the share of passes voting for each class (``mode="vote"``:
      the argmax is the majority vote, for decision-based attacks). Deterministic models get
      one pass whatever ``eot`` says.
    * ``queries`` counts images sent to the defended model, each EOT pass counted.
    """

    def __init__(self, model: DefendedModel, eot: int = 1, mode: str = "mean") -> None:
        super().__init__()
        if mode not in ("mean", "vote"):
            raise ValueError(f"mode must be 'mean' or 'vote', not {mode!r}")
        self.model = model
        self.eot = max(1, int(eot)) if getattr(model, "randomized", False) else 1
        self.mode = mode
        self.queries = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.queries += len(x) * self.eot
        if self.eot == 1:
            return self.model.predict(x)
        outs = [self.model.predict(x) for _ in range(self.eot)]
        if self.mode == "vote":
            k = outs[0].shape[1]
            return torch.stack([torch.nn.functional.one_hot(o.argmax(1), k).to(o.dtype) for o in outs]).mean(0)
        return torch.stack(outs).mean(0)


def eps_groups(eps: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
    """Split a per-sample epsilon tensor into ``(value, indices)`` groups of equal epsilon.

    For libraries that take one scalar epsilon: the adapter runs once per group (a sweep step
    has a single group, so this costs nothing there).
    """
    flat = eps.detach().reshape(-1)
    return [(float(v), torch.nonzero(flat == v).flatten()) for v in torch.unique(flat)]


def draw_seed(generator: torch.Generator | None) -> int:
    """A library seed drawn from ``generator`` (or from torch's global generator if None)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def seeded(seed: int, device: torch.device | str = "cpu") -> Any:
    """Context manager: run a library attack on torch's global RNG seeded with ``seed``, then restore it.

    Libraries draw from the global RNG; this makes their draws a function of ``seed`` without
    disturbing the caller's random stream.
    """
    import contextlib

    dev = torch.device(device)
    devices = [dev] if dev.type == "cuda" else []

    @contextlib.contextmanager
    def ctx() -> Any:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    return ctx()
