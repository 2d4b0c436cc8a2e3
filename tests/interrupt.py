"""Stand-ins for killed processes: a step hook that stops a sweep after some steps, and a task
wrapper whose first call kills the worker process running it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Interrupted(Exception):
    """Raised by :func:`stop_after` where a real run would have been killed."""


def stop_after(steps: int) -> Callable[[int], None]:
    """An ``on_step`` hook for ``run_sweep``: raise :class:`Interrupted` once a cell has run ``steps`` steps."""

    def hook(ran: int) -> None:
        if ran >= steps:
            raise Interrupted(f"stopped after {ran} steps")

    return hook


def crash_once(task: Callable[..., Any], marker: Path) -> Callable[..., Any]:
    """``task``, except that the first call anywhere (no ``marker`` file yet) writes the marker and
    kills its own process mid-task, as a worker lost to the OOM killer would be. A nested function,
    so Ray ships it by value to workers that cannot import this test folder."""

    def crashing(*args: Any, **kwargs: Any) -> Any:
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return task(*args, **kwargs)

    return crashing
