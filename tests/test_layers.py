"""The core's layers (docs/architecture.md): import-linter keeps every import downward, and the
module paths of 0.1's flat core still import, with a warning, for one more release."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_FOLDERS = ("defenses", "attacks", "detectors", "analyses")


def _layers_only_config(dest: Path) -> Path:
    """pyproject's layers and no-loops contracts alone (the copy below has no plugin folders)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]

    def listed(values: list[str]) -> str:
        return ", ".join(f'"{v}"' for v in values if v.rsplit(".", 1)[-1] not in PLUGIN_FOLDERS)

    layers = next(c for c in cfg["contracts"] if c["type"] == "layers")
    loops = next(c for c in cfg["contracts"] if c["type"] == "acyclic_siblings")
    text = (f'[tool.importlinter]\nroot_package = "robustbench_er"\n\n[[tool.importlinter.contracts]]\n'
            f'name = "layers"\ntype = "layers"\nlayers = [{listed(layers["layers"])}]\n\n'
            f'[[tool.importlinter.contracts]]\nname = "loops"\ntype = "acyclic_siblings"\n'
            f'ancestors = [{listed(loops["ancestors"])}]\n')
    path = dest / "pyproject.toml"
    path.write_text(text)
    return path


def _lint(folder: Path) -> subprocess.CompletedProcess[str]:
    cli = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", cli, "--config", str(_layers_only_config(folder)), "--no-cache"],
                          cwd=folder, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def core_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("layers")
    shutil.copytree(ROOT / "robustbench_er", dest / "robustbench_er", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", *PLUGIN_FOLDERS))
    return dest


def test_the_layers_contract_holds_and_breaks_on_an_upward_import(core_copy: Path) -> None:
    ok = _lint(core_copy)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    errors = core_copy / "robustbench_er" / "core" / "errors.py"
    saved = errors.read_text()
    try:  # an import inside a function counts as much as one at the top
        errors.write_text(saved + "\n\ndef _report():\n    from robustbench_er.report import tables\n\n    return tables\n")
        bad = _lint(core_copy)
    finally:
        errors.write_text(saved)
    assert bad.returncode == 1
    assert "robustbench_er.core is not allowed to import robustbench_er.report" in bad.stdout


def test_a_loop_inside_a_layer_breaks_the_no_loops_contract(core_copy: Path) -> None:
    """engine.search sits below engine.sweep; a call back up, even from inside a function, is a loop."""
    search = core_copy / "robustbench_er" / "engine" / "search.py"
    saved = search.read_text()
    try:
        search.write_text(saved + "\n\ndef _loop():\n    from robustbench_er.engine import sweep\n\n    return sweep\n")
        bad = _lint(core_copy)
    finally:
        search.write_text(saved)
    assert bad.returncode == 1
    assert "loops BROKEN" in bad.stdout and ".search -> .sweep" in bad.stdout


@pytest.mark.parametrize("old,new", [("defense", "plugins.defense"), ("registry", "plugins.registry"),
                                     ("attack", "plugins.attack"), ("training", "models.training")])
def test_the_flat_paths_of_0_1_still_import_with_a_warning(old: str, new: str) -> None:
    sys.modules.pop(f"robustbench_er.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"robustbench_er.{old}")
    assert module is importlib.import_module(f"robustbench_er.{new}")
    assert any(issubclass(w.category, DeprecationWarning) and f"robustbench_er.{new}" in str(w.message)
               for w in caught)


def test_a_wheel_adds_one_top_level_package(tmp_path: Path) -> None:
    """The built-in plugin folders install under robustbench_er; nothing named attacks or
    defenses lands in site-packages."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("robustbench_er-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"robustbench_er"}
    for folder in PLUGIN_FOLDERS:  # every plugin file, under its installed name
        files = {p.name for p in (ROOT / folder).glob("*.py")}
        assert files <= {n.split("/")[-1] for n in names if n.startswith(f"robustbench_er/{folder}/")}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "= robustbench_er.defenses.madry" in text and "= robustbench_er.attacks.pgd" in text
