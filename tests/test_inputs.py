"""Every bad input exits 2 with one sentence naming the field and leaves an existing store as it was.

One real store is made once per module (a tiny sweep of the undefended TinyCNN on digits); each
case runs the CLI against a byte copy of it and compares every file afterwards.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from robustbench_er.cli import build_parser, experiment_configs, main, sweep_flags
from robustbench_er.inputs.config import sweep_config_from_flags

SWEEP = ["sweep", "--dataset", "digits", "--defense", "none", "--attack", "fgsm", "--eps", "0,0.1", "--samples", "20"]
EXPERIMENT = {"dataset": "digits", "defenses": ["none"], "attacks": ["fgsm"], "eps": "0,0.1", "samples": 20}


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inputs") / "res"
    assert main(SWEEP + ["--out", str(out), "--quiet"]) == 0
    assert (out / "store.sqlite").is_file() and (out / "checkpoints").is_dir()
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def store_copy(base_store: Path, tmp_path: Path) -> Path:
    out = tmp_path / "res"
    shutil.copytree(base_store, out)
    return out


def _checkpoint(base_store: Path) -> Path:
    (folder,) = [p for p in (base_store / "checkpoints").iterdir() if p.is_dir()]
    return folder


def _fixture_files(tmp_path: Path, base_store: Path) -> dict[str, str]:
    """Files some cases point at: broken plugins and broken checkpoint metadata."""
    files = {}
    raises = tmp_path / "raises.py"
    raises.write_text("raise RuntimeError('boom at import')\n")
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def broken(:\n    pass\n")
    nothing = tmp_path / "nothing.py"
    nothing.write_text("X = 1\n")
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(3)\n")
    files.update(raises=str(raises), syntax=str(syntax), nothing=str(nothing), exits=str(exits))
    for name, meta in (("meta_list", [1, 2]), ("meta_nofields", {"defense": "none"}),
                       ("meta_badtype", None)):
        folder = tmp_path / name
        shutil.copytree(_checkpoint(base_store), folder)
        if meta is None:  # a field of the wrong type
            good = json.loads((folder / "meta.json").read_text())
            meta = dict(good, hparams="not a mapping")
        (folder / "meta.json").write_text(json.dumps(meta))
        files[name] = str(folder)
    return files


# (extra CLI arguments for the sweep, a regex the one-line message must match: it names the field)
CLI_CASES = [
    (["--eps", "0,1/0"], r"--eps: .*divides by zero"),
    (["--eps", "0,abc"], r"--eps: .*'abc' is not a number"),
    (["--eps", "0:0.2:0"], r"--eps: .*STEP > 0"),
    (["--attack", "pgd(steps=abc)"], r"--attack pgd\(steps=abc\): parameter 'steps' of 'pgd' must be an integer, got 'abc'"),
    (["--attack", "pgd(steps=2.5)"], r"parameter 'steps' of 'pgd' must be an integer, got 2\.5"),
    (["--attack", "pgd(steps=0)"], r"--attack pgd\(steps=0\): "),
    (["--attack", "pgd(rel_stepsize=yes)"], r"parameter 'rel_stepsize'|no parameter 'rel_stepsize'"),
    (["--attack", "pgd(steps"], r"--attack: .*cannot read the attack"),
    (["--attack", "pgd(steps=[)"], r"--attack: .*'steps' cannot be read"),
    (["--attack", "pgdx"], r"--attack: unknown attack 'pgdx' \(did you mean 'pgd'"),
    (["--defense", "none,madri"], r"--defense: unknown defense 'madri' \(did you mean 'madry'"),
    (["--set", "epochs=1.5"], r"--set: .*'epochs' of 'none' must be an integer, got 1\.5"),
    (["--set", "epochs=abc"], r"--set: .*'epochs' of 'none' must be an integer, got 'abc'"),
    (["--set", "epochs=-1"], r"--set: .*'epochs' must be an integer >= 1; got -1"),
    (["--set", "batch_size=0"], r"--set: .*'batch_size' must be an integer >= 1"),
    (["--set", "lr=0"], r"--set: .*'lr' must be > 0"),
    (["--set", "lr=fast"], r"--set: .*'lr' of 'none' must be a number, got 'fast'"),
    (["--set", "epochs"], r"--set: expects KEY=VALUE"),
    (["--set", "epochz=2"], r"--set: .*no hyper-parameter 'epochz'"),
    (["--batch-size", "0"], r"--batch-size: must be an integer >= 1 \(or auto\), got '0'"),
    (["--batch-size", "abc"], r"--batch-size: must be an integer >= 1 \(or auto\), got 'abc'"),
    (["--samples", "abc"], r"--samples: must be an integer >= 1 \(or all\), got 'abc'"),
    (["--samples", "0"], r"--samples: must be an integer >= 1"),
    (["--samples", "2.5"], r"--samples: must be an integer >= 1"),
    (["--samples", "100000"], r"--samples: must be between 1 and the test split size of digits \(359\)"),
    (["--eot", "0"], r"--eot: must be an integer >= 1"),
    (["--seed", "abc"], r"--seed: must be an integer, got 'abc'"),
    (["--device", "meta"], r"--device: must be auto, cpu, cuda, cuda:N or mps, got 'meta'"),
    (["--device", "cuda:x"], r"--device: must be auto, cpu"),
    (["--headline", "-1"], r"--headline: must be a number >= 0"),
    (["--headline", "abc"], r"--headline: must be a number >= 0"),
    (["--headline", "0.05"], r"--headline: 0\.05 is not on the sweep's epsilon grid"),
    (["--mode", "fast"], r"--mode: must be cascade or independent, got 'fast'"),
    (["--search", "binary"], r"--search: must be bisect or ascending, got 'binary'"),
    (["--l2-unit", "px"], r"--l2-unit: must be l2, rms or mse, got 'px'"),
    (["--norm", "L7"], r"--norm: must be one of Linf, L2, L1, got 'L7'"),
    (["--profile", "fast"], r"--profile: must be quick or paper, got 'fast'"),
    (["--eps", "0,8"], r"--eps: .*exceeds 1"),
    (["--plugin", "{raises}"], r"Plugin file '.*raises\.py' failed to load: RuntimeError: boom at import"),
    (["--plugin", "{syntax}"], r"Plugin file '.*syntax\.py' failed to load: SyntaxError: .*\(line 1\)"),
    (["--plugin", "{exits}"], r"Plugin file '.*exits\.py' failed to load: SystemExit"),
    (["--plugin", "{nothing}"], r"Plugin file '.*nothing\.py' registers nothing"),
    (["--checkpoint", "{meta_list}"], r"--checkpoint: .*meta\.json' must be a JSON object, not a list"),
    (["--checkpoint", "{meta_nofields}"], r"--checkpoint: .*the field 'dataset' is missing"),
    (["--checkpoint", "{meta_badtype}"], r"--checkpoint: .*the field 'hparams' is invalid"),
    (["--bogus", "1"], r"(?i)unrecognized arguments: --bogus 1"),
]


def _run_and_check(args: list[str], pattern: str, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(out)
    rc = main(args + ["--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("robustbench-er: error: "), err  # one line, no traceback
    assert re.search(pattern, err), err
    assert _snapshot(out) == before  # the store (and every other file) is byte-identical


@pytest.mark.parametrize("extra,pattern", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_bad_sweep_flag(extra, pattern, store_copy, base_store, tmp_path, capsys):
    files = _fixture_files(tmp_path, base_store)
    args = list(SWEEP)
    flag, value = extra[0], extra[1].format(**files)
    if flag in args:  # replace the flag's value
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    _run_and_check(args, pattern, store_copy, capsys)


# (a change to the valid experiment, a regex the message must match)
YAML_CASES = [
    ({"samples": "abc"}, r"^robustbench-er: error: samples: must be an integer >= 1 \(or all\), got 'abc'\.$"),
    ({"samples": 0}, r"samples: must be an integer >= 1"),
    ({"eps": [0.1, "abc"]}, r"eps: .*item 1: 'abc' is not a number"),
    ({"eps": "0,1/0"}, r"eps: .*divides by zero"),
    ({"eps": {"a": 1}}, r"eps: cannot read the epsilon grid"),
    ({"defenses": 5}, r"defenses: must be a list of defense names .*got 5"),
    ({"defenses": [5]}, r"defenses: each defense must be a name"),
    ({"defenses": {"none": {"epochs": -1}}}, r"defenses\[0\]: .*'epochs' must be an integer >= 1; got -1"),
    ({"defenses": {"none": {"epochs": 1.5}}}, r"defenses\[0\]: .*'epochs' of 'none' must be an integer, got 1\.5"),
    ({"defenses": {"none": 3}}, r"defenses: the hyper-parameters of defense 'none' must be a mapping"),
    ({"sweeps": "abc"}, r"sweeps: must be a list of mappings"),
    ({"sweeps": ["abc"]}, r"sweeps: must be a list of mappings"),
    ({"sweeps": [{"attacks": ["fgsm"]}, {"attacks": ["pgdx"]}]},
     r"sweeps\[1\]\.attacks\[0\]: unknown attack 'pgdx' \(did you mean 'pgd'\?\)\.$"),
    ({"sweeps": [{"attacks": ["fgsm"]}, {"attacks": [{"name": "pgd", "params": {"steps": "abc"}}]}]},
     r"sweeps\[1\]\.attacks\[0\]: parameter 'steps' of 'pgd' must be an integer, got 'abc'"),
    ({"sweeps": [{"attacks": ["fgsm"]}, {"samples": "abc"}]}, r"sweeps\[1\]\.samples: must be an integer >= 1"),
    ({"sweeps": [{"attacks": ["fgsm"]}, {"norm": "L2", "eps": "0:100:50"}]}, r"sweeps\[1\]\.eps: .*exceeds the diameter"),
    ({"sweeps": [{"attacks": ["fgsm"]}, {"foo": 1}]}, r"sweeps\[1\]\.foo: unknown key; known keys: .*attacks"),
    ({"sweeps": [{"plugins": "x.py"}]}, r"sweeps\[0\]\.plugins: unknown key"),
    ({"attacks": None}, r"attacks: must be a list of attack names"),
    ({"attacks": [{"name": "pgd", "bogus": 1}]}, r"attacks\[0\]\.bogus: unknown key"),
    ({"attacks": [{"params": {}}]}, r"attacks\[0\]\.name: missing"),
    ({"attacks": [{"name": "pgd", "eps": "abc"}]}, r"attacks\[0\]\.eps: cannot read the epsilon grid"),
    ({"attacks": [{"name": "pgd", "samples": 1000}]}, r"attacks\[0\]\.samples: must be between 1 and the sweep's 20"),
    ({"attacks": [{"name": "pgd", "params": {"steps": 2.5}}]}, r"attacks\[0\]: parameter 'steps' of 'pgd' must be an integer"),
    ({"attacks": [{"name": "cw"}]}, r"attacks\[0\]: .*does not support the Linf norm"),
    ({"headline": -1}, r"headline: must be a number >= 0"),
    ({"batch_size": 0}, r"batch_size: must be an integer >= 1 \(or auto\), got 0"),
    ({"eot": "abc"}, r"eot: must be an integer >= 1"),
    ({"seed": 1.5}, r"seed: must be an integer, got 1\.5"),
    ({"device": "meta"}, r"device: must be auto, cpu, cuda, cuda:N or mps, got 'meta'"),
    ({"mode": "fast"}, r"mode: must be cascade or independent"),
    ({"search": 3}, r"search: must be bisect or ascending"),
    ({"l2_unit": "px"}, r"l2_unit: must be l2, rms or mse"),
    ({"profile": "fast"}, r"profile: must be quick or paper"),
    ({"dataset": "digitz"}, r"dataset: unknown dataset 'digitz' \(did you mean 'digits'"),
    ({"dataset": None}, r"dataset: must be a valid string, got None"),
    ({"foo": 1}, r"foo: unknown key; known keys: "),
    ({"plugins": "{raises}"}, r"Plugin file '.*raises\.py' failed to load"),
    ({"plugins": 5}, r"plugins: must be a valid list, got 5"),
    ({"checkpoints": {"none": "{meta_list}"}}, r"checkpoints\.none: .*must be a JSON object, not a list"),
    ({"checkpoints": {"madry": "{meta_list}"}}, r"checkpoints\.madry: defense 'madry' is not among"),
    ({"name": ["x"]}, r"name: must be a valid string"),
]


@pytest.mark.parametrize("change,pattern", YAML_CASES, ids=[str(c[0])[:60] for c in YAML_CASES])
def test_bad_experiment_file(change, pattern, store_copy, base_store, tmp_path, capsys):
    files = _fixture_files(tmp_path, base_store)
    text = json.dumps({**EXPERIMENT, **change})
    for k, v in files.items():
        text = text.replace("{" + k + "}", v)
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(json.loads(text)))
    _run_and_check(["run", str(exp)], pattern, store_copy, capsys)


@pytest.mark.parametrize("text,pattern", [
    ("- a\n- b\n", r"must be a mapping of keys to values"),
    ("dataset: [\n", r"cannot be read"),
    ("", r"must be a mapping of keys to values"),
])
def test_unreadable_experiment_file(text, pattern, store_copy, tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(text)
    _run_and_check(["run", str(exp)], pattern, store_copy, capsys)


@pytest.mark.parametrize("headline,pattern", [("-1", r"--headline: must be a number >= 0"),
                                              ("abc", r"--headline: 'abc' is not a number"),
                                              ("Linf=1/0", r"--headline: '1/0' divides by zero"),
                                              ("L7=0.3", r"--headline: unknown norm 'L7'")])
def test_bad_report_headline(headline, pattern, store_copy, capsys):
    _run_and_check(["report", "--headline", headline], pattern, store_copy, capsys)


def test_second_sweep_fails_before_the_first_runs(tmp_path, capsys):
    """The whole file is checked first: a fresh output folder is not even created."""
    out = tmp_path / "fresh"
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({**EXPERIMENT, "sweeps": [{"attacks": ["fgsm"]}, {"attacks": ["pgdx"]}]}))
    assert main(["run", str(exp), "--out", str(out), "--quiet"]) == 2
    assert "sweeps[1].attacks[0]: unknown attack 'pgdx'" in capsys.readouterr().err
    assert not out.exists()


def test_unwritable_output_folder_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for cmd in (SWEEP, ["train", "--dataset", "digits", "--defense", "madry"]):
        assert main(cmd + ["--out", str(blocker / "res"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--out: " in err and "is a file" in err, err
    assert main(SWEEP + ["--out", str(blocker), "--quiet"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "x"


def test_train_flags_are_checked(tmp_path, capsys):
    base = ["train", "--dataset", "digits", "--defense", "none", "--out", str(tmp_path / "t"), "--quiet"]
    for extra, pattern in ((["--set", "epochs=1.5"], r"'epochs' of 'none' must be an integer, got 1\.5"),
                           (["--set", "epochs=0"], r"'epochs' must be an integer >= 1"),
                           (["--device", "meta"], r"--device: unknown device 'meta'"),
                           (["--seed", "x"], r"--seed: must be an integer")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.search(pattern, err), err
    assert not (tmp_path / "t").exists()


def test_plugins_string_is_one_path(tmp_path, capsys):
    """`plugins: file.py` names one file (it used to be read one character at a time)."""
    from robustbench_er.plugins.registry import ATTACKS

    plugin = tmp_path / "one_plugin.py"
    plugin.write_text(
        "from robustbench_er.plugins.attack import Attack\n"
        "from robustbench_er.plugins.registry import register_attack\n\n"
        "@register_attack('inputs-test-noop')\n"
        "class Noop(Attack):\n"
        "    def run(self, model, x, y, eps, **kw):\n"
        "        return x\n"
    )
    exp = {**EXPERIMENT, "plugins": str(plugin), "attacks": ["inputs-test-noop"]}
    try:
        (cfg,) = experiment_configs(exp, out=str(tmp_path / "r"), device=None, quiet=True)
        assert [a.name for a in cfg.attacks] == ["inputs-test-noop"]
        assert "inputs-test-noop" in ATTACKS
    finally:
        ATTACKS.unregister("inputs-test-noop")


def test_failed_plugin_leaves_no_half_registration(tmp_path):
    from robustbench_er.core.errors import UserInputError
    from robustbench_er.plugins.registry import ATTACKS, load_plugin_file

    plugin = tmp_path / "half.py"
    plugin.write_text(
        "from robustbench_er.plugins.attack import Attack\n"
        "from robustbench_er.plugins.registry import register_attack\n\n"
        "@register_attack('inputs-test-half')\n"
        "class Half(Attack):\n"
        "    def run(self, model, x, y, eps, **kw):\n"
        "        return x\n\n"
        "raise KeyError('later failure')\n"
    )
    with pytest.raises(UserInputError, match="failed to load: KeyError"):
        load_plugin_file(plugin)
    assert "inputs-test-half" not in ATTACKS


def test_experiment_file_and_flags_give_equal_configs(tmp_path):
    out = str(tmp_path / "r")
    flags = ["sweep", "--dataset", "digits", "--defense", "none,madry", "--attack", "pgd(steps=5),fgsm",
             "--eps", "0:0.2:0.05", "--samples", "50", "--norm", "linf", "--batch-size", "64", "--eot", "3",
             "--headline", "0.1", "--seed", "2", "--mode", "independent", "--search", "ascending",
             "--l2-unit", "rms", "--set", "epochs=2", "--device", "cpu", "--out", out]
    from_flags = sweep_config_from_flags(sweep_flags(build_parser().parse_args(flags)), progress=True)
    exp = {"dataset": "digits", "defenses": {"none": {"epochs": 2}, "madry": {"epochs": 2}},
           "attacks": ["pgd(steps=5)", "fgsm"], "eps": [0, 0.05, 0.1, "3/20", 0.2], "samples": 50,
           "norm": "Linf", "batch_size": 64, "eot": 3, "headline": 0.1, "seed": 2, "mode": "independent",
           "search": "ascending", "l2_unit": "rms", "device": "cpu", "name": "same", "plugins": []}
    (from_file,) = experiment_configs(exp, out=out, device=None, quiet=False)
    assert from_file == from_flags
    assert from_flags.batch_size == 64 and from_flags.eps == [0.0, 0.05, 0.1, 0.15, 0.2]
    assert from_flags.defense_overrides == {"none": {"epochs": 2}, "madry": {"epochs": 2}}
    assert (from_flags.mode, from_flags.search, from_flags.l2_unit) == ("independent", "ascending", "rms")
    # defaults come from one place: a bare sweep and a bare experiment agree
    bare = sweep_config_from_flags(sweep_flags(build_parser().parse_args(
        ["sweep", "--dataset", "mnist5k", "--defense", "none", "--attack", "fgsm", "--eps", "0,0.1"])))
    (bare_file,) = experiment_configs({"dataset": "mnist5k", "defenses": "none", "attacks": "fgsm", "eps": "0,0.1"},
                                      out=None, device=None, quiet=False)
    assert bare == bare_file
    assert (bare.samples, bare.batch_size, bare.eot, bare.mode, bare.search, bare.l2_unit) == (
        500, None, 10, "cascade", "bisect", "l2")


def test_samples_all_and_sweeps_inherit(tmp_path):
    exp = {**EXPERIMENT, "samples": "all", "out": str(tmp_path / "r"),
           "sweeps": [{"attacks": ["fgsm"]}, {"norm": "L2", "eps": "0:1:0.5", "attacks": [{"name": "pgd", "samples": 10}]}]}
    first, second = experiment_configs(exp, out=None, device=None, quiet=True)
    assert first.samples is None and second.samples is None
    assert first.norm == "Linf" and second.norm == "L2" and second.eps == [0.0, 0.5, 1.0]
    assert second.attacks[0].samples == 10 and str(second.out) == str(tmp_path / "r")


@pytest.mark.parametrize("executor, expected", [
    ("ray", {"kind": "ray"}),
    ({"kind": "ray", "address": "auto", "gpus_per_cell": 1}, {"kind": "ray", "address": "auto", "gpus_per_cell": 1.0}),
    ({"kind": "slurm"}, "executor.kind"),
    ({"kind": "ray", "gpus_per_cell": -1}, "executor.gpus_per_cell"),
    ({"kind": "ray", "nodes": 3}, "executor.nodes"),
])
def test_executor_key(executor, expected, tmp_path):
    from robustbench_er.core.errors import UserInputError
    from robustbench_er.inputs.config import parse_experiment

    raw = {"dataset": "digits", "defenses": ["none"], "attacks": ["fgsm"], "eps": [0, 0.1], "samples": 20,
           "executor": executor}
    if isinstance(expected, str):
        with pytest.raises(UserInputError, match=re.escape(expected)):
            parse_experiment(raw, out=str(tmp_path)).configs(progress=False)
    else:
        (cfg,) = parse_experiment(raw, out=str(tmp_path)).configs(progress=False)
        assert {k: cfg.executor[k] for k in expected} == expected
