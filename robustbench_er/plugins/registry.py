"""Name-keyed registries for defenses, attacks, detectors and analyses (datasets: their registry is
the data layer's, :data:`robustbench_er.data.datasets.DATASETS`, re-exported here).

A registry is a dict behind a decorator. Built-in plugins and third-party plugins enter the
same way: each is a module declared in an entry-point group (``robustbench_er.defenses``,
``robustbench_er.attacks``, ``robustbench_er.datasets``) whose import registers it with the
decorator. A user can also load a plugin straight from a file (:func:`load_plugin_file`).

Plugins are validated when they register, so a broken plugin fails at ``robustbench-er list``
rather than an hour into a sweep. A duplicate name raises.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.registry import Registry, register_with

# re-exported: one registry per kind, datasets' in the data layer
from robustbench_er.core.registry import normalize as normalize
from robustbench_er.core.text import split_top_level, yaml_value
from robustbench_er.data.datasets import DATASETS as DATASETS
from robustbench_er.data.datasets import register_dataset as register_dataset
from robustbench_er.plugins.analysis import validate_analysis_class
from robustbench_er.plugins.attack import validate_attack_class
from robustbench_er.plugins.defense import validate_defense_class
from robustbench_er.plugins.detector import validate_detector_class

T = TypeVar("T")


def _validate_defense(name: str, obj: Any) -> None:

    validate_defense_class(name, obj)


def _validate_attack(name: str, obj: Any) -> None:

    validate_attack_class(name, obj)


def _validate_detector(name: str, obj: Any) -> None:

    validate_detector_class(name, obj)


def _validate_analysis(name: str, obj: Any) -> None:

    validate_analysis_class(name, obj)


DEFENSES: Registry[Any] = Registry("defense", "robustbench_er.defenses", _validate_defense)
ATTACKS: Registry[Any] = Registry("attack", "robustbench_er.attacks", _validate_attack)
DETECTORS: Registry[Any] = Registry("detector", "robustbench_er.detectors", _validate_detector)
ANALYSES: Registry[Any] = Registry("analysis", "robustbench_er.analyses", _validate_analysis)


def register_defense(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register_defense("trades")`` on a :class:`~robustbench_er.plugins.defense.Defense`."""
    return register_with(DEFENSES, name)


def register_attack(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register_attack("pgd")`` on an :class:`~robustbench_er.plugins.attack.Attack`."""
    return register_with(ATTACKS, name)


def register_detector(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register_detector("kd")`` on a :class:`~robustbench_er.engine.detection.Detector`."""
    return register_with(DETECTORS, name)


def get_detector(name: str) -> Any:
    return DETECTORS.get(name)


def list_detectors(pattern: str = "*") -> list[str]:
    return DETECTORS.names(pattern)


def register_analysis(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register_analysis("sparsity")`` on a :class:`~robustbench_er.plugins.analysis.Analysis`."""
    return register_with(ANALYSES, name)


def get_analysis(name: str) -> Any:
    return ANALYSES.get(name)


def list_analyses(pattern: str = "*") -> list[str]:
    return ANALYSES.names(pattern)


def split_variant(name: str) -> tuple[str, dict[str, Any]]:
    """``er-classifier[embed_dim=8,prior=cauchy]`` -> ``("er-classifier", {"embed_dim": 8, "prior": "cauchy"})``;
    a plain name -> ``(name, {})``. Values are read as YAML (``8`` an int, ``0.1`` a float)."""
    import re


    m = re.fullmatch(r"\s*([\w.-]+)\s*\[(.*)\]\s*", name)
    if not m:
        if "[" in name or "]" in name:
            raise UserInputError(f"Cannot read the defense {name!r}; write a variant as NAME[key=value,...].")
        return name, {}
    values: dict[str, Any] = {}
    for item in split_top_level(m.group(2)):
        if "=" not in item:
            raise UserInputError(f"Hyper-parameter {item!r} of the defense {name!r} must be key=value.")
        k, v = (t.strip() for t in item.split("=", 1))
        try:
            values[k] = yaml_value(v, f"hyper-parameter {k!r}")
        except ValueError as exc:
            raise UserInputError(f"Defense {name!r}: {exc}.") from None
    if not values:
        raise UserInputError(f"The defense variant {name!r} sets no hyper-parameter.")
    return m.group(1), values


_VARIANTS: dict[str, Any] = {}


def variant_label(base: str, values: dict[str, Any]) -> str:
    """The canonical name of a variant in leaderboards: ``er-classifier[embed_dim=8]``."""
    return f"{base}[{','.join(f'{k}={v}' for k, v in values.items())}]"


def get_defense(name: str) -> Any:
    """The defense class registered as ``name``. A variant ``NAME[key=value,...]`` gives a
    subclass whose presets carry those hyper-parameters (later overrides are applied on top of
    them; the variant's own values win) and whose ``label`` names it in leaderboards; its
    checkpoints are the base defense's with those hyper-parameters, shared with any other
    route to the same values."""
    base, values = split_variant(name)
    cls = DEFENSES.get(base)
    if not values:
        return cls
    label = variant_label(cls.name, values)
    if label not in _VARIANTS:
        def hparams(sub: Any, dataset: str, profile: str = "quick", overrides: dict[str, Any] | None = None,
                    _values: dict[str, Any] = values) -> Any:
            return cls.hparams.__func__(sub, dataset, profile, {**(overrides or {}), **_values})

        _VARIANTS[label] = type(cls.__name__ + "Variant", (cls,),
                                {"label": label, "variant": dict(values), "hparams": classmethod(hparams)})
    return _VARIANTS[label]


def defense_label(name: str) -> str:
    """How a defense appears in leaderboards: its registered name, or its variant's label."""
    cls = get_defense(name)
    return str(getattr(cls, "label", None) or cls.name)


def get_attack(name: str) -> Any:
    return ATTACKS.get(name)


def get_dataset_loader(name: str) -> Any:
    return DATASETS.get(name)


def list_defenses(pattern: str = "*") -> list[str]:
    return DEFENSES.names(pattern)


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.names(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0].rstrip('.')}" if text else type(exc).__name__


def load_plugin_file(path: str | Path) -> list[str]:
    """Import a user's plugin file; return the names it registered.

    Raises :class:`UserInputError` when the file does not exist, fails to import (any
    exception, a syntax error included; what it registered before failing is removed) or
    registers nothing.
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"Plugin file {str(path)!r} does not exist.")
    for reg in (DEFENSES, ATTACKS, DATASETS, DETECTORS, ANALYSES):
        reg.discover()
    before = {r.kind: r.registered() for r in (DEFENSES, ATTACKS, DATASETS, DETECTORS, ANALYSES)}
    mod_name = f"robustbench_er_user_plugin_{p.stem}_{abs(hash(str(p.resolve()))) % 10**8}"
    if mod_name in sys.modules:
        return list(getattr(sys.modules[mod_name], "__registered__", []))
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise UserInputError(f"Plugin file {str(path)!r} is not a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # any failure of the user's code is bad input, never a traceback
        del sys.modules[mod_name]
        for r in (DEFENSES, ATTACKS, DATASETS, DETECTORS, ANALYSES):  # forget what the file registered before it failed
            for n in r.registered() - before[r.kind]:
                r.unregister(n)
        raise UserInputError(f"Plugin file {str(path)!r} failed to load: {_one_line(exc)}.") from exc
    added = []
    for r in (DEFENSES, ATTACKS, DATASETS, DETECTORS, ANALYSES):
        added += [f"{r.kind}:{n}" for n in r.registered() - before[r.kind]]
    if not added:
        del sys.modules[mod_name]
        raise UserInputError(
            f"Plugin file {str(path)!r} registers nothing; decorate a class with"
            " @register_defense(...) or @register_attack(...)."
        )
    module.__registered__ = sorted(added)  # type: ignore[attr-defined]
    return sorted(added)
