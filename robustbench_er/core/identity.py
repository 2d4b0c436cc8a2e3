"""What enters a result's identity (a cell id, a checkpoint folder, an analysis key), and what not.

A stored result is keyed on a hash of everything that decides it. Two rules keep those keys
honest across releases (stated for users in ``docs/sweep.md``):

* A parameter added to a plugin after results were stored with it, whose default keeps the old
  behaviour, is declared with :func:`added_field`. It enters the identity only when set to
  something other than its default, so the results stored before it existed still answer the
  same request. Every other parameter is always part of the identity.
* A change of behaviour (a fixed bug, a new default, a different algorithm) bumps the plugin's
  ``version`` class attribute. A nonzero version enters the identity, so every result the old
  code computed is recomputed; version 0 (the first) is left out, so existing keys stay valid.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: the field metadata key :func:`added_field` sets
ADDED = "robustbench_er.added"


def added_field(default: Any = None) -> Any:
    """A dataclass field for a parameter added later whose default keeps the earlier behaviour:
    it is left out of the identity while it holds ``default``."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("added_field() takes an immutable default")
    return dataclasses.field(default=default, metadata={ADDED: True})


def identity_params(params: Any) -> dict[str, Any]:
    """``dataclasses.asdict(params)`` less the :func:`added_field` parameters at their default."""
    out = dataclasses.asdict(params)
    for f in dataclasses.fields(params):
        if f.metadata.get(ADDED) and getattr(params, f.name) == f.default:
            out.pop(f.name, None)
    return out


def with_version(identity: dict[str, Any], version: int) -> dict[str, Any]:
    """``identity`` with ``version`` added when it is nonzero (version 0 keeps the old keys)."""
    if int(version):
        identity["version"] = int(version)
    return identity
