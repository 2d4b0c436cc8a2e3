"""The ``sweep`` command end to end: the engine runs every cell, then the reports are written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from robustbench_er.engine.spec import SweepConfig
from robustbench_er.engine.sweep import CellSummary, execute_sweep
from robustbench_er.engine.trained import Trained
from robustbench_er.report.writers import write_reports
from robustbench_er.store.results import Store


def run_sweep(cfg: SweepConfig, *, command: str = "", on_cell: Callable[[CellSummary], None] | None = None,
              on_train: Callable[[str, Trained], None] | None = None,
              on_skip: Callable[[str, str, str], None] | None = None,
              on_step: Callable[[int], None] | None = None) -> list[CellSummary]:
    """Plan, run every cell (resuming finished steps), run the checks, write the reports."""
    summaries, headline = execute_sweep(cfg, command=command, on_cell=on_cell, on_train=on_train, on_skip=on_skip,
                                        on_step=on_step)
    store = Store(Path(cfg.out))
    try:
        write_reports(store, Path(cfg.out), headline=headline)
    finally:
        store.close()
    return summaries
