"""Text of the inputs: numbers (``8/255``), epsilon grids, ``NAME(key=value,...)`` strings,
``KEY=VALUE`` items, and strict checks of typed dataclass values (plugin parameters and
hyper-parameters). The one parser of each; every layer above reads its text through here."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from robustbench_er.core.errors import UserInputError

#: most epsilons one START:STOP:STEP grid may give
MAX_GRID = 100_000


def parse_number(value: Any) -> float:
    """``0.3``, ``"0.3"`` or ``"8/255"`` -> a finite float; ValueError with a reason otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        s = value.strip()
        try:
            if "/" in s:
                a, b = s.split("/", 1)
                den = float(b)
                if den == 0:
                    raise ValueError(f"{value!r} divides by zero")
                out = float(a) / den
            else:
                out = float(s)
        except ValueError as exc:
            if "divides by zero" in str(exc):
                raise
            raise ValueError(f"{value!r} is not a number (use e.g. 0.03 or 8/255)") from exc
    else:
        raise ValueError(f"expected a number, got {value!r}")
    if not math.isfinite(out):
        raise ValueError(f"{value!r} is not a finite number")
    return out


def parse_eps(value: Any) -> list[float]:
    """``"0:0.4:0.025"`` (inclusive), ``"0,0.1,8/255"``, one number or a list -> floats.

    Raises ValueError with a reason (the schema turns it into a sentence naming the field).
    """
    if isinstance(value, (list, tuple)):
        out = []
        for i, v in enumerate(value):
            try:
                out.append(parse_number(v))
            except ValueError as exc:
                raise ValueError(f"item {i}: {exc}") from exc
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [parse_number(value)]
    if not isinstance(value, str):
        raise ValueError(f"expected START:STOP:STEP, a,b,c or a list of numbers, got {value!r}")
    text = value.strip()
    if ":" in text:
        parts = [parse_number(p) for p in text.split(":")]
        if len(parts) != 3 or parts[2] <= 0:
            raise ValueError(f"START:STOP:STEP needs three numbers with STEP > 0, got {value!r}")
        start, stop, step = parts
        k = int(math.floor((stop - start) / step + 1e-9))
        if k > MAX_GRID:
            raise ValueError(f"{value!r} gives more than {MAX_GRID:,} epsilons")
        return [round(start + i * step, 12) for i in range(k + 1)]
    return [parse_number(p) for p in text.split(",") if p.strip()]


def split_top_level(text: str) -> list[str]:
    """Split ``pgd,cw(confidence=9,steps=100)`` on the commas outside parentheses and brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "(["
        depth -= ch in ")]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def name_list(value: Any, label: str) -> list[str]:
    """``"a,b(k=1)"``, a list or one name -> the names (split on top-level commas); at least one."""
    items = split_top_level(value) if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    items = [str(i).strip() for i in items if str(i).strip()]
    if not items:
        raise UserInputError(f"{label}: needs at least one name.")
    return items


def parse_attack_text(text: str) -> dict[str, Any]:
    """``cw(confidence=9,steps=100)`` -> ``{"name": "cw", "params": {...}, "label": text}``."""

    m = re.fullmatch(r"\s*([\w.-]+)\s*(?:\((.*)\))?\s*", text)
    if not m:
        raise ValueError(f"cannot read the attack {text!r}; use NAME or NAME(key=value,...)")
    params: dict[str, Any] = {}
    for item in split_top_level(m.group(2) or ""):
        if "=" not in item:
            raise ValueError(f"attack parameter {item!r} in {text!r} must be key=value")
        k, v = item.split("=", 1)
        params[k.strip()] = yaml_value(v, f"attack parameter {k.strip()!r}")
    out: dict[str, Any] = {"name": m.group(1), "params": params}
    if params:
        out["label"] = text.strip()
    return out


def yaml_value(text: str, what: str) -> Any:
    """A ``KEY=VALUE`` value read as YAML (``5`` -> int, ``0.1`` -> float, ``true`` -> bool)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"the value {text!r} of {what} cannot be read") from exc


def parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` items -> ``{KEY: value}`` (values read as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserInputError(f"--set: expects KEY=VALUE, got {item!r}.")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml_value(v, f"--set {k.strip()}")
        except ValueError as exc:
            raise UserInputError(f"--set: {exc}.") from exc
    return out


def check_dataclass_values(cls: type, values: Mapping[str, Any], what: str, owner: str = "") -> None:
    """Check ``values`` against the typed fields of the dataclass ``cls`` (strictly).

    Integers must be integers (``2.5`` and ``"abc"`` are refused), floats accept integers,
    booleans must be booleans. Unknown names are left to the caller (it knows the message).
    Raises UserInputError naming ``what`` and the field.
    """
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved: leave it to the dataclass
        hints = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in names or key not in hints:
            continue
        hint = hints[key]
        if hint is float or hint == (float | None):  # ints are fine where floats are asked for
            if isinstance(value, int) and not isinstance(value, bool):
                continue
        try:
            TypeAdapter(hint).validate_python(value, strict=True)
        except ValidationError as exc:
            of = f" of {owner!r}" if owner else ""
            raise UserInputError(f"{what} {key!r}{of} must be {_type_words(hint)}, got {value!r}.") from exc
        except Exception:  # a type pydantic cannot check: leave it to the dataclass
            continue


def _type_words(hint: Any) -> str:
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if hint in words:
        return words[hint]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1 and args[0] in words:
        return f"{words[args[0]]} or null"
    return f"of type {getattr(hint, '__name__', str(hint))}"
