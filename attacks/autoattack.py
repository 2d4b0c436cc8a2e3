"""AutoAttack (Croce & Hein, ICML 2020, arXiv:2003.01690; L1: Croce & Hein, ICCV 2021, arXiv:2103.01208).

Threat model: white-box ensemble of parameter-free attacks at a fixed epsilon; Linf, L2 and L1.
Source library: ``pyautoattack`` (the official AutoAttack code on PyPI), called through its
``AutoAttack(model, attacks=, device=, eps=, norm=, seed=, version=)`` and
``run_standard_evaluation(x, y, batch_size=)`` (returns ``(x_adv, y_adv)``).

Parameters (the paper's versions, as configured by the package):

* ``version``: ``standard`` (APGD-CE, APGD-T with 9 targets, FAB-T with 9 targets, Square with
  5000 queries; 100 iterations each; for L1 APGD uses the large-epsilon schedule and 5 restarts
  with 5 targets), ``plus`` (APGD-CE/DLR with 5 restarts, FAB, Square, APGD-T, FAB-T; Linf and L2
  only), ``rand`` (APGD-CE and APGD-DLR with EOT over ``eot`` passes, for randomized defenses;
  the paper uses 20), ``custom`` (the components named in ``attacks`` with the package's
  default settings). Left unset (None), it is ``rand`` for a model declared randomized and
  ``standard`` otherwise.
* ``attacks``: for ``custom`` only, a list from ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``,
  ``fab-t``, ``square``.
* ``batch_size`` (500): AutoAttack's internal batch.
* ``eot``: EOT passes of APGD in the ``rand`` version (the runner sets it for randomized defenses).

Differences from calling the package directly, and why:

* AutoAttack takes one scalar epsilon; the sweep calls ``run`` once per (ascending) epsilon on
  the survivors only, so a step has a single epsilon. A per-sample epsilon tensor with several
  values is split into groups of equal epsilon, one AutoAttack run each.
* The seed is drawn from the runner's generator, so a cell reproduces exactly.
* AutoAttack's own sanity checks (randomized output, probabilities instead of logits, dynamic
  defense, too many target classes, Square stronger than the gradient attacks) are captured
  from its ``auto-attack`` logger and the ``warnings`` module into ``self.warnings`` (the
  runner shows them as flags) instead of being printed. Its progress messages are not printed
  either: they are read into one line per event (component, points left, ETA) that the runner
  shows beside its progress bar (:class:`_Progress`).
* With an explicit non-``rand`` version on a randomized defense the model is attacked as it is
  (no EOT); AutoAttack's randomness check then says so in ``self.warnings``.
* AutoAttack's dynamic-defense check replaces Python's trace function (``sys.settrace``); the
  adapter restores the caller's afterwards, so coverage tools and debuggers keep working.
* ``plus`` with L1 is refused: the package only logs that this combination is unchecked (it
  does not switch APGD to the L1 large-epsilon schedule there).
"""

from __future__ import annotations

import logging
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from robustbench_er.plugin import (
    AttackParams,
    DefendedModel,
    FixedEpsilonAttack,
    UserInputError,
    added_field,
    clip_to_ball,
    draw_seed,
    eps_groups,
    register_attack,
    seeded,
)

log = logging.getLogger(__name__)

VERSIONS = ("standard", "plus", "rand", "custom")
COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
#: versions the package configures for each norm
NORM_VERSIONS = {"Linf": VERSIONS, "L2": VERSIONS, "L1": ("standard", "rand", "custom")}


class _Collector(logging.Handler):
    """Collects WARNING (and above) records of the package's logger."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _Progress(logging.Handler):
    """Reads the package's DEBUG records of one call (``initial accuracy``, ``running <component>``,
    each batch's ``k out of m successfully perturbed``, ``robust accuracy after ...``) and reports
    the component running, the points left and an ETA through :meth:`Attack.report_progress`.

    The ETA is the work left (points left times each remaining component's evaluations per point,
    :attr:`AutoAttackAdapter.COMPONENT_EVALUATIONS`) at the rate measured so far in this call:
    an upper bound that tightens as points break. The package itself has no progress hook."""

    def __init__(self, attack: AutoAttackAdapter, n: int, eps: float, parts: list[str]) -> None:
        super().__init__(level=logging.DEBUG)
        self.attack, self.n, self.eps, self.parts = attack, n, eps, parts
        self.start = time.monotonic()
        self.standing = n
        self.component = ""
        self.todo = 0  # points of the running component not attacked yet
        self.done_evals = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._read(record.getMessage())
        except Exception:  # progress must never break an evaluation
            return

    def _read(self, msg: str) -> None:
        if msg.startswith("initial accuracy:"):
            self.standing = round(float(msg.split(":")[1].strip().rstrip("%")) / 100 * self.n)
        elif msg.startswith("running "):
            self.component = msg[len("running "):].strip()
            self.todo = self.standing
        elif m := _BATCH.match(msg):
            broken, size = int(m.group(1)), int(m.group(2))
            self.todo -= size
            self.standing -= broken
            self.done_evals += size * self.attack.component_cost(self.component)
        elif msg.startswith("robust accuracy after"):
            self.standing = round(float(msg.split(":")[1].split("%")[0]) / 100 * self.n)
        else:
            return
        self._say()

    def _say(self) -> None:
        if self.component not in self.parts:
            return
        i = self.parts.index(self.component)
        later = sum(self.attack.component_cost(c) for c in self.parts[i + 1:])
        left = max(self.todo, 0) * self.attack.component_cost(self.component) + self.standing * later
        elapsed = time.monotonic() - self.start
        eta = _clock(left * elapsed / self.done_evals) if self.done_evals > 0 else "?"
        self.attack.report_progress(f"eps {self.eps:.4g}: {self.component.upper()} ({i + 1}/{len(self.parts)}),"
                                    f" {self.standing} of {self.n} points left, ETA {eta}")


#: one batch's line of the package's log: "<component> - b/nb - k out of m successfully perturbed"
_BATCH = re.compile(r"^\S+ - \d+/\d+ - \D*(\d+)\D* out of (\d+) successfully perturbed")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@dataclass
class AutoAttackParams(AttackParams):
    version: str | None = None
    attacks: list[str] | None = field(default=None)
    batch_size: int = 500
    #: iterations of the APGD components (APGD-CE, APGD-DLR, APGD-T); None keeps pyautoattack's
    #: 100, the published evaluation. Fewer is a weaker, cheaper attack (quick runs, smoke tests)
    n_iter: int | None = added_field(None)
    #: restarts of the APGD components; None keeps what the version sets (1 for standard, 5 for
    #: custom, pyautoattack's defaults)
    n_restarts: int | None = added_field(None)


@register_attack("autoattack")
class AutoAttackAdapter(FixedEpsilonAttack):
    """AutoAttack (pyautoattack): standard / plus / rand / custom versions; Linf, L2, L1."""

    norms = ("Linf", "L2", "L1")
    access = "gradient"
    Params = AutoAttackParams
    leaderboard_field = "autoattack_acc"
    search_retry = False  # four attacks with their own restarts: a second pass costs as much and adds little

    def validate(self) -> None:
        p = self.params
        if p.version is not None and p.version not in VERSIONS:
            raise UserInputError(f"Unknown AutoAttack version {p.version!r}; use one of {', '.join(VERSIONS)}.")
        if p.version is not None and p.version not in NORM_VERSIONS[self.norm]:
            raise UserInputError(
                f"AutoAttack version {p.version!r} is not configured for the {self.norm} norm by pyautoattack;"
                f" use one of {', '.join(NORM_VERSIONS[self.norm])}."
            )
        if p.version == "custom":
            if not p.attacks:
                raise UserInputError(f"AutoAttack version 'custom' needs a list of attacks from {', '.join(COMPONENTS)}.")
            bad = [a for a in p.attacks if a not in COMPONENTS]
            if bad:
                raise UserInputError(f"Unknown AutoAttack component {bad[0]!r}; use {', '.join(COMPONENTS)}.")
        elif p.attacks is not None:
            raise UserInputError("AutoAttack's attacks list is only used with version='custom'.")
        if p.batch_size < 1:
            raise UserInputError(f"AutoAttack batch_size must be at least 1; got {p.batch_size}.")
        for name in ("n_iter", "n_restarts"):
            value = getattr(p, name)
            if value is not None and value < 1:
                raise UserInputError(f"AutoAttack {name} must be at least 1; got {value}.")

    #: model evaluations per point of each component at pyautoattack's standard settings, for a
    #: point that survives it (a broken point stops sooner): APGD 100 iterations of a forward and
    #: a backward; APGD-T and FAB-T over 9 target classes; Square 5,000 queries
    COMPONENT_EVALUATIONS: ClassVar[dict[str, int]] = {
        "apgd-ce": 200, "apgd-dlr": 200, "apgd-t": 1800, "fab": 200, "fab-t": 1800, "square": 5000}

    def component_cost(self, component: str) -> float:
        """Model evaluations per point of one component at these parameters (iterations,
        restarts, EOT passes scale the APGD components)."""
        p = self.params
        scale = (p.n_iter or 100) / 100 * (p.n_restarts or 1) if component.startswith("apgd") else 1.0
        return self.COMPONENT_EVALUATIONS.get(component, 200) * scale * max(1, int(p.eot))

    def evaluations_per_point(self) -> int:
        p = self.params
        if p.version == "custom" and p.attacks:
            parts = list(p.attacks)
        elif p.version == "rand":  # APGD-CE and APGD-DLR with EOT over 20 passes
            return 2 * 200 * 20
        else:
            parts = ["apgd-ce", "apgd-t", "fab-t", "square"]
        scale = {a: (p.n_iter or 100) / 100 * (p.n_restarts or 1) for a in ("apgd-ce", "apgd-dlr", "apgd-t")}
        return int(sum(self.COMPONENT_EVALUATIONS.get(a, 200) * scale.get(a, 1) for a in parts)) * max(1, int(p.eot))

    def resolved_version(self, model: DefendedModel) -> str:
        """The version to run: the one asked for, else 'rand' for randomized models, else 'standard'."""
        if self.params.version is not None:
            return self.params.version
        return "rand" if getattr(model, "randomized", False) else "standard"

    def build(self, model: DefendedModel, eps: float, seed: int, device: torch.device) -> Any:
        """The package's AutoAttack object for this model, epsilon and seed (progress output off)."""
        import pyautoattack

        version = self.resolved_version(model)
        aa = pyautoattack.AutoAttack(model, attacks=list(self.params.attacks) if version == "custom" else None,
                                     device=device, eps=eps, norm=self.norm, seed=seed, version=version)
        aa.verbose = True  # its messages go to the "auto-attack" logger only: progress reads them
        if version == "rand":
            aa.apgd.eot_iter = self.params.eot
        for apgd in (aa.apgd, aa.apgd_targeted):
            if self.params.n_iter is not None:  # the schedule's checkpoints follow n_iter, as pyautoattack sets them
                apgd.n_iter = self.params.n_iter
                apgd.n_iter_2 = max(int(0.22 * apgd.n_iter), 1)
                apgd.n_iter_min = max(int(0.06 * apgd.n_iter), 1)
                apgd.size_decr = max(int(0.03 * apgd.n_iter), 1)
            if self.params.n_restarts is not None:
                apgd.n_restarts = self.params.n_restarts
        return aa

    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, *,
            generator: torch.Generator | None = None, x_init: torch.Tensor | None = None) -> torch.Tensor:
        seed = draw_seed(generator)
        out = x.clone()
        aa_log = logging.getLogger("auto-attack")
        collector = _Collector()
        old_propagate = aa_log.propagate
        old_trace = sys.gettrace()
        old_level = aa_log.level
        aa_log.addHandler(collector)
        aa_log.propagate = False
        aa_log.setLevel(logging.DEBUG)
        try:
            with warnings.catch_warnings(record=True) as caught, seeded(seed, x.device):
                warnings.simplefilter("always")
                for value, idx in eps_groups(eps):
                    if value <= 0 or len(idx) == 0:
                        continue
                    aa = self.build(model, value, seed, x.device)
                    progress = _Progress(self, len(idx), value, list(aa.attacks_to_run))
                    aa_log.addHandler(progress)
                    try:
                        x_adv, _ = aa.run_standard_evaluation(x[idx], y[idx], batch_size=self.params.batch_size)
                    finally:
                        aa_log.removeHandler(progress)
                    out[idx] = clip_to_ball(x[idx], x_adv.to(x), eps[idx].to(x), self.norm)
        finally:
            aa_log.removeHandler(collector)
            aa_log.propagate = old_propagate
            aa_log.setLevel(old_level)
            sys.settrace(old_trace)
        msgs = collector.messages + [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
        for m in msgs:
            if m not in self.warnings:
                self.warnings.append(m)
                log.info("AutoAttack check: %s", m)
        return out.detach()
