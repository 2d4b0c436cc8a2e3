"""Registry: decorators, duplicates, wildcards, validation, entry points, plugin files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from robustbench_er.core.errors import UserInputError
from robustbench_er.plugins import registry
from robustbench_er.plugins.attack import (
    Attack,
    AttackParams,
    FixedEpsilonAttack,
    MinimizationAttack,
)
from robustbench_er.plugins.defense import Defense, HParams

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_builtins_found_through_entry_points():
    assert {"none", "madry"} <= set(registry.list_defenses())
    assert {"pgd", "fgsm"} <= set(registry.list_attacks())
    assert {"mnist5k", "digits", "mnist", "cifar10", "cifar100", "stl10", "tiny-imagenet"} <= set(registry.list_datasets())


def test_wildcards():
    assert registry.list_attacks("pg*") == [n for n in registry.list_attacks() if n.startswith("pg")]
    assert "pgd" in registry.list_attacks("p?d")
    assert registry.list_defenses("zzz*") == []


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UserInputError, match="Did you mean 'madry'"):
        registry.get_defense("madri")
    with pytest.raises(UserInputError, match="Unknown attack 'pgdd'.*'pgd'"):
        registry.get_attack("pgdd")
    with pytest.raises(UserInputError, match="mnist5k"):
        registry.get_dataset_loader("mnist5")


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        @registry.register_attack("pgd")
        class Again(Attack):
            def run(self, model, x, y, eps, generator=None):
                return x


def test_validation_at_registration():
    with pytest.raises(TypeError, match="subclass"):
        registry.register_defense("not-a-defense")(object)

    with pytest.raises(TypeError, match="build"):
        @registry.register_defense("no-build")
        class NoBuild(Defense):
            pass

    @dataclass
    class HP(HParams):
        pass

    with pytest.raises(TypeError, match="unknown fields"):
        @registry.register_defense("bad-preset")
        class BadPreset(Defense):
            HParams = HP
            presets = {"digits": {"quick": {"no_such_field": 1}}}

            def build(self, spec, hp):
                return None

            def train(self, model, data, hp, seed, progress=True):
                return {}

    with pytest.raises(TypeError, match="kind"):
        @registry.register_attack("bad-kind")
        class BadKind(Attack):
            kind = "sometimes"

            def run(self, model, x, y, eps, generator=None):
                return x

    with pytest.raises(TypeError, match="kind must be 'fixed'"):
        @registry.register_attack("typed-bad-kind")
        class TypedBadKind(FixedEpsilonAttack):
            kind = "min"

            def run(self, model, x, y, eps, *, generator=None, x_init=None):
                return x

    with pytest.raises(TypeError, match="implement run"):
        @registry.register_attack("typed-no-run")
        class TypedNoRun(MinimizationAttack):
            pass

    for name in ("not-a-defense", "no-build", "bad-preset", "bad-kind", "typed-bad-kind", "typed-no-run"):
        assert name not in registry.DEFENSES and name not in registry.ATTACKS


def _example_source() -> str:
    text = DOCS.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if "register_defense" in b)


def test_documented_example_plugin_loads_and_works(tmp_path, digits):
    from robustbench_er.engine.spec import AttackConfig, SweepConfig
    from robustbench_er.jobs.sweep import run_sweep

    f = tmp_path / "my_plugins.py"
    f.write_text(_example_source())
    try:
        added = registry.load_plugin_file(f)
        assert added == ["attack:uniform-noise", "defense:noise-aug"]
        cfg = SweepConfig(dataset="digits", defenses=["noise-aug"], attacks=[AttackConfig("uniform-noise"), AttackConfig("pgd")],
                          eps=[0.0, 0.1, 0.3], samples=60, out=tmp_path / "out", progress=False)
        summaries = run_sweep(cfg)
        by = {s.attack: s for s in summaries}
        assert by["pgd"].clean_acc > 0.7
        # random noise is a far weaker attack than PGD
        assert by["uniform-noise"].robust[0.3] > by["pgd"].robust[0.3]
    finally:
        registry.DEFENSES.unregister("noise-aug")
        registry.ATTACKS.unregister("uniform-noise")


def test_plugin_file_errors(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        registry.load_plugin_file(tmp_path / "nope.py")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(UserInputError, match="registers nothing"):
        registry.load_plugin_file(empty)


def test_attack_parameter_errors():
    pgd = registry.get_attack("pgd")
    with pytest.raises(UserInputError, match="no parameter"):
        pgd(norm="Linf", stepz=3)
    with pytest.raises(UserInputError, match="EOT"):
        pgd(norm="Linf", eot=0)
    with pytest.raises(UserInputError, match="does not support"):
        registry.get_attack("fgsm")(norm="L1")
    with pytest.raises(UserInputError, match="Unknown norm"):
        pgd(norm="L7")
    assert isinstance(pgd(norm="linf").params, AttackParams)


def test_plain_attack_subclass_declaring_kind_still_registers():
    @registry.register_attack("legacy-min")
    class LegacyMin(Attack):
        kind = "min"

        def run(self, model, x, y, generator=None):
            return x

    try:
        assert registry.get_attack("legacy-min").kind == "min"
    finally:
        registry.ATTACKS.unregister("legacy-min")


@pytest.mark.parametrize("name", registry.list_attacks())
def test_every_builtin_attack_has_a_typed_kind(name):
    cls = registry.get_attack(name)
    expected = FixedEpsilonAttack if cls.kind == "fixed" else MinimizationAttack
    assert issubclass(cls, expected), f"{name} ({cls.kind}) does not subclass {expected.__name__}"


@pytest.mark.parametrize("group", ["robustbench_er.defenses", "robustbench_er.attacks"])
def test_every_declared_entry_point_imports_and_registers(group):
    from importlib.metadata import entry_points

    reg = registry.DEFENSES if group.endswith("defenses") else registry.ATTACKS
    eps = list(entry_points(group=group))
    assert len(eps) >= 11
    for ep in eps:
        ep.load()  # raises if a declared module is missing or broken
        assert ep.name in reg, ep.name
