"""The robustbench-er command: exit codes, messages, outputs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robustbench_er.cli import QUICKSTART, main

ROOT = Path(__file__).resolve().parents[1]


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "defenses:" in out and "  madry" in out and "  pgd" in out and "  mnist5k" in out
    assert main(["list", "attacks", "fg*"]) == 0
    assert capsys.readouterr().out.split() == ["attacks:", "fgsm", "[fixed,", "gradient,", "Linf/L2]"]


@pytest.mark.parametrize("args,msg", [
    (["sweep", "--dataset", "digits", "--defense", "madri", "--attack", "pgd", "--eps", "0,0.1"], "(?i)did you mean 'madry'"),
    (["sweep", "--dataset", "digits", "--defense", "none", "--attack", "pgd", "--eps", "0,-0.1"], ">= 0"),
    (["sweep", "--dataset", "digits", "--defense", "none", "--attack", "pgd", "--eps", "0,8"], "8/255"),
    (["sweep", "--dataset", "digits", "--defense", "none", "--attack", "pgd", "--eps", "0.2,0.1"], "ascending"),
    (["sweep", "--dataset", "digits", "--defense", "none", "--attack", "pgd", "--eps", "0,0.1", "--samples", "5000"],
     "between 1 and the test split size of digits \\(359\\)"),
    (["sweep", "--dataset", "digits", "--defense", "none", "--attack", "pgd", "--eps", "0,0.1", "--plugin", "/no/such.py"],
     "does not exist"),
    (["sweep", "--dataset", "digitz", "--defense", "none", "--attack", "pgd", "--eps", "0,0.1"], "(?i)unknown dataset"),
    (["sweep", "--dataset", "cifar10", "--defense", "none", "--attack", "pgd", "--eps", "0,0.1"], "--data-dir"),
    (["train", "--dataset", "digits", "--defense", "none", "--set", "epochz=2"], "no hyper-parameter"),
    (["run", "/no/such.yaml"], "does not exist"),
    (["report", "--out", "/no/such/folder"], "No results store"),
])
def test_bad_input_exits_2_with_one_sentence(args, msg, capsys, tmp_path):
    if "--out" not in args:
        args = args + ["--out", str(tmp_path)]
    assert main(args + ["--quiet"] if args[0] != "report" else args) == 2
    err = capsys.readouterr().err
    import re

    assert re.search(msg, err), err
    assert err.count("\n") == 1  # one line
    assert not (tmp_path / "store.sqlite").exists()


def test_sweep_then_report_then_run(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["sweep", "--dataset", "digits", "--defense", "none", "--attack", "fgsm", "--eps", "0:0.2:0.1",
               "--samples", "50", "--out", str(out), "--quiet"])
    assert rc == 0
    assert (out / "leaderboard.md").is_file() and (out / "curves_digits_Linf.png").is_file()
    (out / "leaderboard.md").unlink()
    assert main(["report", "--out", str(out)]) == 0
    assert (out / "leaderboard.md").is_file()
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"dataset": "digits", "defenses": ["none"], "attacks": ["fgsm", {"name": "pgd", "params": {"steps": 5}}],
                                   "eps": "0:0.2:0.1", "samples": 50}))
    assert main(["run", str(exp), "--out", str(out), "--quiet"]) == 0
    import pandas as pd

    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["attack"]) == {"fgsm", "pgd", "worst-case"}
    capsys.readouterr()


def test_quickstart_config_matches_committed_file():
    committed = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    assert {k: v for k, v in committed.items() if k not in ("name", "description", "out")} == QUICKSTART


def test_console_script_runs():
    exe = Path(sys.executable).parent / "robustbench-er"
    r = subprocess.run([str(exe), "list", "defenses", "mad*"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "madry" in r.stdout
    r = subprocess.run([str(exe), "sweep", "--dataset", "digits", "--defense", "x", "--attack", "pgd", "--eps", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown defense 'x'" in r.stderr.lower()


def test_attack_parameters_and_checkpoint_flag(tmp_path, capsys, none_digits):
    from robustbench_er.cli import parse_attack

    a = parse_attack("cw(confidence=9,steps=100)")
    assert a.name == "cw" and a.params == {"confidence": 9, "steps": 100} and a.display == "cw(confidence=9,steps=100)"
    base = ["sweep", "--dataset", "digits", "--defense", "none", "--eps", "0:0.2:0.1", "--samples", "40",
            "--out", str(tmp_path), "--quiet"]
    assert main(base + ["--attack", "cw(confidence=-1)", "--norm", "L2"]) == 2
    assert "kappa" in capsys.readouterr().err
    assert main(base + ["--attack", "pgd(stepz=3)"]) == 2
    assert "no parameter 'stepz'" in capsys.readouterr().err
    # a given checkpoint is evaluated as is, and refused on another dataset
    assert main(base + ["--attack", "pgd(steps=5),fgsm", "--checkpoint", str(none_digits.folder)]) == 0
    import pandas as pd

    curves = pd.read_csv(tmp_path / "curves.csv")
    assert set(curves["attack"]) == {"pgd(steps=5)", "fgsm", "worst-case"}
    assert curves["checkpoint"].iloc[0] == none_digits.identity
    capsys.readouterr()
    wrong = ["sweep", "--dataset", "mnist5k", "--defense", "none", "--attack", "pgd", "--eps", "0,0.1",
             "--checkpoint", str(none_digits.folder), "--out", str(tmp_path / "w"), "--quiet"]
    assert main(wrong) == 2
    assert "trained on 'digits'; it cannot be evaluated on 'mnist5k'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["sweep", "--dataset", "digits", "--defense", "none", "--attack", "fgsm", "--eps", "0,0.1", "--samples", "20"],
    ["train", "--dataset", "digits", "--defense", "none"],
    ["quickstart"],
    ["detect", "--dataset", "digits", "--defense", "none", "--detector", "kd", "--train-attack", "fgsm",
     "--test-attack", "fgsm", "--eps", "0.1", "--samples", "100"],
], ids=lambda a: a[0])
@pytest.mark.parametrize("out", ["/proc/robustbench-er-x", "FILE/x"], ids=["proc", "under-a-file"])
def test_an_output_folder_that_cannot_be_written_exits_2_with_one_sentence(argv, out, tmp_path, capsys):
    if out.startswith("FILE"):
        (tmp_path / "f").write_text("")
        out = str(tmp_path / "f" / "x")
    assert main([*argv, "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(r"out: .*(cannot be created|is a file)", err), err


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_a_data_file_replaces_the_test_split_and_keeps_the_models(fmt, tmp_path, capsys):
    """--data-file with the dataset's own first points scores as those points do (FGSM is
    deterministic), and trains the defense once, on the dataset, for both test sets."""
    import numpy as np
    import pandas as pd
    from safetensors.torch import save_file

    from robustbench_er.data.datasets import load_dataset

    d = load_dataset("digits")
    ids = d.sample_ids(60)
    f = tmp_path / f"mine.{fmt}"
    if fmt == "npz":
        np.savez(f, x=d.x_test[ids].numpy(), y=d.y_test[ids].numpy())
    else:
        save_file({"x": d.x_test[ids].contiguous(), "y": d.y_test[ids].contiguous()}, str(f))
    base = ["sweep", "--dataset", "digits", "--defense", "none", "--attack", "fgsm", "--eps", "0,0.1,0.2",
            "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*base, "--data-file", str(f)]) == 0
    assert main([*base, "--samples", "60"]) == 0
    curves = pd.read_csv(tmp_path / "o" / "curves.csv")
    curves = curves[curves["attack"] == "fgsm"]
    mine = curves[curves["dataset"].str.startswith("digits@")].sort_values("eps")
    theirs = curves[curves["dataset"] == "digits"].sort_values("eps")
    assert len(mine) == len(theirs) == 3 and set(mine["n"]) == {60}
    assert mine["robust_acc"].tolist() == theirs["robust_acc"].tolist()
    assert len(list((tmp_path / "o" / "checkpoints").glob("*/meta.json"))) == 1  # one model for both


def test_a_data_file_that_does_not_fit_exits_2(tmp_path, capsys):
    import numpy as np

    f = tmp_path / "cifar.npz"
    np.savez(f, x=np.zeros((4, 3, 32, 32), dtype=np.float32), y=np.zeros(4, dtype=np.int64))
    assert main(["sweep", "--dataset", "digits", "--defense", "none", "--attack", "fgsm", "--eps", "0,0.1",
                 "--data-file", str(f), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "shape 3 x 32 x 32 but digits has 1 x 8 x 8" in capsys.readouterr().err
