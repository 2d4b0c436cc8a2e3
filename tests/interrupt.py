"""A stand-in for a killed process: a step hook that stops a sweep after some steps."""

from __future__ import annotations

from collections.abc import Callable


class Interrupted(Exception):
    """Raised by :func:`stop_after` where a real run would have been killed."""


def stop_after(steps: int) -> Callable[[int], None]:
    """An ``on_step`` hook for ``run_sweep``: raise :class:`Interrupted` once a cell has run ``steps`` steps."""

    def hook(ran: int) -> None:
        if ran >= steps:
            raise Interrupted(f"stopped after {ran} steps")

    return hook
