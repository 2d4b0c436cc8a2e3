"""Name-keyed registries for defenses, attacks and datasets.

A registry is a dict behind a decorator. Built-in plugins and third-party plugins enter the
same way: each is a module declared in an entry-point group (``robustbench_er.defenses``,
``robustbench_er.attacks``, ``robustbench_er.datasets``) whose import registers it with the
decorator. A user can also load a plugin straight from a file (:func:`load_plugin_file`).

Plugins are validated when they register, so a broken plugin fails at ``robustbench-er list``
rather than an hour into a sweep. A duplicate name raises.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from robustbench_er.core.errors import UserInputError

log = logging.getLogger(__name__)
T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named plugins with validation, wildcard listing and entry-point discovery."""

    def __init__(self, kind: str, group: str, validate: Callable[[str, Any], None]) -> None:
        self.kind = kind
        self.group = group
        self._validate = validate
        self._items: dict[str, T] = {}
        self._discovered = False
        self._origin: dict[str, str] = {}

    def register(self, name: str, obj: T, origin: str = "") -> T:
        key = normalize(name)
        if not key:
            raise ValueError(f"A {self.kind} needs a non-empty name.")
        if key in self._items:
            raise ValueError(
                f"The {self.kind} name {key!r} is already registered"
                f" (by {self._origin.get(key) or 'an earlier plugin'}); pick another name."
            )
        self._validate(key, obj)
        self._items[key] = obj
        self._origin[key] = origin or getattr(obj, "__module__", "")
        return obj

    def unregister(self, name: str) -> None:
        key = normalize(name)
        self._items.pop(key, None)
        self._origin.pop(key, None)

    def discover(self) -> None:
        """Import every module declared in this registry's entry-point group once."""
        if self._discovered:
            return
        self._discovered = True
        for ep in entry_points(group=self.group):
            if normalize(ep.name) in self._items:
                continue
            try:
                loaded = ep.load()
            except ModuleNotFoundError as exc:
                log.warning("%s plugin %r (%s) is declared but not importable: %s", self.kind, ep.name, ep.value, exc)
                continue
            except Exception as exc:  # a broken third-party plugin must not hide the others
                log.warning("could not load %s plugin %r (%s): %s", self.kind, ep.name, ep.value, exc)
                continue
            if normalize(ep.name) not in self._items and not isinstance(loaded, type(sys)):
                self.register(ep.name, loaded, origin=ep.value)

    def get(self, name: str) -> T:
        self.discover()
        key = normalize(name)
        if key in self._items:
            return self._items[key]
        close = difflib.get_close_matches(key, list(self._items), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._items)) or "none"
        raise UserInputError(f"Unknown {self.kind} {name!r}.{hint} Known: {known}.")

    def names(self, pattern: str = "*") -> list[str]:
        self.discover()
        pat = normalize(pattern) or "*"
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pat))

    def __contains__(self, name: object) -> bool:
        self.discover()
        return isinstance(name, str) and normalize(name) in self._items

    def origin(self, name: str) -> str:
        return self._origin.get(normalize(name), "")


def normalize(name: str) -> str:
    return name.strip().lower()


def _validate_defense(name: str, obj: Any) -> None:
    from robustbench_er.plugins.defense import validate_defense_class

    validate_defense_class(name, obj)


def _validate_attack(name: str, obj: Any) -> None:
    from robustbench_er.plugins.attack import validate_attack_class

    validate_attack_class(name, obj)


def _validate_detector(name: str, obj: Any) -> None:
    from robustbench_er.engine.detection import validate_detector_class

    validate_detector_class(name, obj)


def _validate_analysis(name: str, obj: Any) -> None:
    from robustbench_er.plugins.analysis import validate_analysis_class

    validate_analysis_class(name, obj)


def _validate_dataset(name: str, obj: Any) -> None:
    if not callable(obj):
        raise TypeError(f"Dataset {name!r} must be registered with a loader function.")


DEFENSES: Registry[Any] = Registry("defense", "robustbench_er.defenses", _validate_defense)
ATTACKS: Registry[Any] = Registry("attack", "robustbench_er.attacks", _validate_attack)
DATASETS: Registry[Any] = Registry("dataset", "robustbench_er.datasets", _validate_dataset)
DETECTORS: Registry[Any] = Registry("detector", "robustbench_er.detectors", _validate_detector)
ANALYSES: Registry[Any] = Registry("analysis", "robustbench_er.analyses", _validate_analysis)


def _decorator(reg: Registry[Any], name: str) -> Callable[[T], T]:
    def deco(obj: T) -> T:
        reg.register(name, obj)
        if isinstance(obj, type) and not obj.__dict__.get("name"):
            obj.name = normalize(name)  # type: ignore[attr-defined]
        return obj

    return deco


def register_defense(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register_defense("trades")`` on a :class:`~robustbench_er.plugins.defense.Defense`."""
    return _decorator(DEFENSES, name)


def register_attack(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register_attack("pgd")`` on an :class:`~robustbench_er.plugins.attack.Attack`."""
    return _decorator(ATTACKS, name)


def register_detector(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register_detector("kd")`` on a :class:`~robustbench_er.engine.detection.Detector`."""
    return _decorator(DETECTORS, name)


def get_detector(name: str) -> Any:
    return DETECTORS.get(name)


def list_detectors(pattern: str = "*") -> list[str]:
    return DETECTORS.names(pattern)


def register_analysis(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register_analysis("sparsity")`` on a :class:`~robustbench_er.plugins.analysis.Analysis`."""
    return _decorator(ANALYSES, name)


def get_analysis(name: str) -> Any:
    return ANALYSES.get(name)


def list_analyses(pattern: str = "*") -> list[str]:
    return ANALYSES.names(pattern)


def register_dataset(name: str) -> Callable[[T], T]:
    """Function decorator for a dataset loader ``(data_dir, download) -> Dataset``."""
    return _decorator(DATASETS, name)


def split_variant(name: str) -> tuple[str, dict[str, Any]]:
    """``er-classifier[embed_dim=8,prior=cauchy]`` -> ``("er-classifier", {"embed_dim": 8, "prior": "cauchy"})``;
    a plain name -> ``(name, {})``. Values are read as YAML (``8`` an int, ``0.1`` a float)."""
    import re

    from robustbench_er.inputs.config import split_top_level, yaml_value

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
    import robustbench_er.data.datasets  # noqa: F401  (registers the built-in datasets)

    return DATASETS.get(name)


def list_defenses(pattern: str = "*") -> list[str]:
    return DEFENSES.names(pattern)


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.names(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    import robustbench_er.data.datasets  # noqa: F401

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
    before = {r.kind: set(r._items) for r in (DEFENSES, ATTACKS, DATASETS, DETECTORS, ANALYSES)}
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
            for n in set(r._items) - before[r.kind]:
                r.unregister(n)
        raise UserInputError(f"Plugin file {str(path)!r} failed to load: {_one_line(exc)}.") from exc
    added = []
    for r in (DEFENSES, ATTACKS, DATASETS, DETECTORS, ANALYSES):
        added += [f"{r.kind}:{n}" for n in set(r._items) - before[r.kind]]
    if not added:
        del sys.modules[mod_name]
        raise UserInputError(
            f"Plugin file {str(path)!r} registers nothing; decorate a class with"
            " @register_defense(...) or @register_attack(...)."
        )
    module.__registered__ = sorted(added)  # type: ignore[attr-defined]
    return sorted(added)
