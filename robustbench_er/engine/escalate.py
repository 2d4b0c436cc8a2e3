"""Flags that act: the remedy each flag names, run by the sweep as further cascade stages.

A flag (``engine.checks``, ``docs/flags.md``) says an evaluation may be too weak. Each flag names
its remedy here as data, :data:`REMEDIES`: a list of ways to find the attacks to run, which name
no attack themselves:

* ``"eot"``: the flagged attack again with twice the EOT passes for gradients and verdicts (on a
  defense declared randomized, or found nondeterministic by the checks);
* ``"effort"``: the flagged attack again with its effort parameters doubled
  (:meth:`robustbench_er.plugins.attack.Attack.stronger`: steps, restarts, queries);
* ``"declared"``: every registered attack that declares the flag in its ``remedies`` (the
  score- and decision-based attacks for masked gradients, a gradient attack with the margin loss
  on log-probabilities for a softmax output, ...; docs/flags.md lists them) and every attack the
  defense plugin lists for it in its own ``remedies``;
* ``"winner"``: the attack a cross-attack check found stronger than the white-box one (a
  black-box or transfer attack), over the sweep's whole grid;
* ``"reseed"``: the flagged attack again with fresh seeds (a new cell id gives new seeds).

After a sweep's cells and checks, :func:`escalation_cells` plans, for every flag on a chain of
cells not escalated yet, each remedy not yet run on that defense as a new cascade stage at the
end of the flagged cell's chain: it starts from the chain's outcomes and attacks only the points
still standing, so the leaderboard's worst case includes it. An escalated stage is a cell like any
other (stored, resumable, leased, keyed on its spec, whose ``escalated`` key lists the flags that
asked for it). Each flag is escalated at most once per defense checkpoint and seed; the checks
of escalated stages may raise new flags, which get their own round.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustbench_er.core.errors import UserInputError
from robustbench_er.engine.checks import AttackRun, attack_run, cross_attack_hits
from robustbench_er.engine.spec import AttackConfig, Cell, Prepared, SweepConfig, build_cell
from robustbench_er.engine.trained import Trained
from robustbench_er.plugins.attack import ACCESS
from robustbench_er.plugins.registry import ATTACKS, defense_label, get_attack, get_defense
from robustbench_er.store.results import Store

#: what the sweep runs by itself when a flag fires, in this order (see the module's docstring).
#: A flag missing here has no remedy the harness can run (``nan-gradients``: fix the model;
#: ``bpda-gradients``: information)
REMEDIES: dict[str, tuple[str, ...]] = {
    "zero-gradients": ("declared",),
    "probabilities": ("declared",),
    "nondeterministic": ("eot",),
    "randomized-no-eot": ("eot",),
    "eps0-mismatch": ("eot",),
    "noise-stronger": ("eot", "declared"),
    "no-break-at-large-eps": ("effort", "declared"),
    "single-step-stronger": ("effort", "declared"),
    "attack-warnings": ("declared",),
    "curve-rises": ("reseed",),
    "black-box-stronger": ("winner",),
    "transfer-stronger": ("winner",),
}


@dataclass
class Remedy:
    """One stage to add: the attack to run, on which chain, with what EOT, and why."""

    attack: AttackConfig
    #: the cell whose chain the stage extends (the flagged one, or for a cross-attack flag the
    #: white-box attack it beat)
    flagged: Cell
    #: EOT passes for verdicts and gradients; None = as the flagged cell
    eot: int | None
    #: True: the whole grid of the sweep; False: the flagged cell's grid
    whole_grid: bool
    flags: set[str]
    #: run even when the same attack already ran (a fresh seed)
    reseed: bool = False


def remedy_names(defense: str, flag: str, norm: str) -> list[tuple[str, dict[str, Any]]]:
    """The attacks that declare ``flag`` as theirs to remedy, as (registry name, parameters):
    the defense's own ``remedies`` first, then every registered attack's ``remedies`` (in registry
    order) that supports ``norm``."""
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        own = getattr(get_defense(defense), "remedies", {}) or {}
    except UserInputError:
        own = {}
    for item in own.get(flag, []):
        out.append((str(item["attack"]), dict(item.get("params") or {})))
    for name in ATTACKS.names():
        cls = get_attack(name)
        declared = getattr(cls, "remedies", {}) or {}
        if flag in declared and norm in cls.norms:
            out.append((name, dict(declared[flag])))
    return out


def _eot_for(cell: Cell, cfg: SweepConfig, flags: Mapping[str, str]) -> int | None:
    """Twice the cell's EOT passes on a randomized (or found nondeterministic) defense, else None."""
    if not (cell.trained.model.randomized or "nondeterministic" in flags):
        return None
    return max(2, 2 * int(cell.eot), int(cfg.eot))


def remedies_for(flag: str, cell: Cell, flags: Mapping[str, str], cfg: SweepConfig, defense: str,
                 winner: Cell | None = None) -> list[Remedy]:
    """The stages ``flag`` asks for on ``cell`` (for a cross-attack flag, the white-box cell that
    lost to ``winner``)."""
    out: list[Remedy] = []
    for how in REMEDIES.get(flag, ()):
        if how in ("eot", "effort"):
            eot = _eot_for(cell, cfg, flags) if how == "eot" else None
            params = cell.attack.stronger(how)
            if params is not None and eot is not None:  # as many passes for gradients as for verdicts
                params["eot"] = max(int(params.get("eot", 1)), eot)
            if params is not None and (how == "effort" or eot is not None):
                out.append(Remedy(AttackConfig(cell.attack.name, params), cell, eot, False, {flag}))
        elif how == "declared":
            out += [Remedy(AttackConfig(name, params), cell, None, False, {flag})
                    for name, params in remedy_names(defense, flag, cell.spec["norm"])]
        elif how == "reseed":
            out.append(Remedy(AttackConfig(cell.attack.name, dict(cell.attack_cfg.params)), cell, None, False,
                              {flag}, reseed=True))
        elif how == "winner" and winner is not None:
            w = winner.attack_cfg
            out.append(Remedy(AttackConfig(w.name, dict(w.params), label=w.label), cell, None, True, {flag}))
    return out


def chains_of(cells: Iterable[Cell]) -> list[list[Cell]]:
    """Cells grouped into cascade chains (a cell on its own is a chain of one), in stage order."""
    cells = list(cells)
    ids = {c.cell_id for c in cells}
    nxt = {c.upstream: c for c in cells if c.upstream in ids}
    chains = []
    for head in (c for c in cells if c.upstream not in ids):
        chain = [head]
        while chain[-1].cell_id in nxt:
            chain.append(nxt[chain[-1].cell_id])
        chains.append(chain)
    return chains


def cross_hits(chains: list[list[Cell]], store: Store) -> list[tuple[str, Cell, Cell]]:
    """The cross-attack flags of a defense's chains as (flag, the white-box cell, the attack that
    beat it), compared on each chain's first stage as the report does (later stages hold
    cumulative outcomes)."""
    heads = {c[0].attack_cfg.display: c[0] for c in chains}
    union = sorted({float(e) for c in chains for e in c[0].grid})
    runs: dict[str, AttackRun] = {
        label: attack_run(store.outcomes(cell.cell_id), cell.grid if cell.attack.kind == "fixed" else union, cell.spec)
        for label, cell in heads.items()}
    return [(flag, heads[strong], heads[weak]) for flag, (weak, strong, _) in cross_attack_hits(runs).items()]


def _identity(cell: Cell) -> str:
    return json.dumps([cell.spec["attack"], int(cell.eot)], sort_keys=True, default=str)


def escalation_cells(cfg: SweepConfig, prep: Prepared, trained: Mapping[int, Mapping[str, Trained]],
                     cells: list[Cell], store: Store, done: dict[tuple[str, int], set[str]]) -> list[Cell]:
    """The escalated stages the finished ``cells`` ask for (their flags read from ``store``),
    not yet planned. ``trained`` holds each seed's models (by defense name, as
    :func:`robustbench_er.engine.sweep.train_defenses` returns them); ``done`` records, per
    (checkpoint, seed), the flags already escalated and is updated."""
    if not cfg.escalate:
        return []
    by_cell: dict[str, dict[str, str]] = {}
    for r in store.flags_frame().itertuples():
        by_cell.setdefault(str(r.cell_id), {})[str(r.flag)] = str(r.detail)
    new: list[Cell] = []
    for key, group in _groups(cells).items():
        seen = done.setdefault(key, set())
        chains = chains_of(group)
        names = _names(trained[key[1]])
        remedies: list[Remedy] = []
        for cell in (c for chain in chains for c in chain):
            here = by_cell.get(cell.cell_id, {})
            for flag in sorted(set(here) - seen):
                remedies += remedies_for(flag, cell, here, cfg, names.get(cell.defense, cell.defense))
        for flag, strong, weak in cross_hits(chains, store):
            if flag not in seen:
                remedies += remedies_for(flag, strong, {}, cfg, names.get(strong.defense, strong.defense), weak)
                seen.add(flag)
        seen |= {f for c in group for f in by_cell.get(c.cell_id, {})}
        new += _plan_remedies(dataclasses.replace(cfg, seed=key[1], seeds=None), prep, trained[key[1]],
                              chains, remedies, names)
    return new


def _plan_remedies(cfg: SweepConfig, prep: Prepared, trained: Mapping[str, Trained], chains: list[list[Cell]],
                   remedies: list[Remedy], names: Mapping[str, str]) -> list[Cell]:
    """The cells of ``remedies``, each appended to the end of its flagged cell's chain; a remedy
    whose attack already ran on this defense (same attack, parameters and EOT), or that cannot
    run on the model, is left out; two flags asking for the same stage share it."""
    existing = {_identity(c) for chain in chains for c in chain}
    chain_of = {c.cell_id: chain for chain in chains for c in chain}
    planned: dict[str, Remedy] = {}
    for r in remedies:
        try:
            probe = _cell(cfg, prep, trained, r, chain_of[r.flagged.cell_id][-1], names, r.flags)
        except UserInputError:
            continue  # e.g. a gradient remedy on a model declared non-differentiable
        ident = _identity(probe) + (f":reseed:{r.flagged.cell_id}" if r.reseed else "")
        if ident in existing and not r.reseed:
            continue
        if ident in planned:
            planned[ident].flags |= r.flags
        else:
            planned[ident] = r
    out: list[Cell] = []
    # the remedies that see the most of the model first: gradient, then score, then decision attacks
    for r in sorted(planned.values(), key=lambda r: ACCESS.index(get_attack(r.attack.name).access)):
        chain = chain_of[r.flagged.cell_id]
        cell = _cell(cfg, prep, trained, r, chain[-1], names, r.flags)
        chain.append(cell)  # the next remedy on this chain starts from this stage
        out.append(cell)
    return out


def _cell(cfg: SweepConfig, prep: Prepared, trained: Mapping[str, Trained], r: Remedy, last: Cell,
          names: Mapping[str, str], flags: set[str]) -> Cell:
    """The stage of remedy ``r`` after ``last`` (the end of the flagged cell's chain)."""
    d = names.get(r.flagged.defense, r.flagged.defense)
    eot = r.eot if r.eot is not None else int(r.flagged.eot)
    why = sorted(flags)
    a = dataclasses.replace(r.attack, label=f"{r.attack.display} (escalated: {', '.join(why)})")
    return build_cell(cfg, prep, trained, d, a, prep.grid if r.whole_grid else list(r.flagged.grid),
                      np.asarray(last.sample_ids), stage=int(last.spec.get("stage", 0)) + 1, eot=eot,
                      upstream=last.cell_id, extra={"escalated": why, "remedy_of": r.flagged.cell_id},
                      randomized=True if eot > 1 else None)


def possible_stages(cfg: SweepConfig, prep: Prepared, trained: Mapping[str, Trained], cells: list[Cell]) -> list[Cell]:
    """For ``--dry-run``: every stage a flag could add to ``cells`` (one seed's, all planned), as
    if each flag with a remedy fired on every cell; cross-attack flags excepted (their remedy is an
    attack of the sweep already listed). Nothing runs or is written."""
    if not cfg.escalate:
        return []
    out: list[Cell] = []
    for group in _groups(cells).values():
        chains = chains_of(group)
        names = _names(trained)
        remedies = [r for chain in chains for cell in chain for flag in REMEDIES
                    for r in remedies_for(flag, cell, {flag: ""}, cfg, names.get(cell.defense, cell.defense))
                    if flag != "curve-rises"]  # a rerun of a stage already listed
        out += _plan_remedies(cfg, prep, trained, chains, remedies, names)
    return out


def _groups(cells: list[Cell]) -> dict[tuple[str, int], list[Cell]]:
    """Cells by (checkpoint, seed): the unit a flag is escalated once for."""
    groups: dict[tuple[str, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault((str(c.spec["checkpoint"]), int(c.seed)), []).append(c)
    return groups


def _names(trained: Mapping[str, Trained]) -> dict[str, str]:
    """A defense's label -> its name in the sweep (the models attacks name left out)."""
    return {defense_label(d): d for d in trained if not d.startswith(("model:", "folder:"))}
