"""RayS: a hard-label attack that searches over ray directions (Linf).

Paper: Jinghui Chen and Quanquan Gu, "RayS: A Ray Searching Method for Hard-label Adversarial
Attack", KDD 2020, arXiv:2006.12792.

Source: ours. Written here because no maintained package provides RayS (the authors' code is a
research repository, not a library); this file implements the algorithm from the paper.

Threat model: hard-label (decision) black box, Linf norm, untargeted. The attack sees only the
predicted label; every forward pass counts as a query. It is a minimization attack: it returns,
per sample, the closest adversarial point it found along its best ray, and the runner measures
that point's Linf norm (the sample's ``broken_at``). One run therefore gives the whole
accuracy-vs-epsilon curve, and the average decision-boundary distance (ADBD, the paper's
summary number) is the mean of the per-sample distances, which the report can compute from
``broken_at``.

Algorithm, per sample. The search state is a sign vector ``s`` (one +-1 per input coordinate,
all +1 at the start) and the best distance ``d*`` (infinite until an adversarial ray is found).
A ray is the Linf ray ``d -> clamp(x + d * s, 0, 1)``. The starting direction is checked first;
after that, at block level L the flattened image is cut into 2^L blocks and the candidate
direction is ``s`` with the next block's signs flipped; after the last block of a level the
next level starts (capped where blocks are one coordinate wide). Each candidate costs one query
at distance ``min(d*, 1)`` (1 is the largest useful Linf distance on [0, 1] images); only if
that point is adversarial does a binary search over d in [0, min(d*, 1)] run to tolerance
``tol``, and the candidate becomes the new ``s`` as soon as it beats ``d*``. Because ``d*`` only
ever decreases, the distance is monotone in the number of queries.

Parameters (values used in the papers in brackets):

* ``query_budget`` -- queries per sample [10,000, as in the ER-Classifier paper's RayS
  evaluation (Table 3, 1,000 random test samples per dataset)]; must be > 0.
* ``tol`` -- binary-search tolerance, here on the Linf distance [1e-3; the reference code applies
  it to the Euclidean length along the unit-normalised ray].
* ``target_eps`` -- optional early stop: a sample stops once ``d*`` <= ``target_eps`` (the
  paper's early-stopping variant for measuring attack success at a fixed epsilon). ``None``
  (default) spends the whole budget, which is what a curve over epsilons needs.
* ``eot`` -- for randomized defenses each query is a majority vote over ``eot`` forward passes,
  and each pass counts toward the budget.

The whole batch is searched at once: the sign vectors, block level and index, ``d*``,
binary-search bounds and query counts are per-sample tensors, and each model call evaluates one
candidate point for every sample still searching. After ``run`` the attack exposes
``last_queries`` (queries spent per sample), ``last_distances`` (``d*`` per sample, ``inf``
where no adversarial ray was found) and ``last_history`` (query counts and ``d*`` after every
model call, shape steps x samples).

Differences from the authors' code and why:

* Distances are Linf distances along the sign vector, not Euclidean distances along the
  unit-normalised sign vector; the two differ by the constant sqrt(dim), so the search is the
  same, and ``tol`` is then directly a tolerance on the reported Linf distance.
* Before any adversarial ray is known, the reference code probes distances 1, 2, ..., 10 along
  the sign vector; on [0, 1] images every distance >= 1 clamps to the same point, so one probe
  at distance 1 is asked instead (same outcome, fewer queries).
* The starting all-+1 direction is itself checked before the first flip (the reference code
  flips the whole vector first); this costs one query and lets an easy sample finish early.
* A clean input that is already misclassified gets distance 0 after one query.
* Each sample keeps its own block level and index instead of the batch moving in lock-step,
  so samples that stop early (budget or ``target_eps``) do not slow the others down.
* On a deterministic model a sample stops once a full pass over single coordinates (the last
  block level) brings no gain: from then on the search would repeat the same queries forever,
  so the rest of the budget could not change the result. Randomized models never stop this way.
* The generator argument is accepted for the common interface and unused: RayS is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from robustbench_er.plugin import (
    AttackParams,
    DefendedModel,
    MinimizationAttack,
    UserInputError,
    register_attack,
)

#: the largest useful Linf distance on images in [0, 1]
MAX_LINF = 1.0


@dataclass
class RaySParams(AttackParams):
    query_budget: int = 10000
    tol: float = 1e-3
    target_eps: float | None = None


@register_attack("rays")
class RayS(MinimizationAttack):
    """RayS (ours): hard-label ray search, Linf, per-sample state, every query counted."""

    norms = ("Linf",)
    access = "decision"
    Params = RaySParams

    def __init__(self, norm: str = "Linf", **params: object) -> None:
        super().__init__(norm, **params)  # type: ignore[arg-type]
        self.last_queries = torch.zeros(0, dtype=torch.int64)
        self.last_distances = torch.zeros(0)
        self.last_history: tuple[torch.Tensor, torch.Tensor] = (torch.zeros(0, 0, dtype=torch.int32),
                                                                  torch.zeros(0, 0))
        #: keep ``last_history`` (one row per model call); turn off to save memory on big runs
        self.record_history = True

    def validate(self) -> None:
        p = self.params
        if isinstance(p.query_budget, bool) or not isinstance(p.query_budget, int) or p.query_budget <= 0:
            raise UserInputError(f"RayS query_budget must be a positive integer; got {p.query_budget!r}.")
        if not (isinstance(p.tol, (int, float)) and 0 < p.tol < MAX_LINF):
            raise UserInputError(f"RayS tol must be a number in (0, 1); got {p.tol!r}.")
        if p.target_eps is not None and not (isinstance(p.target_eps, (int, float)) and 0 <= p.target_eps <= 1):
            raise UserInputError(f"RayS target_eps must be None or a number in [0, 1]; got {p.target_eps!r}.")

    @torch.no_grad()
    def run(self, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, *,
            generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.params
        n = len(x)
        dev = x.device
        shape = x.shape
        dim = int(x[0].numel()) if n else 0
        passes = p.eot if getattr(model, "randomized", False) else 1
        budget = int(p.query_budget)
        target = -1.0 if p.target_eps is None else float(p.target_eps)
        flat = x.reshape(n, dim)
        coords = torch.arange(dim, device=dev)
        max_level = max(0, math.ceil(math.log2(dim))) if dim > 1 else 0
        # on a deterministic model, a full pass over single coordinates without any gain means the
        # search would repeat the same queries forever: stop that sample and keep its budget
        stop_when_stuck = passes == 1 and not getattr(model, "randomized", False)

        def query(pts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            pred = model.predict_label(pts.reshape(-1, *shape[1:]), n_passes=passes, batch_size=max(1, len(pts)))
            return pred != labels

        s_best = torch.ones(n, dim, device=dev, dtype=x.dtype)
        cand = s_best.clone()
        d_best = torch.full((n,), math.inf, device=dev)
        queries = torch.zeros(n, dtype=torch.int64, device=dev)
        level = torch.zeros(n, dtype=torch.int64, device=dev)
        bidx = torch.zeros(n, dtype=torch.int64, device=dev)
        #: candidates tried at the last level since the sign vector last changed
        stale = torch.zeros(n, dtype=torch.int64, device=dev)
        searching = torch.zeros(n, dtype=torch.bool, device=dev)  # in a binary search (else: next candidate)
        fresh = torch.ones(n, dtype=torch.bool, device=dev)  # the starting direction is not checked yet
        lo = torch.zeros(n, device=dev)
        hi = torch.zeros(n, device=dev)
        hist_q: list[torch.Tensor] = []
        hist_d: list[torch.Tensor] = []

        active = torch.ones(n, dtype=torch.bool, device=dev)
        if n and budget >= passes:
            wrong = query(flat, y)
            queries += passes
            d_best[wrong] = 0.0
            active &= ~wrong
        else:
            active[:] = False
        if self.record_history:
            hist_q.append(queries.to("cpu", torch.int32, copy=True))
            hist_d.append(d_best.to("cpu", torch.float32, copy=True))

        while True:
            active &= (queries + passes <= budget) & (d_best > target)
            if stop_when_stuck:
                active &= searching | (stale < dim)
            idx = torch.nonzero(active).flatten()
            if len(idx) == 0:
                break
            # a new candidate direction for every active sample that is not in a binary search
            new = idx[~searching[idx]]
            if len(new):
                first = fresh[new]
                blocks = torch.pow(2, level[new])
                size = torch.div(dim + blocks - 1, blocks, rounding_mode="floor")
                start = bidx[new] * size
                end = torch.clamp(start + size, max=dim)
                flip = (coords[None, :] >= start[:, None]) & (coords[None, :] < end[:, None]) & ~first[:, None]
                cand[new] = torch.where(flip, -s_best[new], s_best[new])
                # advance the block position of the samples that flipped a block
                nxt = bidx[new] + 1
                wrap = (nxt >= blocks) | (end >= dim)
                moved = ~first
                bidx[new] = torch.where(moved & wrap, torch.zeros_like(nxt), torch.where(moved, nxt, bidx[new]))
                level[new] = torch.where(moved & wrap, torch.clamp(level[new] + 1, max=max_level), level[new])
                stale[new] += (moved & (level[new] == max_level)).long()
                fresh[new] = False
                lo[new] = 0.0
                hi[new] = torch.clamp(d_best[new], max=MAX_LINF)
            probing = ~searching[idx]
            dist = torch.where(probing, hi[idx], (lo[idx] + hi[idx]) / 2)
            pts = (flat[idx] + dist[:, None] * cand[idx]).clamp(0, 1)
            adv = query(pts, y[idx])
            queries[idx] += passes

            # probe outcomes: an adversarial probe starts a binary search; the first ray found
            # becomes the current one at distance 1
            start_search = idx[probing & adv]
            first_ray = start_search[torch.isinf(d_best[start_search])]
            d_best[first_ray] = hi[first_ray]
            s_best[first_ray] = cand[first_ray]
            # binary-search outcomes: success shrinks hi and is accepted at once (it beats d*)
            bs = ~probing
            win = idx[bs & adv]
            lose = idx[bs & ~adv]
            mid = dist[bs & adv]
            hi[win] = mid
            better = mid < d_best[win]
            acc = win[better]
            d_best[acc] = mid[better]
            s_best[acc] = cand[acc]
            stale[acc] = 0
            lo[lose] = dist[bs & ~adv]
            searching[start_search] = True
            done = idx[searching[idx] & (hi[idx] - lo[idx] <= p.tol)]
            searching[done] = False
            if self.record_history:
                hist_q.append(queries.to("cpu", torch.int32, copy=True))
                hist_d.append(d_best.to("cpu", torch.float32, copy=True))

        self.last_queries = queries.cpu()
        self.last_distances = d_best.cpu()
        self.queries += int(queries.sum())
        if self.record_history:
            self.last_history = (torch.stack(hist_q), torch.stack(hist_d))
        found = torch.isfinite(d_best)
        d = torch.where(found, d_best, torch.zeros_like(d_best)).to(x.dtype)
        x_adv = (flat + d[:, None] * s_best).clamp(0, 1)
        x_adv = torch.where(found[:, None], x_adv, flat)
        return x_adv.reshape(shape)
