"""Typed inputs: every experiment key and CLI flag goes through one schema before any work.

The ``sweep`` command's flags and an experiment file's keys are parsed into the same pydantic
model (:class:`SweepSpec`), and one builder turns it into :class:`~robustbench_er.engine.sweep.SweepConfig`
objects. An experiment file is checked whole (every sweep, every name against the registries,
attack parameters, defense hyper-parameters, epsilon grids, the output folder) before the first
sweep trains or writes anything. Every failure is a :class:`UserInputError` with one sentence
that names the field (``sweeps[1].attacks[0]: unknown attack 'pgdx' (did you mean 'pgd'?).``),
so the CLI exits 2 and no store is touched.

Defaults live here only (the CLI's flags default to "not given").
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from robustbench_er.core.device import resolve_device
from robustbench_er.core.errors import UserInputError
from robustbench_er.core.metrics import EPS_TOL, L2_UNITS, to_norm, unit_scale
from robustbench_er.core.norms import NORMS, canonical_norm
from robustbench_er.core.text import (
    check_dataclass_values,
    parse_attack_text,
    parse_eps,
    parse_number,
    split_top_level,
)
from robustbench_er.data.datasets import load_dataset
from robustbench_er.engine.spec import (
    MODES,
    SEARCHES,
    AttackConfig,
    SweepConfig,
    make_attack,
    resolve_model,
    validate_grid,
)
from robustbench_er.engine.trained import checkpoint_mismatch
from robustbench_er.models.checkpoints import read_meta
from robustbench_er.plugins.registry import ATTACKS, DATASETS, DEFENSES, get_defense, split_variant
from robustbench_er.report.study import study_variants

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")

#: experiment-level keys that are not part of a sweep
#: keys a ``detect:`` or ``analyze:`` job takes from the experiment file's top level unless it sets its own
DETECT_SHARED = ("dataset", "data_dir", "profile", "seed", "device", "out")
EXPERIMENT_KEYS = ("name", "description", "plugins", "sweeps", "detect", "analyze", "study")


# ---- the schema ---------------------------------------------------------------------------------

def _custom(msg: str) -> PydanticCustomError:
    return PydanticCustomError("input", msg)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=False)


class AttackSpec(_Model):
    """One attack: a registry name, parameters, and optionally its own grid and sample count."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    eps: list[float] | None = None
    samples: int | None = Field(default=None, ge=1)
    label: str | None = None

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> Any:
        return None if v is None else _eps_or_error(v)

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, v: Any) -> Any:
        return {} if v is None else v


class DefenseSpec(_Model):
    """One defense: a registry name and hyper-parameter overrides."""

    name: str
    overrides: dict[str, Any] = Field(default_factory=dict)


class ExecutorSpec(_Model):
    """Where cells and training jobs run: here (``local``) or as Ray tasks (``ray``)."""

    kind: Literal["local", "ray"] = "local"
    #: Ray cluster address (``auto``, ``ray://host:10001``); None starts a local Ray
    address: str | None = None
    #: GPUs each task asks Ray for (Ray pins them through CUDA_VISIBLE_DEVICES)
    gpus_per_cell: float = Field(default=0, ge=0)
    #: CPUs of the local Ray started when no address is given (None: every core)
    workers: int | None = Field(default=None, ge=1)
    #: torch threads inside each task
    threads_per_task: int = Field(default=1, ge=1)

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v


class SweepSpec(_Model):
    """Every key a sweep takes, with the defaults (the only place they are written down)."""

    dataset: str
    defenses: list[DefenseSpec]
    attacks: list[AttackSpec]
    eps: list[float]
    norm: str = "Linf"
    #: evaluation points (a fixed seeded subset of the test split); null / "all" = every one
    samples: int | None = Field(default=500, ge=1)
    profile: Literal["quick", "paper"] = "quick"
    seed: int = 0
    #: several seeds (``0,1,2`` or a list): the sweep is trained and run once per seed and the
    #: leaderboards add mean ± std rows; not together with ``seed`` in one place (a sweep's own
    #: key replaces the other one given at the top of an experiment file)
    seeds: list[int] | None = None
    out: str = "results"
    data_dir: str | None = None
    download: bool = False
    device: str = "auto"
    #: points per attack call; "auto" (the default): 128 on a CPU, the largest that fits on a GPU
    batch_size: int | None = Field(default=None, ge=1)
    eot: int = Field(default=10, ge=1)
    headline: float | None = Field(default=None, ge=0)
    #: epsilons of the per-eps table in the Markdown leaderboard (the layout of Table 1
    #: in Li et al. (ICLR submission))
    table_eps: list[float] | None = None
    #: attacks (by label) that get a per-eps table of their own beside the worst case (e.g. PGD
    #: alone, as that table prints it)
    table_attacks: list[str] | None = None
    mode: Literal["cascade", "independent"] = "cascade"
    search: Literal["bisect", "ascending"] = "bisect"
    #: after the checks, run each flag's remedy as further cascade stages (docs/flags.md)
    escalate: bool = True
    l2_unit: Literal["l2", "rms", "mse"] = "l2"
    #: defense name -> a checkpoint folder to evaluate instead of training
    checkpoints: dict[str, str] = Field(default_factory=dict)
    #: ``ray`` or ``{kind: ray, address: ..., gpus_per_cell: 1}``; default: this process
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() == "auto" else v

    @field_validator("executor", mode="before")
    @classmethod
    def _executor(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    @field_validator("defenses", mode="before")
    @classmethod
    def _defenses(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [{"name": n} for n in split_top_level(v)]
        if isinstance(v, Mapping):
            return [_defense_item(k, o) for k, o in v.items()]
        if isinstance(v, list):
            out: list[Any] = []
            for item in v:
                if isinstance(item, str):
                    out.append({"name": item})
                elif isinstance(item, Mapping) and "name" in item:
                    out.append(item)
                elif isinstance(item, Mapping) and len(item) == 1:
                    k, o = next(iter(item.items()))
                    out.append(_defense_item(k, o))
                else:
                    raise _custom(f"each defense must be a name or {{name: {{hyper-parameter: value}}}}, got {item!r}")
            return out
        raise _custom(f"must be a list of defense names (or a mapping of names to hyper-parameters), got {v!r}")

    @field_validator("attacks", mode="before")
    @classmethod
    def _attacks(cls, v: Any) -> Any:
        items = split_top_level(v) if isinstance(v, str) else v
        if not isinstance(items, list):
            raise _custom(f"must be a list of attack names or {{name, params, eps, samples, label}} mappings, got {v!r}")
        out = []
        for item in items:
            if isinstance(item, str):
                try:
                    out.append(parse_attack_text(item))
                except ValueError as exc:
                    raise _custom(str(exc)) from exc
            else:
                out.append(item)
        return out

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> Any:
        return _eps_or_error(v)

    @field_validator("table_eps", mode="before")
    @classmethod
    def _table_eps(cls, v: Any) -> Any:
        return None if v is None else _eps_or_error(v)

    @field_validator("table_attacks", mode="before")
    @classmethod
    def _table_attacks(cls, v: Any) -> Any:
        if v is None or isinstance(v, list):
            return v
        return [s.strip() for s in split_top_level(str(v)) if s.strip()]

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v: Any) -> Any:
        if v is None:
            return v
        items = split_top_level(v) if isinstance(v, str) else [v] if isinstance(v, int) else v
        if not isinstance(items, list) or not items:
            raise _custom(f"must be distinct integers, e.g. 0,1,2, got {v!r}")
        out = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise _custom(f"must be distinct integers, e.g. 0,1,2, got {v!r}")
            try:
                out.append(int(item.strip()) if isinstance(item, str) else item)
            except ValueError:
                raise _custom(f"must be distinct integers, e.g. 0,1,2, got {v!r}") from None
        if len(set(out)) != len(out):
            raise _custom(f"must be distinct integers, e.g. 0,1,2, got {v!r} (a seed is repeated)")
        return out

    @field_validator("headline", mode="before")
    @classmethod
    def _headline(cls, v: Any) -> Any:
        if v is None or isinstance(v, bool):
            return v
        try:
            return parse_number(v)
        except ValueError as exc:
            raise _custom(f"must be a number >= 0 (e.g. 0.3 or 8/255); {exc}") from exc

    @field_validator("samples", mode="before")
    @classmethod
    def _samples(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() == "all" else v

    @field_validator("norm", mode="before")
    @classmethod
    def _norm(cls, v: Any) -> Any:

        try:
            return canonical_norm(str(v))
        except UserInputError as exc:
            raise _custom(f"must be one of {', '.join(NORMS)}, got {v!r}") from exc

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v: Any) -> Any:
        if not (isinstance(v, str) and _DEVICE_RE.fullmatch(v.strip())):
            raise _custom(f"must be {DEVICE_HELP}, got {v!r}")
        return v.strip()

    @field_validator("out", "data_dir", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return str(v) if isinstance(v, Path) else v


def _defense_item(name: Any, overrides: Any) -> dict[str, Any]:
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        raise _custom(f"the hyper-parameters of defense {name!r} must be a mapping, got {overrides!r}")
    return {"name": name, "overrides": dict(overrides)}


def _eps_or_error(v: Any) -> list[float]:
    try:
        return parse_eps(v)
    except ValueError as exc:
        raise _custom(f"cannot read the epsilon grid ({exc}); use START:STOP:STEP, a,b,c or a list (8/255 allowed)") from exc


class _ExperimentFile(BaseModel):
    """The keys of an experiment file that are not a sweep's (the rest goes to SweepSpec)."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    description: str | None = None
    plugins: list[str] = Field(default_factory=list)
    sweeps: list[dict[str, Any]] | None = None
    #: detection jobs (the ``detect`` command's keys), after the sweeps
    detect: list[dict[str, Any]] | None = None
    #: analysis jobs (the ``analyze`` command's keys), after the detection jobs
    analyze: list[dict[str, Any]] | None = None
    #: hyper-parameter studies: defense variants added to the sweep, plotted after it
    study: list[dict[str, Any]] | None = None

    @field_validator("detect", "analyze", "study", mode="before")
    @classmethod
    def _detect(cls, v: Any) -> Any:
        if isinstance(v, Mapping):
            return [v]
        if v is not None and not (isinstance(v, list) and all(isinstance(s, Mapping) for s in v)):
            raise _custom(f"must be a mapping of the detect command's keys, or a list of them, got {v!r}")
        return v

    @field_validator("plugins", mode="before")
    @classmethod
    def _plugins(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, (str, Path)):
            return [str(v)]
        return v

    @field_validator("sweeps", mode="before")
    @classmethod
    def _sweeps(cls, v: Any) -> Any:
        if v is not None and not (isinstance(v, list) and all(isinstance(s, Mapping) for s in v)):
            raise _custom(f"must be a list of mappings, each overriding some keys of the experiment, got {v!r}")
        return v


# ---- errors -> one sentence ---------------------------------------------------------------------

#: how a field is named when it came from a CLI flag
CLI_NAMES = {"defenses": "--defense", "attacks": "--attack", "checkpoints": "--checkpoint"}

_WANTS = {
    "samples": "an integer >= 1 (or all)",
    "batch_size": "an integer >= 1 (or auto)",
    "eot": "an integer >= 1",
    "seed": "an integer",
    "seeds": "distinct integers, e.g. 0,1,2",
    "headline": "a number >= 0 (e.g. 0.3 or 8/255)",
    "table_eps": "epsilons, e.g. 0,0.1,0.2 or 0:0.4:0.1",
    "table_attacks": "attack labels of the sweep, e.g. pgd",
    "profile": "quick or paper",
    "mode": " or ".join(MODES),
    "search": " or ".join(SEARCHES),
    "l2_unit": f"{', '.join(L2_UNITS[:-1])} or {L2_UNITS[-1]}",
    "download": "true or false",
    "escalate": "true or false",
}


def _loc_text(loc: Sequence[Any], prefix: str, cli: bool) -> str:
    parts: list[str] = []
    for i, p in enumerate(loc):
        if isinstance(p, int):
            if not cli:
                parts[-1] += f"[{p}]"
        elif i == 0 and cli:
            parts.append(CLI_NAMES.get(str(p), "--" + str(p).replace("_", "-")))
        else:
            parts.append(str(p))
    text = ".".join(parts)
    return f"{prefix}.{text}" if prefix and text else (prefix or text)


def _sentence(where: str, msg: str) -> str:
    msg = msg.strip().rstrip(".")
    if len(msg) > 1 and msg[0].isupper() and msg[1].islower():
        msg = msg[0].lower() + msg[1:]
    return f"{where}: {msg}." if where else f"{msg[0].upper()}{msg[1:]}."


def _error_sentence(exc: ValidationError, prefix_for: Callable[[str, str], str], cli: bool,
                    known: Sequence[str]) -> str:
    err = exc.errors()[0]
    loc = list(err.get("loc", ()))
    # pydantic names the branch of a union in the location (e.g. 'int'); drop those
    loc = [p for p in loc if not (isinstance(p, str) and p in ("int", "float", "str", "none", "list[float]"))]
    kind = err.get("type", "")
    top = str(loc[0]) if loc else ""
    where = _loc_text(loc, prefix_for(top, kind), cli)
    value = err.get("input")
    if kind == "extra_forbidden":
        return _sentence(where, f"unknown key; known keys: {', '.join(known)}")
    if kind == "missing":
        return _sentence(where, "missing; every sweep needs it (at the top of the file or in the sweep)"
                         if prefix_for(top, kind) else "missing; it is required")
    if kind == "input":
        return _sentence(where, str(err.get("msg", "")))
    msg = str(err.get("msg", "invalid value"))
    msg = re.sub(r"^(Input|Value) should be", "must be", msg)
    msg = re.sub(r"^Value error, ", "", msg)
    if len(loc) == 1 and top in _WANTS:
        msg = f"must be {_WANTS[top]}"
    return _sentence(where, f"{msg}, got {value!r}")


def _validate_spec(raw: Mapping[str, Any], prefix_for: Callable[[str, str], str], cli: bool) -> SweepSpec:
    try:
        return SweepSpec.model_validate(dict(raw))
    except ValidationError as exc:
        known = sorted(SweepSpec.model_fields) + ([] if cli else list(EXPERIMENT_KEYS))
        raise UserInputError(_error_sentence(exc, prefix_for, cli, sorted(known))) from None


# ---- semantic checks (registries, grids, plugin dataclasses, paths) -------------------------------

def _lookup(registry: Any, kind: str, name: str, where: str) -> Any:
    if name in registry:
        return registry.get(name)
    known = registry.names()
    close = difflib.get_close_matches(name.strip().lower(), known, n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else f"; known: {', '.join(known) or 'none'}"
    raise UserInputError(f"{where}: unknown {kind} {name!r}{hint}.")


def _reraise(where: str, exc: Exception) -> UserInputError:
    if isinstance(exc, UserInputError):
        return UserInputError(_sentence(where, str(exc)))
    return UserInputError(_sentence(where, f"{type(exc).__name__}: {exc}"))


def check_output_folder(path: str | Path, where: str = "out") -> None:
    """Refuse an output folder that cannot be created or written, before any work starts.

    Permission bits are not enough (root passes them, and ``/proc`` or a read-only mount refuse
    root too): the folder, or its nearest existing parent, is tried with a file or folder made
    and removed at once."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserInputError(f"{where}: {str(path)!r} exists and is not a folder.")
        try:
            with tempfile.TemporaryFile(dir=p):
                pass
        except OSError as exc:
            raise UserInputError(f"{where}: the folder {str(path)!r} is not writable ({exc.strerror or exc}).") from None
        for name in ("store.sqlite", "checkpoints"):
            f = p / name
            if f.exists() and not os.access(f, os.W_OK):
                raise UserInputError(f"{where}: {str(f)!r} is not writable.")
        return
    a = p.absolute().parent
    while not a.exists():
        a = a.parent
    if not a.is_dir():
        raise UserInputError(f"{where}: {str(path)!r} cannot be created because {str(a)!r} is a file.")
    try:
        os.rmdir(tempfile.mkdtemp(dir=a))
    except OSError as exc:
        raise UserInputError(f"{where}: {str(path)!r} cannot be created in {str(a)!r}"
                             f" ({exc.strerror or exc}).") from None


def check_device(name: str, where: str = "device") -> None:

    try:
        resolve_device(name)
    except UserInputError as exc:
        raise _reraise(where, exc) from None


def _registered_classes(spec: SweepSpec, at: Callable[..., str]) -> tuple[list[Any], list[Any]]:
    """Check the sweep's dataset, defenses and attacks against the registries; return classes."""
    _lookup(DATASETS, "dataset", spec.dataset, at("dataset"))
    if spec.seeds is not None and "seed" in spec.model_fields_set:
        raise UserInputError(f"{at('seeds')}: give either {at('seed')} or {at('seeds')}, not both.")
    if not spec.defenses:
        raise UserInputError(_sentence(at("defenses"), "name at least one defense"))
    if not spec.attacks:
        raise UserInputError(_sentence(at("attacks"), "name at least one attack"))
    defense_classes = []
    for i, d in enumerate(spec.defenses):  # NAME or a variant NAME[key=value,...]
        try:
            base, _ = split_variant(d.name)
        except UserInputError as exc:
            raise _reraise(at("defenses", i), exc) from None
        _lookup(DEFENSES, "defense", base, at("defenses", i))
        defense_classes.append(get_defense(d.name))
    attack_classes = [_lookup(ATTACKS, "attack", a.name, at("attacks", i))
                      for i, a in enumerate(spec.attacks)]
    return defense_classes, attack_classes


def _load_sweep_data(spec: SweepSpec, at: Callable[..., str]) -> Any:
    """Check the device and the output folder, then load the sweep's dataset."""
    check_device(spec.device, at("device"))
    check_output_folder(spec.out, at("out"))
    try:
        return load_dataset(spec.dataset, spec.data_dir, spec.download)
    except Exception as exc:
        raise _reraise(at("dataset"), exc) from None


def _checked_grid(spec: SweepSpec, dim: int, grid: list[float], loc: str) -> list[float]:
    """Check an epsilon grid in the sweep's norm and L2 unit; return a copy of it."""
    scale = unit_scale(spec.norm, spec.l2_unit, dim)
    try:
        unit = spec.l2_unit if spec.norm == "L2" else None
        validate_grid([to_norm(e, unit, scale) for e in grid], spec.norm, dim)
    except UserInputError as exc:
        raise _reraise(loc, exc) from None
    return list(grid)


def _defense_overrides(spec: SweepSpec, defense_classes: list[Any], data: Any,
                       at: Callable[..., str], cli: bool) -> dict[str, dict[str, Any]]:
    """Check each defense's hyper-parameters with its overrides; return the overrides by name."""
    overrides: dict[str, dict[str, Any]] = {}
    for i, (d, cls) in enumerate(zip(spec.defenses, defense_classes)):
        try:
            cls.hparams(data.spec.models_on, spec.profile, d.overrides)
        except Exception as exc:
            raise _reraise("--set" if cli and d.overrides else at("defenses", i), exc) from None
        if d.overrides:
            overrides[d.name] = dict(d.overrides)
    return overrides


def _check_checkpoints(spec: SweepSpec, names: list[str], data: Any, at: Callable[..., str],
                       cli: bool) -> None:
    """Check that each checkpoint folder holds its defense, trained on the sweep's dataset."""
    for dname, folder in spec.checkpoints.items():
        loc = at("checkpoints", dname) if not cli else "--checkpoint"
        if dname not in names:
            raise UserInputError(f"{loc}: defense {dname!r} is not among the sweep's defenses.")
        cls = get_defense(dname)
        try:
            meta = read_meta(Path(folder))
        except Exception as exc:
            raise _reraise(loc, exc) from None
        problem = checkpoint_mismatch(meta, cls, data)
        if problem:
            raise UserInputError(f"{loc}: checkpoint {folder!r} {problem}.")


def _checked_attacks(spec: SweepSpec, attack_classes: list[Any], *, data: Any, dim: int, n: int,
                     names: list[str], overrides: dict[str, dict[str, Any]],
                     at: Callable[..., str], cli: bool) -> list[AttackConfig]:
    """Check each attack's grid, samples, parameters and the models they name; return configs."""
    attacks = []
    for i, (a, acls) in enumerate(zip(spec.attacks, attack_classes)):
        loc = at("attacks", i)
        eps = _checked_grid(spec, dim, a.eps, f"{loc}.eps") if a.eps is not None else None
        ac = AttackConfig(a.name, dict(a.params), eps, a.samples, a.label)
        if a.samples is not None and a.samples > n:
            raise UserInputError(f"{loc}.samples: must be between 1 and the sweep's {n} samples,"
                                 f" got {a.samples}.")
        try:
            check_dataclass_values(acls.Params, a.params, "parameter", acls.name)
            attack = make_attack(ac, spec.norm, False, spec.eot)
            # a model a parameter names: a defense or a checkpoint folder
            for param in attack.needs_models:
                resolve_model(getattr(attack.params, param), param, data=data, profile=spec.profile,
                              defenses=names, overrides=overrides, checkpoints=spec.checkpoints)
        except Exception as exc:
            raise _reraise(loc if not cli else f"--attack {a.label or a.name}", exc) from None
        attacks.append(ac)
    return attacks


def _check_on_grid(value: float, points: set[float], loc: str) -> None:
    """Refuse an epsilon (the headline, a table's) that is not a point of the sweep's grids."""
    if not any(abs(value - p) <= EPS_TOL for p in points):
        near = min(points, key=lambda p: abs(p - value))
        raise UserInputError(f"{loc}: {value} is not on the sweep's epsilon grid"
                             f" (the nearest grid point is {near}).")


def _check_tables(spec: SweepSpec, grid: list[float], attacks: list[AttackConfig],
                  at: Callable[..., str]) -> None:
    """Check the headline, the table epsilons and the table attacks against the sweep."""
    points = set(grid).union(*(a.eps or [] for a in attacks))
    if spec.headline is not None:
        _check_on_grid(spec.headline, points, at("headline"))
    for e in spec.table_eps or []:
        _check_on_grid(e, points, at("table_eps"))
    labels = [a.display for a in attacks]
    for label in spec.table_attacks or []:
        if label not in labels:
            raise UserInputError(f"{at('table_attacks')}: {label!r} is not an attack of this sweep"
                                 f" (its attacks: {', '.join(labels)}).")


def to_sweep_config(spec: SweepSpec, *, where: str = "", cli: bool = False, progress: bool = True) -> Any:
    """Check ``spec`` against the registries, the dataset and the plugins' typed parameters and
    return the SweepConfig; every error is a UserInputError naming the field."""

    def at(*loc: Any) -> str:
        return _loc_text(loc, where, cli)

    defense_classes, attack_classes = _registered_classes(spec, at)
    data = _load_sweep_data(spec, at)
    dim = 1
    for s in data.spec.shape:
        dim *= int(s)
    total = len(data.y_test)
    grid = _checked_grid(spec, dim, spec.eps, at("eps"))
    n = total if spec.samples is None else spec.samples
    if not 1 <= n <= total:
        raise UserInputError(
            f"{at('samples')}: must be between 1 and the test split size of {data.spec.name} ({total}), got {n}."
        )

    names = [d.name for d in spec.defenses]
    overrides = _defense_overrides(spec, defense_classes, data, at, cli)
    _check_checkpoints(spec, names, data, at, cli)
    attacks = _checked_attacks(spec, attack_classes, data=data, dim=dim, n=n, names=names,
                               overrides=overrides, at=at, cli=cli)
    _check_tables(spec, grid, attacks, at)

    return SweepConfig(
        dataset=spec.dataset, defenses=names, attacks=attacks, eps=grid, norm=spec.norm, samples=spec.samples,
        profile=spec.profile, seed=spec.seeds[0] if spec.seeds else spec.seed, seeds=spec.seeds, out=Path(spec.out),
        data_dir=spec.data_dir, download=spec.download,
        device=spec.device, batch_size=spec.batch_size, eot=spec.eot, headline=spec.headline, table_eps=spec.table_eps,
        table_attacks=spec.table_attacks,
        defense_overrides=overrides, checkpoints=dict(spec.checkpoints), progress=progress,
        mode=spec.mode, search=spec.search, l2_unit=spec.l2_unit, executor=spec.executor.model_dump(),
        escalate=spec.escalate,
    )


# ---- the two entry points: CLI flags and experiment files ----------------------------------------

def sweep_config_from_flags(flags: Mapping[str, Any], *, progress: bool = True) -> Any:
    """The ``sweep`` command's flags (None = not given) -> a checked SweepConfig."""
    raw = {k: v for k, v in flags.items() if v is not None}
    try:
        spec = _validate_spec(raw, lambda top, kind: "", cli=True)
        return to_sweep_config(spec, cli=True, progress=progress)
    except UserInputError:
        raise
    except Exception as exc:  # whatever else reading the inputs raises is still about the inputs
        raise UserInputError(f"The sweep's flags cannot be read ({type(exc).__name__}: {exc}).") from exc


@dataclass
class Experiment:
    """An experiment file parsed into typed sweeps; ``configs()`` checks them all."""

    plugins: list[str]
    specs: list[SweepSpec]
    wheres: list[str]
    name: str | None = None
    #: detection jobs: (the job's keys with the file's shared ones filled in, where it is)
    detect: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    #: analysis jobs, the same way
    analyze: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    #: hyper-parameter studies (robustbench_er.report.study), their variants already among the defenses
    studies: list[dict[str, Any]] = field(default_factory=list)

    def configs(self, progress: bool = True) -> list[Any]:
        out = []
        for spec, where in zip(self.specs, self.wheres):
            try:
                out.append(to_sweep_config(spec, where=where, progress=progress))
            except UserInputError:
                raise
            except Exception as exc:  # whatever else checking raises is still about the inputs
                raise _reraise(where or "the experiment", exc) from exc
        return out


def parse_experiment(raw: Any, *, out: str | None = None, device: str | None = None,
                     source: str = "the experiment") -> Experiment:
    """An experiment mapping (as read from YAML) -> typed sweeps, every sweep checked for shape.

    ``out`` and ``device`` (from the command line) replace the file's values when given.
    """
    try:
        return _parse_experiment(raw, out, device, source)
    except UserInputError:
        raise
    except Exception as exc:  # anything else while reading inputs is still the user's input
        raise UserInputError(f"{source} cannot be read ({type(exc).__name__}: {exc}).") from exc


def _parse_experiment(raw: Any, out: str | None, device: str | None, source: str) -> Experiment:
    if not isinstance(raw, Mapping):
        raise UserInputError(f"{source} must be a mapping of keys to values, got {type(raw).__name__}.")
    try:
        exp = _ExperimentFile.model_validate(dict(raw))
    except ValidationError as exc:
        raise UserInputError(_error_sentence(exc, lambda top, kind: "", False, [])) from None
    base = {k: v for k, v in raw.items() if k not in EXPERIMENT_KEYS}
    given = {k: v for k, v in (("out", out), ("device", device)) if v is not None}
    jobs: dict[str, list[tuple[dict[str, Any], str]]] = {"detect": [], "analyze": []}
    for section, items in (("detect", exp.detect or []), ("analyze", exp.analyze or [])):
        for i, job in enumerate(items):
            shared = {k: base[k] for k in DETECT_SHARED if k in base}
            if isinstance(base.get("defenses"), list) and all(isinstance(d, str) for d in base["defenses"]):
                shared["defenses"] = base["defenses"]
            jobs[section].append(({**shared, **job, **given}, f"{section}[{i}]." if len(items) > 1 else f"{section}."))
    if exp.study:

        defenses = base.get("defenses") or []
        defenses = [defenses] if isinstance(defenses, (str, Mapping)) else list(defenses)
        for i, st in enumerate(exp.study):
            added = study_variants(st, f"study[{i}]" if len(exp.study) > 1 else "study")
            defenses += [v for v in added if v not in defenses]
        base["defenses"] = defenses
    specs, wheres = [], []
    if (exp.detect or exp.analyze) and "attacks" not in base and not exp.sweeps:  # no sweep in this experiment
        return Experiment(exp.plugins, [], [], exp.name, jobs["detect"], jobs["analyze"], list(exp.study or []))
    sweeps = exp.sweeps if exp.sweeps else [{}]
    for i, extra in enumerate(sweeps):
        where = f"sweeps[{i}]" if exp.sweeps else ""
        merged = {**base, **extra, **given}
        for key, other in (("seed", "seeds"), ("seeds", "seed")):
            if key in extra and other not in extra:  # a sweep's own seed or seeds replaces the file's other
                merged.pop(other, None)

        def prefix_for(top: str, kind: str, extra: Mapping[str, Any] = extra, where: str = where) -> str:
            return where if where and (top in extra or kind == "missing") else ""

        specs.append(_validate_spec(merged, prefix_for, cli=False))
        # semantic errors in keys the sweep does not set are named at the top level
        wheres.append(where)
    return Experiment(exp.plugins, specs, wheres, exp.name, jobs["detect"], jobs["analyze"], list(exp.study or []))


def read_experiment(path: str | Path) -> dict[str, Any]:
    """Read an experiment YAML file into a mapping (one sentence on any failure)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"Experiment file {str(path)!r} does not exist.")
    try:
        d = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"Experiment file {str(path)!r} cannot be read ({first}).") from exc
    if not isinstance(d, dict):
        raise UserInputError(f"Experiment file {str(path)!r} must be a mapping of keys to values.")
    return d
