"""Evaluation sanity checks. Each returns flags (name -> one-line detail) that go into the
leaderboard's ``flags`` column; ``docs/flags.md`` explains each and what to do about it.

Every check is cheap: a few forward or backward passes on at most :data:`CHECK_POINTS` points,
or a read of the store. Random draws use a private generator state, so running the checks never
changes the random numbers a sweep sees.

Per model (once per checkpoint, cached):

* ``nondeterministic``: a defense declared deterministic gives different outputs on two passes;
* ``probabilities``: the outputs are non-negative and sum to 1 (probabilities, not logits);
* ``zero-gradients``: input gradients of the loss are all zero (or there is no gradient path)
  for at least :data:`ZERO_GRAD_SHARE` of the points;
* ``nan-gradients``: input gradients are not finite.

Per cell:

* ``randomized-no-eot``: a defense declared randomized was attacked with ``eot`` < 2;
* ``eps0-mismatch``: the grid has eps 0 and robust accuracy there differs from clean accuracy;
* ``curve-rises``: the robust-accuracy curve rises with eps, or the per-step counts in the
  store (points attacked and broken per eps) disagree with the per-sample outcomes;
* ``no-break-at-large-eps``: at an eps where any image can be moved to a mid-grey image
  (Linf 0.5, L2 0.5 sqrt(d), L1 0.5 d) the attack leaves more than 10% standing;
* ``noise-stronger``: random noise of the same norm at the cell's largest eps breaks more of
  (up to 64) clean-correct points than the attack did at that eps;
* ``attack-warnings``: the attack reported warnings while computing the cell (``attack.warnings``,
  a list of strings, stored with each step; the AutoAttack adapter passes on AutoAttack's own
  checks);
* ``bpda-gradients``: a gradient attack ran on a defense's BPDA approximation (information:
  its gradients are approximate, its examples were verified on the real defense).

Across attacks of one (dataset, defense, norm), in the report, each decided by an exact
McNemar test on the points both attacks ran (:func:`mcnemar_p`, one-sided, :data:`ALPHA`):

* ``single-step-stronger``: a single-step attack (``Attack.single_step``) breaks significantly
  more points than an iterative gradient attack at some eps;
* ``black-box-stronger``: a score- or decision-based attack breaks significantly more points than
  a fixed-epsilon iterative gradient attack at some eps;
* ``transfer-stronger``: a transfer attack that sends the target no query (``Attack.access``
  ``"none"``: examples crafted on a surrogate) does so.

The checks name no attack: they read the attributes each attack declares.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.metrics import EPS_TOL, curve, mcnemar_p
from robustbench_er.engine.search import bisect_state
from robustbench_er.models.defended import device_of
from robustbench_er.plugins.attack import verify
from robustbench_er.plugins.registry import get_attack

if TYPE_CHECKING:
    from robustbench_er.engine.spec import Cell
    from robustbench_er.store.results import Store

_MODEL_CACHE: dict[str, dict[str, str]] = {}
#: points used by the model and noise checks
CHECK_POINTS = 64
#: an attack must leave at most this share standing at the large epsilon
LARGE_EPS_MAX_ACC = 0.10
#: flag zero gradients when at least this share of the points has an all-zero input gradient
ZERO_GRAD_SHARE = 0.10
#: random noise draws per point in the noise check (a point counts if any draw breaks it)
NOISE_DRAWS = 4
#: significance level of the cross-attack flags (one-sided exact McNemar test)
ALPHA = 0.05


def large_eps(norm: str, dim: int) -> float:
    """An epsilon at which every image in [0, 1]^dim can be moved to the mid-grey image."""
    return {"Linf": 0.5, "L2": 0.5 * math.sqrt(dim), "L1": 0.5 * dim}[norm]


def _seed(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


# ---- per model ------------------------------------------------------------------------------

def model_flags(model: Any, x: torch.Tensor, y: torch.Tensor, key: str) -> dict[str, str]:
    """Determinism, logits-vs-probabilities and input-gradient checks on a few points (cached by ``key``)."""
    if key in _MODEL_CACHE:
        return dict(_MODEL_CACHE[key])
    flags: dict[str, str] = {}
    model.eval()
    xb, yb = x[:CHECK_POINTS], y[:CHECK_POINTS]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with torch.no_grad():
            a = model.predict(xb)
            b = model.predict(xb)
        if not getattr(model, "randomized", False) and not torch.allclose(a, b, atol=1e-5, rtol=1e-4):
            diff = float((a - b).abs().max())
            flags["nondeterministic"] = (
                f"two forward passes differ (max logit difference {diff:.3g}) on a defense declared deterministic")
        if bool((a >= 0).all()) and torch.allclose(a.sum(1), torch.ones(len(a), device=a.device), atol=1e-3):
            flags["probabilities"] = "outputs are non-negative and sum to 1: probabilities, not logits"
        if getattr(model, "differentiable", True):
            flags.update(_gradient_flags(model, xb, yb))
    _MODEL_CACHE[key] = flags
    return dict(flags)


def _gradient_flags(model: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, str]:
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model.predict(xg), y, reduction="sum")
        if not loss.requires_grad:
            return {"zero-gradients": "the output does not depend differentiably on the input (no gradient path)"}
        # allow_unused=True gives None for an input the loss does not depend on
        grads: tuple[torch.Tensor | None, ...] = torch.autograd.grad(loss, xg, allow_unused=True)
        (g,) = grads
    if g is None:
        return {"zero-gradients": "the output does not depend differentiably on the input (no gradient path)"}
    if not bool(torch.isfinite(g).all()):
        bad = float((~torch.isfinite(g)).reshape(len(g), -1).any(1).float().mean())
        return {"nan-gradients": f"input gradients are NaN or infinite on {bad:.0%} of {len(g)} points"}
    zero = g.reshape(len(g), -1).abs().amax(1) == 0
    share = float(zero.float().mean())
    if share >= ZERO_GRAD_SHARE:
        return {"zero-gradients": f"input gradients are exactly zero on {share:.0%} of {len(g)} points"}
    return {}


# ---- per cell -------------------------------------------------------------------------------

def randomized_flags(randomized: bool, cell_eot: int, attack_eot: int) -> dict[str, str]:
    if randomized and min(cell_eot, attack_eot) < 2:
        return {"randomized-no-eot": (f"the defense is randomized but was evaluated with eot={min(cell_eot, attack_eot)};"
                                      " gradients and verdicts come from single stochastic passes")}
    return {}


def eps0_flags(outcomes: pd.DataFrame, grid: list[float]) -> dict[str, str]:
    """Robust accuracy at eps 0 (if on the grid) must equal clean accuracy."""

    if len(outcomes) == 0 or not any(abs(e) <= EPS_TOL for e in grid):
        return {}
    acc0 = float(curve(outcomes, [0.0])[0])
    clean = float(outcomes["clean_correct"].astype(bool).mean())
    if abs(acc0 - clean) > EPS_TOL:
        return {"eps0-mismatch": f"robust accuracy at eps 0 is {acc0:.3f} but clean accuracy is {clean:.3f}"}
    return {}


def steps_frame(store: Store, cell_id: str) -> pd.DataFrame:
    """The cell's finished steps (eps index, eps, points attacked, points newly broken)."""
    return store.steps(cell_id)


def _bisect_flags(outcomes: pd.DataFrame, g: list[float], cc: np.ndarray, att: np.ndarray,
                  brk: np.ndarray) -> dict[str, str]:
    """A grid search's rounds break at most what they attacked and leave no interval open."""
    if (brk > att).any():
        return {"curve-rises": "a search round broke more points than it attacked"}
    lo, hi = bisect_state(outcomes, g)
    open_ = int((cc & (hi - lo > 1)).sum())
    if open_:
        return {"curve-rises": f"the grid search left {open_} points unresolved in a finished cell"}
    return {}


def _fixed_steps_flags(att: np.ndarray, brk: np.ndarray, g: list[float], acc: np.ndarray, n: int,
                       no_upstream: bool) -> dict[str, str]:
    """An ascending sweep's step counts follow from one another and match the curve."""
    for i in range(1, len(att)):
        left = att[i - 1] - brk[i - 1]
        if att[i] > left or (no_upstream and att[i] != left):
            rises = "rises: " if att[i] > left else ""
            return {"curve-rises": f"{rises}step {i} (eps {g[i]:g}) attacked {att[i]} points but {left}"
                                   f" survived eps {g[i - 1]:g}"}
    raw = (att - brk) / n
    for i, e in enumerate(g):
        if abs(raw[i] - acc[i]) > EPS_TOL:
            return {"curve-rises": f"at eps {e:g} the steps leave {raw[i]:.3f} standing but the outcomes"
                                   f" {acc[i]:.3f}"}
    return {}


def curve_flags(outcomes: pd.DataFrame, steps: pd.DataFrame, grid: list[float], kind: str,
                search: str = "ascending", upstream: pd.DataFrame | None = None) -> dict[str, str]:
    """The curve must not rise with eps, and the per-step counts must match the outcomes.

    Ascending search: at each eps the runner attacks exactly the points standing there, so
    ``attacked`` at step i+1 is ``attacked - broken`` at step i (less the points an upstream
    cascade stage broke in between), and the share still standing after step i equals the curve
    read from ``broken_at``. Grid search: every round breaks at most what it attacked and, at the
    end, every clean-correct point's interval is resolved. A minimization attack has one step that
    attacks every point standing at the smallest positive eps.
    """

    n = len(outcomes)
    if n == 0:
        return {}
    g = sorted(float(e) for e in grid)
    acc = curve(outcomes, g)
    for i in range(1, len(g)):
        if acc[i] > acc[i - 1] + EPS_TOL:
            return {"curve-rises": f"robust accuracy rises from {acc[i - 1]:.3f} at eps {g[i - 1]:g}"
                                   f" to {acc[i]:.3f} at eps {g[i]:g}"}
    cc = outcomes["clean_correct"].to_numpy().astype(bool)
    if upstream is not None:
        up = upstream.set_index("sample_id").loc[outcomes["sample_id"].tolist()]
        up_ba = np.nan_to_num(up["broken_at"].to_numpy(dtype=float), nan=np.inf)
    else:
        up_ba = np.full(n, np.inf)
    att = steps["attacked"].to_numpy(dtype=int)
    brk = steps["broken"].to_numpy(dtype=int)
    if search == "bisect":
        return _bisect_flags(outcomes, g, cc, att, brk)
    expected = len(g) if kind == "fixed" else 1
    if len(steps) != expected:
        return {"curve-rises": f"the store holds {len(steps)} of {expected} attack steps for a finished cell"}
    first = g[0] if kind == "fixed" else min([e for e in g if e > 0] or g)
    standing0 = int((cc & (up_ba > first + EPS_TOL)).sum())
    if att[0] != standing0:
        return {"curve-rises": f"the first step attacked {att[0]} points but {standing0} were standing"}
    if kind == "fixed":
        return _fixed_steps_flags(att, brk, g, acc, n, upstream is None)
    if upstream is None:
        standing = int((cc & outcomes["broken_at"].isna().to_numpy()).sum())
        if att[0] - brk[0] != standing:
            return {"curve-rises": f"the attack step left {att[0] - brk[0]} points standing but the outcomes"
                                   f" {standing}"}
    return {}


def large_eps_flags(outcomes: pd.DataFrame, grid: list[float], norm: str, dim: int,
                    label: str) -> dict[str, str]:
    """At an eps where every image reaches mid-grey, at most 10% may stand."""

    if len(outcomes) == 0 or not grid:
        return {}
    big = large_eps(norm, dim)
    top = max(grid)
    if top + EPS_TOL < big:
        return {}
    acc = float(curve(outcomes, [top])[0])
    if acc > LARGE_EPS_MAX_ACC:
        return {"no-break-at-large-eps": f"{label} leaves {acc:.1%} standing at eps {top:g}"
                                         f" (any image reaches mid-grey from eps {big:g})"}
    return {}


def random_noise(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """Random points of norm ``eps`` around ``x`` (uniform signs for Linf, a Gaussian direction
    for L2 and L1), clipped to [0, 1]; clipping never moves a point farther from ``x``."""
    if norm == "Linf":
        d = (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1).to(x) * eps
    else:
        d = torch.randn(x.shape, generator=generator).to(x)
        p = 2 if norm == "L2" else 1
        d = d / d.reshape(len(x), -1).norm(p=p, dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1))) * eps
    return (x + d).clamp(0, 1)


def noise_flags(model: Any, x: torch.Tensor, y: torch.Tensor, broken_at: np.ndarray, eps: float, norm: str,
                n_passes: int, seed: int, label: str) -> dict[str, str]:
    """Does random noise of norm ``eps`` break more of these (clean-correct) points than the attack?

    ``broken_at`` is the attack's per-point break epsilon (NaN = never). A point counts as broken
    by noise if any of :data:`NOISE_DRAWS` draws is verified adversarial.
    """

    if len(x) == 0 or eps <= 0:
        return {}
    gen = torch.Generator().manual_seed(seed)
    e = torch.full((len(x),), float(eps), device=x.device)
    hit = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(NOISE_DRAWS):
            ok, _ = verify(model, x, random_noise(x, eps, norm, gen), y, norm, e, n_passes)
            hit |= ok
    by_noise = int(hit.sum())
    by_attack = int((np.nan_to_num(broken_at, nan=np.inf) <= eps + EPS_TOL).sum())
    if by_noise > by_attack:
        return {"noise-stronger": f"random {norm} noise at eps {eps:g} breaks {by_noise} of {len(x)}"
                                  f" clean-correct points, {label} only {by_attack}"}
    return {}


def attack_warning_flags(warnings: list[str]) -> dict[str, str]:
    """The messages an attack gave about the evaluation while computing a cell (read from the store)."""
    if warnings:
        text = " | ".join(" ".join(str(w).split()) for w in warnings)
        return {"attack-warnings": text}
    return {}


def bpda_flags(attack_spec: dict[str, Any], label: str) -> dict[str, str]:
    """Say when a gradient attack ran on the defense's BPDA approximation."""
    if attack_spec.get("bpda"):
        return {"bpda-gradients": f"{label} used the defense's BPDA approximation for gradients"
                                  " (approximate gradients; every example verified on the real defense)"}
    return {}


def run_cell_checks(cell: Cell, store: Store) -> dict[str, str]:
    """All per-model and per-cell checks of one finished cell."""

    model = cell.trained.model
    dev = device_of(model)
    out = store.outcomes(cell.cell_id)
    ids = torch.as_tensor(cell.sample_ids[:CHECK_POINTS])
    key = f"{cell.spec['checkpoint']}:{cell.trained.folder}"
    flags = model_flags(model, cell.dataset.x_test[ids].to(dev), cell.dataset.y_test[ids].to(dev), key)
    flags.update(randomized_flags(bool(getattr(model, "randomized", False)), int(cell.eot),
                                  int(getattr(cell.attack.params, "eot", 1))))
    grid = [float(e) for e in cell.grid]
    flags.update(eps0_flags(out, grid))
    upstream = store.outcomes(cell.upstream) if cell.upstream is not None else None
    flags.update(curve_flags(out, steps_frame(store, cell.cell_id), grid, cell.attack.kind, cell.search, upstream))
    norm = cell.spec["norm"]
    dim = int(np.prod(cell.dataset.spec.shape))
    label = cell.attack_cfg.display
    flags.update(large_eps_flags(out, grid, norm, dim, label))
    correct = out[out["clean_correct"].astype(bool)].head(CHECK_POINTS)
    if len(correct) and grid and grid[-1] > 0:
        cids = torch.tensor(correct["sample_id"].to_numpy(dtype=np.int64))
        model.eval()
        flags.update(noise_flags(model, cell.dataset.x_test[cids].to(dev), cell.dataset.y_test[cids].to(dev),
                                 correct["broken_at"].to_numpy(dtype=float), grid[-1], norm, int(cell.eot),
                                 _seed(cell.cell_id, "noise"), label))
    flags.update(attack_warning_flags(store.warnings(cell.cell_id)))
    flags.update(bpda_flags(cell.spec.get("attack", {}), label))
    return flags


# ---- across attacks -------------------------------------------------------------------------

@dataclass
class AttackRun:
    """One attack's per-sample outcomes in a (dataset, defense, norm) group, with what it declares.

    ``outcomes`` has ``sample_id``, ``clean_correct`` and ``broken_at`` (NaN = never broken);
    ``grid`` is where a fixed-epsilon attack ran (a minimization attack is defined at every eps).
    """

    outcomes: pd.DataFrame
    grid: list[float]
    access: str = "gradient"
    kind: str = "fixed"
    single_step: bool = False

    def defined_at(self, eps: float) -> bool:
        return self.kind == "min" or any(abs(e - eps) <= EPS_TOL for e in self.grid)


def attack_run(outcomes: pd.DataFrame, grid: list[float], spec: dict[str, Any]) -> AttackRun:
    """An :class:`AttackRun` from a cell's outcomes and spec (``access``, ``kind``, ``single_step``).

    A spec written before ``single_step`` was recorded takes it from the registered attack class.
    """
    single = spec.get("single_step")
    if single is None:

        try:
            single = bool(get_attack(str(spec.get("attack", {}).get("attack", ""))).single_step)
        except UserInputError:  # an attack no longer registered: assume iterative
            single = False
    return AttackRun(outcomes, [float(e) for e in grid], str(spec.get("access", "gradient")),
                     str(spec.get("kind", "fixed")), bool(single))


def _standing(run: AttackRun, ids: np.ndarray, eps: float) -> np.ndarray:
    """Per id (in ``ids`` order): clean-correct and not broken at or below ``eps``."""
    frame = run.outcomes.set_index("sample_id").loc[ids]
    cc = frame["clean_correct"].to_numpy().astype(bool)
    ba = np.nan_to_num(frame["broken_at"].to_numpy(dtype=float), nan=np.inf)
    return cc & ~(ba <= eps + EPS_TOL)


def paired_comparison(weak: AttackRun, strong: AttackRun) -> dict[str, Any] | None:
    """The eps where ``weak`` is most significantly stronger than ``strong`` on their shared points.

    Returns ``{eps, b, c, p, n, acc_weak, acc_strong}`` (b: points ``strong`` leaves standing and
    ``weak`` does not, c: the reverse; p from :func:`mcnemar_p`), or None when they share no point
    or no eps.
    """
    ids = np.intersect1d(weak.outcomes["sample_id"].to_numpy(), strong.outcomes["sample_id"].to_numpy())
    if len(ids) == 0:
        return None
    grid = sorted({float(e) for e in list(weak.grid) + list(strong.grid)})
    best: dict[str, Any] | None = None
    for e in grid:
        if not (weak.defined_at(e) and strong.defined_at(e)):
            continue
        # a randomized defense's clean pass may differ between cells: compare what is left standing
        sw, ss = _standing(weak, ids, e), _standing(strong, ids, e)
        b, c = int((ss & ~sw).sum()), int((sw & ~ss).sum())
        p = mcnemar_p(b, c)
        if best is None or p < best["p"]:
            best = {"eps": e, "b": b, "c": c, "p": p, "n": len(ids),
                    "acc_weak": float(sw.mean()), "acc_strong": float(ss.mean())}
    return best


def cross_attack_hits(runs: dict[str, AttackRun], alpha: float = ALPHA
                      ) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Compare the attacks of one (dataset, defense, norm) group pairwise on their shared points.

    A flag fires when an attack expected to be weaker (single-step vs iterative; black-box or
    transfer vs a fixed-epsilon iterative gradient attack) breaks significantly more points at
    some eps: exact McNemar test, one-sided, p < ``alpha``. Returns per flag the most significant
    pair: (the weaker attack's label, the stronger's, :func:`paired_comparison`'s result).
    """
    iterative = [lab for lab, r in runs.items() if r.access == "gradient" and not r.single_step]
    single = [lab for lab, r in runs.items() if r.access == "gradient" and r.single_step]
    white = [lab for lab in iterative if runs[lab].kind == "fixed"]
    black = [lab for lab, r in runs.items() if r.access in ("score", "decision")]
    transfer = [lab for lab, r in runs.items() if r.access == "none"]
    hits: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for name, weak_labels, strong_labels in (("single-step-stronger", single, iterative),
                                             ("black-box-stronger", black, white),
                                             ("transfer-stronger", transfer, white)):
        for wl in weak_labels:
            for sl in strong_labels:
                hit = paired_comparison(runs[wl], runs[sl])
                if hit and hit["p"] < alpha and (name not in hits or hit["p"] < hits[name][2]["p"]):
                    hits[name] = (wl, sl, hit)
    return hits


def cross_attack_flags(runs: dict[str, AttackRun], alpha: float = ALPHA) -> dict[str, str]:
    """:func:`cross_attack_hits` as flags: the detail gives both accuracies, b, c and p."""
    return {name: (f"{wl} {h['acc_weak']:.3f} < {sl} {h['acc_strong']:.3f} at eps {h['eps']:g} on"
                   f" {h['n']} shared points: {wl} alone breaks b={h['b']}, {sl} alone c={h['c']}"
                   f" (exact McNemar, one-sided p={h['p']:.2g})")
            for name, (wl, sl, h) in cross_attack_hits(runs, alpha).items()}
