"""The analyze command and analyze: sections: results are stored and read back, every input is
checked before any work (one sentence, exit 2, nothing written)."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from robustbench_er.cli import main

PLAIN = (
    "from torch import nn\n"
    "from robustbench_er.plugins.defense import Defense\n"
    "from robustbench_er.plugins.registry import register_defense\n"
    "from robustbench_er.models.training import train_clean\n"
    "@register_defense('net-without-embedding-a')\n"
    "class Plain(Defense):\n"
    "    presets = {'digits': {'quick': {}, 'paper': {}}}\n"
    "    def build(self, spec, hp):\n"
    "        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
    "    def train(self, model, data, hp, seed, progress=True):\n"
    "        return train_clean(model, data, hp, seed, progress, 'net')\n")


@pytest.mark.parametrize("args, says", [
    (["--analysis", "nope"], "unknown analysis"),
    (["--analysis", "sparsity(tol=-1)"], "tol"),
    (["--analysis", "sparsity(size=3)"], "no parameter 'size'"),
    (["--analysis", "sparsity", "--defense", "net-without-embedding-a", "--plugin", "{plugin}"], "embedding"),
    (["--analysis", "sensitivity", "--defense", ""], "analyses a model"),
    (["--analysis", "tsne", "--defense", "none", "--set", "epoch=2"], "no hyper-parameter 'epoch'"),
])
def test_bad_analyze_input(args, says, tmp_path, capsys):
    plugin = tmp_path / "plain.py"
    plugin.write_text(PLAIN)
    args = [a.replace("{plugin}", str(plugin)) for a in args]
    base = {"--dataset": "digits", "--defense": "none", "--out": str(tmp_path / "o")}
    flags = [x for kv in base.items() if kv[0] not in args for x in kv]
    rc = main(["analyze", *flags, *args, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and says.lower() in err.lower(), err
    assert not (tmp_path / "o").exists()


def test_analyses_are_stored_and_read_back(tmp_path, monkeypatch):
    from robustbench_er.plugins.registry import get_analysis

    out = tmp_path / "o"
    job = {"dataset": "digits", "defenses": ["none"], "set": ["epochs=2"], "out": str(out),
           "analyses": ["sparsity(samples=60)", "intrinsic-dim(samples=120)"]}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"name": "analyses only", "analyze": job}))
    assert main(["run", str(tmp_path / "e.yaml"), "--quiet"]) == 0
    first = pd.read_csv(out / "analyses" / "summary.csv")
    assert set(first["defense"]) == {"none", "digits"}  # the dataset's own analysis is filed under its name
    units = first[(first["analysis"] == "sparsity(samples=60)") & (first["quantity"] == "units")]["value"].item()
    assert 0 < units <= 64
    assert (out / "analyses" / "sparsity_samples=60" / "none.png").stat().st_size > 3000

    def no_run(self, ctx):
        raise AssertionError("a stored analysis ran again")

    for name in ("sparsity", "intrinsic-dim"):
        monkeypatch.setattr(get_analysis(name), "run", no_run)
    assert main(["analyze", "--dataset", "digits", "--defense", "none", "--set", "epochs=2", "--out", str(out),
                 "--analysis", "sparsity(samples=60),intrinsic-dim(samples=120)", "--quiet"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "analyses" / "summary.csv"), first)
