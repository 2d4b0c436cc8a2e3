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


@dataclass
class _SearchState:
    """The per-sample search state of one :meth:`RayS.run` (one entry per sample in each tensor)."""

    flat: torch.Tensor  # the clean inputs, flattened to n x dim
    s_best: torch.Tensor  # the current (best) sign vector
    cand: torch.Tensor  # the candidate sign vector being probed or binary-searched
    d_best: torch.Tensor  # best distance d* (inf until an adversarial ray is found)
    queries: torch.Tensor
    level: torch.Tensor  # block level
    bidx: torch.Tensor  # index of the next block to flip at that level
    #: candidates tried at the last level since the sign vector last changed
    stale: torch.Tensor
    searching: torch.Tensor  # in a binary search (else: next candidate)
    fresh: torch.Tensor  # the starting direction is not checked yet
    lo: torch.Tensor  # binary-search bounds on the distance
    hi: torch.Tensor
    active: torch.Tensor
    hist_q: list[torch.Tensor]
    hist_d: list[torch.Tensor]

    @classmethod
    def start(cls, flat: torch.Tensor) -> _SearchState:
        n = len(flat)
        dev = flat.device
        s_best = torch.ones(n, flat.shape[1], device=dev, dtype=flat.dtype)
        return cls(
            flat=flat, s_best=s_best, cand=s_best.clone(), d_best=torch.full((n,), math.inf, device=dev),
            queries=torch.zeros(n, dtype=torch.int64, device=dev),
            level=torch.zeros(n, dtype=torch.int64, device=dev),
            bidx=torch.zeros(n, dtype=torch.int64, device=dev),
            stale=torch.zeros(n, dtype=torch.int64, device=dev),
            searching=torch.zeros(n, dtype=torch.bool, device=dev),
            fresh=torch.ones(n, dtype=torch.bool, device=dev),
            lo=torch.zeros(n, device=dev), hi=torch.zeros(n, device=dev),
            active=torch.ones(n, dtype=torch.bool, device=dev), hist_q=[], hist_d=[])

    def record(self) -> None:
        """Append the current query counts and best distances to the history."""
        self.hist_q.append(self.queries.to("cpu", torch.int32, copy=True))
        self.hist_d.append(self.d_best.to("cpu", torch.float32, copy=True))

    def still_active(self, budget: int, passes: int, target: float, stuck_after: int | None) -> torch.Tensor:
        """Drop the samples that are out of budget, at ``target`` or (``stuck_after`` given) stuck;
        return the indices of those still searching."""
        self.active &= (self.queries + passes <= budget) & (self.d_best > target)
        if stuck_after is not None:
            self.active &= self.searching | (self.stale < stuck_after)
        return torch.nonzero(self.active).flatten()

    def propose(self, new: torch.Tensor, coords: torch.Tensor, max_level: int) -> None:
        """A new candidate direction for the samples ``new`` (active, not in a binary search): the
        starting direction if unchecked, else the best one with the next block's signs flipped."""
        dim = len(coords)
        first = self.fresh[new]
        blocks = torch.pow(2, self.level[new])
        size = torch.div(dim + blocks - 1, blocks, rounding_mode="floor")
        start = self.bidx[new] * size
        end = torch.clamp(start + size, max=dim)
        flip = (coords[None, :] >= start[:, None]) & (coords[None, :] < end[:, None]) & ~first[:, None]
        self.cand[new] = torch.where(flip, -self.s_best[new], self.s_best[new])
        # advance the block position of the samples that flipped a block
        nxt = self.bidx[new] + 1
        wrap = (nxt >= blocks) | (end >= dim)
        moved = ~first
        self.bidx[new] = torch.where(moved & wrap, torch.zeros_like(nxt),
                                     torch.where(moved, nxt, self.bidx[new]))
        self.level[new] = torch.where(moved & wrap, torch.clamp(self.level[new] + 1, max=max_level),
                                      self.level[new])
        self.stale[new] += (moved & (self.level[new] == max_level)).long()
        self.fresh[new] = False
        self.lo[new] = 0.0
        self.hi[new] = torch.clamp(self.d_best[new], max=MAX_LINF)

    def update(self, idx: torch.Tensor, probing: torch.Tensor, dist: torch.Tensor, adv: torch.Tensor,
               tol: float) -> None:
        """Take in the outcomes ``adv`` of the queries at distances ``dist`` for samples ``idx``."""
        # probe outcomes: an adversarial probe starts a binary search; the first ray found
        # becomes the current one at distance 1
        start_search = idx[probing & adv]
        first_ray = start_search[torch.isinf(self.d_best[start_search])]
        self.d_best[first_ray] = self.hi[first_ray]
        self.s_best[first_ray] = self.cand[first_ray]
        # binary-search outcomes: success shrinks hi and is accepted at once (it beats d*)
        bs = ~probing
        win = idx[bs & adv]
        lose = idx[bs & ~adv]
        mid = dist[bs & adv]
        self.hi[win] = mid
        better = mid < self.d_best[win]
        acc = win[better]
        self.d_best[acc] = mid[better]
        self.s_best[acc] = self.cand[acc]
        self.stale[acc] = 0
        self.lo[lose] = dist[bs & ~adv]
        self.searching[start_search] = True
        done = idx[self.searching[idx] & (self.hi[idx] - self.lo[idx] <= tol)]
        self.searching[done] = False

    def best_points(self) -> torch.Tensor:
        """The closest adversarial point on each sample's best ray (the clean input where none)."""
        found = torch.isfinite(self.d_best)
        d = torch.where(found, self.d_best, torch.zeros_like(self.d_best)).to(self.flat.dtype)
        x_adv = (self.flat + d[:, None] * self.s_best).clamp(0, 1)
        return torch.where(found[:, None], x_adv, self.flat)


@register_attack("rays")
class RayS(MinimizationAttack):
    """RayS (ours): hard-label ray search, Linf, per-sample state, every query counted."""

    norms = ("Linf",)
    access = "decision"
    #: a decision-based attack sees labels only: the remedy wherever gradients or scores mislead
    remedies = {"zero-gradients": {}, "no-break-at-large-eps": {}, "single-step-stronger": {},
                "noise-stronger": {}}
    effort_params = ("query_budget",)
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
        shape = x.shape
        dim = int(x[0].numel()) if n else 0
        passes = p.eot if getattr(model, "randomized", False) else 1
        budget = int(p.query_budget)
        target = -1.0 if p.target_eps is None else float(p.target_eps)
        coords = torch.arange(dim, device=x.device)
        max_level = max(0, math.ceil(math.log2(dim))) if dim > 1 else 0
        # on a deterministic model, a full pass over single coordinates without any gain means the
        # search would repeat the same queries forever: stop that sample and keep its budget
        stop_when_stuck = passes == 1 and not getattr(model, "randomized", False)
        stuck_after = dim if stop_when_stuck else None

        def query(pts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            pred = model.predict_label(pts.reshape(-1, *shape[1:]), n_passes=passes, batch_size=max(1, len(pts)))
            return pred != labels

        st = _SearchState.start(x.reshape(n, dim))
        if n and budget >= passes:
            wrong = query(st.flat, y)
            st.queries += passes
            st.d_best[wrong] = 0.0
            st.active &= ~wrong
        else:
            st.active[:] = False
        if self.record_history:
            st.record()

        while len(idx := st.still_active(budget, passes, target, stuck_after)):
            new = idx[~st.searching[idx]]
            if len(new):
                st.propose(new, coords, max_level)
            probing = ~st.searching[idx]
            dist = torch.where(probing, st.hi[idx], (st.lo[idx] + st.hi[idx]) / 2)
            pts = (st.flat[idx] + dist[:, None] * st.cand[idx]).clamp(0, 1)
            adv = query(pts, y[idx])
            st.queries[idx] += passes
            st.update(idx, probing, dist, adv, p.tol)
            if self.record_history:
                st.record()

        self.last_queries = st.queries.cpu()
        self.last_distances = st.d_best.cpu()
        self.queries += int(st.queries.sum())
        if self.record_history:
            self.last_history = (torch.stack(st.hist_q), torch.stack(st.hist_d))
        return st.best_points().reshape(shape)
