"""A name-keyed registry: a dict behind a decorator, with validation at registration, wildcard
listing and discovery of the modules declared in an entry-point group. The plugins layer keeps
one per plugin kind; the data layer keeps the datasets'."""

from __future__ import annotations

import difflib
import fnmatch
import logging
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
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

    def registered(self) -> set[str]:
        """The names registered so far (no discovery)."""
        return set(self._items)

    def origin(self, name: str) -> str:
        return self._origin.get(normalize(name), "")


def normalize(name: str) -> str:
    return name.strip().lower()


def register_with(reg: Registry[Any], name: str) -> Callable[[T], T]:
    """A decorator that registers its object in ``reg`` as ``name`` (and names a class after it)."""
    def deco(obj: T) -> T:
        reg.register(name, obj)
        if isinstance(obj, type) and not obj.__dict__.get("name"):
            obj.name = normalize(name)  # type: ignore[attr-defined]
        return obj

    return deco
