"""The ``sweep`` command end to end: the engine runs every cell, then the reports are written."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.norms import canonical_norm
from robustbench_er.core.text import split_top_level
from robustbench_er.data.datasets import DATASETS, dataset_spec
from robustbench_er.data.given import file_test_set, registered_test_set
from robustbench_er.engine.spec import SweepConfig
from robustbench_er.engine.sweep import CellSummary, execute_sweep
from robustbench_er.engine.trained import Trained
from robustbench_er.inputs.config import sweep_config_from_flags
from robustbench_er.jobs import zoo
from robustbench_er.jobs.imported import registered_checkpoint
from robustbench_er.plugins.given import given_defense, registered
from robustbench_er.plugins.registry import normalize
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


@contextlib.contextmanager
def sweep_from_flags(flags_for: Callable[[str], dict[str, Any]], defense: str | None, *,
                     checkpoint: str | None = None, model_dir: str | None = None,
                     download: bool = False, progress: bool = True,
                     data_file: str | None = None) -> Iterator[Any]:
    """The ``sweep`` command's checked SweepConfig, its one-off defenses entered for the block.

    ``flags_for(defense)`` gives the command's flags (None = not given) for the ``--defense`` in
    effect: ``defense``, or the name of the imported model ``checkpoint`` holds when no defense is
    given. A ``--checkpoint`` of an imported model and every ``robustbench:<ModelName>`` defense
    are registered as one-off defenses until the block ends, and a ``--data-file`` as the test
    split of ``--dataset`` (:mod:`robustbench_er.data.given`; every point unless ``--samples``).
    """
    with contextlib.ExitStack() as stack:
        if checkpoint:
            # a model brought in with import-model is entered as a one-off defense for this run
            try:
                imported = stack.enter_context(registered_checkpoint(checkpoint))
            except UserInputError as exc:
                raise UserInputError(f"--checkpoint: {exc}") from None
            if imported is not None and not defense:
                defense = imported
        if not defense:
            raise UserInputError("--defense: name at least one defense"
                                 " (or give --checkpoint of an imported model).")
        flags = flags_for(defense)
        if data_file:
            points = file_test_set(data_file, flags["dataset"], flags.get("data_dir"))
            flags["dataset"] = stack.enter_context(registered_test_set(points))
            if flags.get("samples") is None:
                flags["samples"] = len(points.y_test)
        zoo_names = _enter_zoo(stack, defense, flags, model_dir)
        cfg = sweep_config_from_flags(flags, progress=progress)  # every input checked first
        if zoo_names:
            cfg = _with_zoo_checkpoints(flags, zoo_names, cfg, model_dir=model_dir,
                                        download=download, progress=progress)
        yield cfg


def _enter_zoo(stack: contextlib.ExitStack, defense: str, flags: Mapping[str, Any],
               model_dir: str | None) -> list[str]:
    """Enter every ``robustbench:<ModelName>`` of ``defense`` as a one-off defense (its
    architecture only; the weights are read once the whole sweep is checked)."""
    dataset, norm = flags["dataset"], flags.get("norm")
    names = [d for d in split_top_level(defense or "") if zoo.is_zoo(d)]
    for z in names:
        if dataset not in DATASETS:
            raise UserInputError(f"--dataset: unknown dataset {dataset!r}.")
        if model_dir is None:
            raise UserInputError(f"--defense {z!r} needs --model-dir DIR (RobustBench's layout:"
                                 " DIR/<dataset>/<threat model>/<ModelName>.pt).")
        net = zoo.zoo_architecture(z.strip()[len(zoo.PREFIX):], dataset, canonical_norm(norm or "Linf"))
        classes = dataset_spec(dataset, flags.get("data_dir")).classes
        cls = given_defense(normalize(z), dataset, net, classes=classes)
        stack.enter_context(registered(z, cls, origin="RobustBench's model zoo"))
    return names


def _with_zoo_checkpoints(flags: dict[str, Any], zoo_names: list[str], cfg: Any, *,
                          model_dir: str | None, download: bool, progress: bool) -> Any:
    """Write (or find) each zoo model's checkpoint and check the sweep again with them."""
    flags["checkpoints"] = dict(flags.get("checkpoints") or {})
    for z in zoo_names:
        flags["checkpoints"][z] = str(zoo.zoo_checkpoint(z, cfg.dataset, cfg.norm, model_dir=model_dir,
                                                         out=cfg.out, download=download))
    return sweep_config_from_flags(flags, progress=progress)
