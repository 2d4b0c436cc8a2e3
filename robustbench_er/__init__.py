"""robustbench-er: an adversarial-robustness benchmarking harness for PyTorch.

The public Python API is :func:`benchmark` (sweep attacks over epsilons against any model) and
:func:`load_defense` (a registered defense, trained or loaded) and :func:`compare` (runs matched
point by point, with paired tests); see ``docs/python-api.md``.
They are imported on first use, so ``import robustbench_er`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from robustbench_er import _compat
from robustbench_er.core.version import __version__ as __version__

_compat.install()  # robustbench_er.<module> of 0.1's flat core still imports, with a warning

__all__ = ["BenchmarkResult", "benchmark", "compare", "load_defense"]

if TYPE_CHECKING:
    from robustbench_er.api import BenchmarkResult, benchmark, compare, load_defense


def __getattr__(name: str) -> Any:
    if name in __all__:
        from robustbench_er import api

        return getattr(api, name)
    raise AttributeError(f"module 'robustbench_er' has no attribute {name!r}")
