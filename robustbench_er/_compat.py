"""Import paths of robustbench-er 0.1's flat core, kept for one more release.

Plugins written against 0.1 import, for example, ``robustbench_er.defense`` or
``robustbench_er.registry``. Those modules now live in the layered subpackages; this finder
answers each old name with its new module (the same module object, so registries and classes
are shared) and emits a :class:`DeprecationWarning` naming the new path. New code imports from
:mod:`robustbench_er.plugin` (docs/plugins.md).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    "errors": "core.errors",
    "files": "core.files",
    "metrics": "core.metrics",
    "device": "core.device",
    "identity": "core.identity",
    "store": "store.results",
    "data": "data.datasets",
    "data_folders": "data.folders",
    "defended": "models.defended",
    "hparams": "models.hparams",
    "checkpoints": "models.checkpoints",
    "training": "models.training",
    "pgd": "models.pgd",
    "attack": "plugins.attack",
    "defense": "plugins.defense",
    "analysis": "plugins.analysis",
    "adapters": "plugins.adapters",
    "registry": "plugins.registry",
    "sweep": "engine.sweep",
    "trained": "engine.trained",
    "checks": "engine.checks",
    "executor": "engine.executor",
    "detection": "engine.detection",
    "report": "report.tables",
    "html_report": "report.html",
    "study": "report.study",
    "config": "inputs.config",
    "detection_job": "jobs.detect",
    "analysis_job": "jobs.analyze",
    "dryrun": "jobs.dryrun",
    "imported": "jobs.imported",
    "zoo": "jobs.zoo",
}


class _Loader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the new module is already executed


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != "robustbench_er" or name not in MOVED:
            return None
        new = f"robustbench_er.{MOVED[name]}"
        warnings.warn(f"{fullname} moved to {new}; the old path goes in the next release: "
                      "plugins import from robustbench_er.plugin", DeprecationWarning, stacklevel=3)
        return importlib.util.spec_from_loader(fullname, _Loader(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
