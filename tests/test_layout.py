"""The plugin layout: a plugin file holds one plugin and never imports another plugin's file.

Shared machinery lives in the core (``robustbench_er``), and the core names no plugin. A defense family may keep its shared
code or networks in an underscore module beside its plugins (``defenses/_er_family.py``); such a
module is not a plugin (no entry point) and is the only thing a plugin file may import from its
folder.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("attacks", "defenses", "detectors", "analyses")


def _imported_modules(path: Path) -> list[str]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names (function bodies included)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the file's package
                base = path.parent.name if node.level == 1 else ""
                module = ".".join(p for p in (base, node.module or "") if p)
            else:
                module = node.module or ""
            names.append(module)
            if module.removeprefix("robustbench_er.") in FOLDERS:  # `from defenses import madry` names a module too
                names.extend(f"{module}.{alias.name}" for alias in node.names)
    # the built-in plugin folders install as robustbench_er.<folder>
    return [n.removeprefix("robustbench_er.") if n.split(".")[1:2] and n.split(".")[1] in FOLDERS else n
            for n in names]


def _plugin_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", _plugin_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_plugin_files_import_no_other_plugin(path: Path) -> None:
    offending = []
    for module in _imported_modules(path):
        parts = module.split(".")
        if parts[0] not in FOLDERS or len(parts) == 1:
            continue
        same_folder = parts[0] == path.parent.name
        shared = len(parts) == 2 and parts[1].startswith("_")
        if not (same_folder and shared):
            offending.append(module)
    assert not offending, f"{path.parent.name}/{path.name} imports {offending}; move shared code into robustbench_er"


def test_the_check_catches_a_plugin_import(tmp_path: Path) -> None:
    folder = tmp_path / "defenses"
    folder.mkdir()
    bad = folder / "x.py"
    bad.write_text("import defenses.madry as m\nfrom attacks.pgd import PGD\ndef f():\n    from defenses import none\n")
    assert _imported_modules(bad) == ["defenses.madry", "attacks.pgd", "defenses", "defenses.none"]


def test_entry_points_name_plugins_and_no_shared_module() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    listed = {v.removeprefix("robustbench_er.") for group in (f"robustbench_er.{f}" for f in FOLDERS)
              for v in project[group].values()}
    files = {f"{p.parent.name}.{p.stem}" for p in _plugin_files()}
    plugins = {m for m in files if not m.split(".")[1].startswith("_")}
    assert listed == plugins
    assert len(project["robustbench_er.defenses"]) == len(set(project["robustbench_er.defenses"].values()))


# Where the core may name a built-in plugin: the quickstart preset of the CLI, and words that are
# not registry keys ("none" as torch's reduction, an attack's access, pydantic's type; the
# ``autoattack`` module that pyautoattack stands in for; ``pgd`` the shared routine's name).
_NOT_A_KEY = {("cli.py", "none"), ("cli.py", "madry"), ("cli.py", "pgd"), ("cli.py", "autoattack"),
              ("zoo.py", "autoattack"), ("plugin.py", "pgd"), ("_compat.py", "pgd")}


def _plugin_names() -> set[str]:
    from robustbench_er.plugins import registry

    return {*registry.list_defenses(), *registry.list_attacks(), *registry.list_detectors(), *registry.list_analyses()}


def _core_files() -> list[Path]:
    core = ROOT / "robustbench_er"
    return sorted(p for p in core.rglob("*.py") if p.relative_to(core).parts[0] not in FOLDERS)


def _named_plugins(path: Path, names: set[str]) -> list[tuple[int, str]]:
    return [(n.lineno, n.value) for n in ast.walk(ast.parse(path.read_text(), filename=str(path)))
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names
            and n.value != "none" and (path.name, n.value) not in _NOT_A_KEY]


def test_the_core_names_no_plugin() -> None:
    names = _plugin_names()
    found = {str(p.relative_to(ROOT)): hits for p in _core_files() if (hits := _named_plugins(p, names))}
    assert not found, f"the core names plugins (move the code into the plugin): {found}"


def test_the_check_catches_a_core_module_naming_a_plugin(tmp_path: Path) -> None:
    bad = tmp_path / "sweep.py"
    bad.write_text("def f(registry):\n    return registry.get_attack('pgd'), registry.get_defense('er-classifier')\n")
    assert _named_plugins(bad, _plugin_names()) == [(2, "pgd"), (2, "er-classifier")]
