"""``robustbench-er compare``: read the inputs, match and test their points, write the files,
and say which points of the last input are significantly worse than the first's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from robustbench_er.core.errors import UserInputError
from robustbench_er.inputs.config import check_output_folder
from robustbench_er.report.compare import compare_runs, read_run, worse_points, write_comparison


@dataclass
class CompareResult:
    """The table, the files written and one sentence per significantly worse point of the last input."""

    table: pd.DataFrame
    paths: dict[str, Path]
    worse: list[str]


def compare_table(inputs: Sequence[str | Path], pairs: Sequence[str] = (),
                  attack_pairs: Sequence[str] = ()) -> pd.DataFrame:
    """The comparison table of ``inputs`` (the first is the baseline), nothing written."""
    runs = [read_run(p) for p in inputs]
    return compare_runs(runs, list(pairs), list(attack_pairs)).table


def run_compare(inputs: Sequence[str | Path], out: str | Path, pairs: Sequence[str] = (), alpha: float = 0.05,
                by: float = 0.0, attack_pairs: Sequence[str] = ()) -> CompareResult:
    """Compare ``inputs``, write the files under ``out`` and list the last input's worse points
    (one-sided p < ``alpha``; with ``by`` > 0, significantly worse by more than ``by`` percentage
    points: see :func:`robustbench_er.report.compare.worse_points`)."""
    if len(inputs) < 2:
        raise UserInputError("compare needs at least two inputs (results folders or leaderboard JSON files).")
    if not 0 < alpha < 1:
        raise UserInputError(f"--alpha must be between 0 and 1; got {alpha}.")
    if by < 0:
        raise UserInputError(f"--by must be zero or more percentage points; got {by}.")
    runs = [read_run(p) for p in inputs]
    comparison = compare_runs(runs, list(pairs), list(attack_pairs))
    check_output_folder(Path(out), "--out")
    paths = write_comparison(comparison, runs, Path(out))
    return CompareResult(comparison.table, paths, worse_points(comparison.table, runs[-1].label, alpha, by))
