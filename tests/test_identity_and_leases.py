"""Results belong to the weights, one cell (and one checkpoint) is computed once, files appear whole."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robustbench_er.cli import main
from robustbench_er.store.results import KeepAlive, LeaseLost, LeaseTable, Store, connect

ROOT = Path(__file__).resolve().parents[1]
FAST = {"epochs": 2, "train_samples": 600}
SWEEP = ["sweep", "--dataset", "digits", "--defense", "none", "--attack", "fgsm,pgd(steps=5)",
         "--eps", "0:0.3:0.05", "--samples", "80"]


@pytest.fixture(scope="module")
def two_models(digits, tmp_path_factory):
    """Two tiny undefended nets with the same hyper-parameters but different seeds, hence weights."""
    from robustbench_er.engine.trained import get_or_train

    root = tmp_path_factory.mktemp("two")
    a = get_or_train("none", digits, seed=0, out=root, overrides=FAST, progress=False)
    b = get_or_train("none", digits, seed=1, out=root, overrides=FAST, progress=False)
    assert a.identity != b.identity
    return a, b


def _copy(folder: Path, dest: Path, **meta_changes: object) -> Path:
    shutil.copytree(folder, dest)
    meta = json.loads((dest / "meta.json").read_text())
    for k, v in meta_changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    (dest / "meta.json").write_text(json.dumps(meta))
    return dest


def _outcomes(out: Path, checkpoint: str) -> dict[str, pd.DataFrame]:
    store = Store(out)
    try:
        cells = store.cells_frame()
        mine = cells[cells["checkpoint"] == checkpoint]
        return {r.attack_label: store.outcomes(r.cell_id) for r in mine.itertuples()}
    finally:
        store.close()


def _sweep(out: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(SWEEP + ["--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    return capsys.readouterr().out


def test_results_follow_the_weights_not_the_metadata(two_models, tmp_path, capsys):
    a, b = two_models
    # B's weights in a folder whose meta.json claims to be A (id, clean accuracy and all)
    swapped = _copy(a.folder, tmp_path / "swapped", weights_sha256=json.loads((b.folder / "meta.json").read_text())["weights_sha256"], clean_acc=0.1234)
    shutil.copy(b.folder / "model.safetensors", swapped / "model.safetensors")
    shared = tmp_path / "shared"
    _sweep(shared, a.folder, capsys)
    printed = _sweep(shared, swapped, capsys)
    assert f"clean accuracy {b.clean_acc:.4f}" in printed and "0.1234" not in printed
    assert "(resumed)" not in printed  # nothing of A's was reused
    fresh = tmp_path / "fresh"
    _sweep(fresh, b.folder, capsys)
    got, want, of_a = _outcomes(shared, b.identity), _outcomes(fresh, b.identity), _outcomes(shared, a.identity)
    assert set(got) == set(want) == set(of_a) == {"fgsm", "pgd(steps=5)"}
    for label in want:
        pd.testing.assert_frame_equal(got[label], want[label])
    # the test can tell the models apart: A's outcomes are not B's
    assert any(not of_a[k]["broken_at"].equals(want[k]["broken_at"]) for k in want)
    curves = pd.read_csv(shared / "curves.csv")
    assert set(curves["checkpoint"]) == {a.identity, b.identity}
    assert len(pd.read_csv(shared / "leaderboard.csv")) == 2


def test_checkpoints_without_id_get_their_own_cells(two_models, tmp_path, capsys):
    a, b = two_models
    out = tmp_path / "out"
    for m in (a, b):
        bare = _copy(m.folder, tmp_path / f"bare-{m.identity}", id=None, clean_acc=None)
        printed = _sweep(out, bare, capsys)
        assert f"clean accuracy {m.clean_acc:.4f}" in printed
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["checkpoint"]) == {a.identity, b.identity}
    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(board["checkpoint"]) == sorted([a.identity, b.identity])
    assert (out / "leaderboard.md").is_file() and (out / "curves_digits_Linf.png").is_file()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # report files were swapped in whole


def test_meta_json_is_written_atomically(two_models, tmp_path, monkeypatch):
    from robustbench_er.core import files
    from robustbench_er.models.checkpoints import read_meta, save_checkpoint

    a, _ = two_models
    folder = tmp_path / "ck"
    save_checkpoint(folder, a.model, {"defense": "none", "dataset": "digits", "note": "first"})
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors"]
    real = os.replace
    swapped: list[str] = []

    def replace(src: str, dst: str) -> None:
        swapped.append(Path(dst).name)
        if Path(dst).name == "meta.json":
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(folder, a.model, {"defense": "none", "dataset": "digits", "note": "second"})
    assert swapped == ["model.safetensors", "meta.json"]
    assert read_meta(folder)["note"] == "first"  # the old file is intact, not half-written
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors"]  # no temp file left


def test_identity_is_stable_across_reloads_and_measured(two_models, digits, tmp_path):
    from robustbench_er.engine.trained import get_or_train
    from robustbench_er.plugins.defense import accuracy

    a, _ = two_models
    again = get_or_train("none", digits, seed=0, out=a.folder.parents[1], overrides=FAST, progress=False)
    given = get_or_train("none", digits, checkpoint_dir=a.folder, progress=False)
    assert again.reused and again.identity == given.identity == a.identity
    assert given.clean_acc == pytest.approx(accuracy(a.model, digits.x_test, digits.y_test))
    assert 0.5 < given.clean_acc <= 1.0


# ---- leases -------------------------------------------------------------------------------

def test_lease_rules(tmp_path):
    conn = connect(tmp_path / "l.sqlite")
    t = LeaseTable(conn)
    assert t.claim("k", "a", ttl=60)
    assert not t.claim("k", "b", ttl=60)  # held by a live owner
    assert t.claim("k", "a", ttl=60)  # ours already
    assert not t.renew("k", "b") and t.renew("k", "a")
    t.release("k", "b")  # not b's: no effect
    assert t.holder("k")["owner"] == "a"
    t.release("k", "a")
    assert t.holder("k") is None and t.claim("k", "b", ttl=-1)  # -1: already expired
    assert t.claim("k", "c", ttl=60) and t.holder("k")["owner"] == "c"  # an expired lease is taken over
    conn.close()


def test_keep_alive_renews_and_detects_a_takeover(tmp_path):
    db = tmp_path / "l.sqlite"
    conn = connect(db)
    t = LeaseTable(conn)
    assert t.claim("k", "me", ttl=0.6)
    with KeepAlive(db, "k", "me", ttl=0.6) as alive:
        time.sleep(1.5)  # well past the first expiry: the background thread renewed it
        assert not t.claim("k", "other", ttl=60)
        alive.check()
        conn.execute("UPDATE leases SET owner='other' WHERE key='k'")  # as if we had stalled and lost it
        with pytest.raises(LeaseLost):
            alive.check()
    assert t.holder("k")["owner"] == "other"  # leaving does not release someone else's lease
    conn.close()


def _cfg(out, **kw):
    from robustbench_er.engine.spec import AttackConfig, SweepConfig

    return SweepConfig(dataset="digits", defenses=["none"], eps=[0.0, 0.1, 0.2, 0.3], samples=60, out=out,
                       attacks=[AttackConfig("fgsm"), AttackConfig("pgd", {"steps": 5})], progress=False,
                       defense_overrides={"none": dict(FAST)}, **kw)


def test_held_cell_is_deferred_and_taken_over_when_its_lease_expires(two_models, tmp_path, monkeypatch):
    from robustbench_er.engine import sweep
    from robustbench_er.jobs.sweep import run_sweep

    a, _ = two_models
    monkeypatch.setattr(sweep, "LEASE_POLL", 0.2)
    solo = run_sweep(_cfg(tmp_path / "solo", checkpoints={"none": str(a.folder)}))
    s = Store(tmp_path / "solo")
    cells = list(s.cells_frame()["cell_id"])  # the same spec gives the same ids in any folder
    s.close()
    out = tmp_path / "out"
    store = Store(out)
    # a crashed owner: its lease on the first cell has already expired
    assert store.leases.claim(cells[0], "gone:1:x", ttl=-1)
    # a live owner on the second cell that stops renewing: taken over once its lease expires
    assert store.leases.claim(cells[1], "slow:2:y", ttl=1.5)
    expiry = store.leases.holder(cells[1])["expires"]
    finished: dict[str, float] = {}
    got = run_sweep(_cfg(out, checkpoints={"none": str(a.folder)}),
                    on_cell=lambda s: finished.setdefault(s.attack, time.time()))
    assert list(finished) == ["fgsm", "pgd"] and finished["pgd"] >= expiry
    assert [s.cell_id for s in got] == cells and [s.robust for s in got] == [s.robust for s in solo]
    assert all(store.leases.holder(c) is None for c in cells)
    store.close()


def test_training_waits_for_the_process_that_trains(two_models, digits, tmp_path, monkeypatch):
    from robustbench_er.engine import trained
    from robustbench_er.engine.trained import get_or_train

    a, _ = two_models
    monkeypatch.setattr(trained, "TRAIN_POLL", 0.2)
    folder = tmp_path / "checkpoints" / a.folder.name
    folder.parent.mkdir(parents=True)
    conn = connect(folder.parent / "leases.sqlite")
    assert LeaseTable(conn).claim(folder.name, "trainer:1:z", ttl=60)

    def other_process_finishes() -> None:
        time.sleep(1.0)
        shutil.copytree(a.folder, folder)
        own = connect(folder.parent / "leases.sqlite")
        LeaseTable(own).release(folder.name, "trainer:1:z")
        own.close()

    th = threading.Thread(target=other_process_finishes)
    th.start()
    t = get_or_train("none", digits, seed=0, out=tmp_path, overrides=FAST, progress=False)
    th.join()
    assert t.reused and t.identity == a.identity  # loaded what the other one trained, trained nothing
    assert LeaseTable(conn).holder(folder.name) is None
    conn.close()


def test_connections_opening_a_new_store_at_once_all_succeed(tmp_path):
    # switching a fresh file to WAL is refused at once ("database is locked") to all but one
    # opener; connect() must wait its turn instead (without the retry, about 7 in 100 rounds fail)
    errors: list[Exception] = []
    for i in range(150):
        path, gate = tmp_path / f"s{i}.sqlite", threading.Barrier(4)

        def open_it(path: Path = path, gate: threading.Barrier = gate) -> None:
            gate.wait()
            try:
                connect(path).close()
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        workers = [threading.Thread(target=open_it) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert errors == []


def test_two_processes_on_one_folder_compute_each_cell_once(tmp_path):
    out, solo = tmp_path / "shared", tmp_path / "solo"
    args = [sys.executable, "-m", "robustbench_er.cli", "sweep", "--dataset", "digits", "--defense", "none",
            "--attack", "fgsm,pgd(steps=20)", "--eps", "0:0.3:0.02", "--samples", "300",
            "--set", "epochs=1", "--set", "train_samples=400", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for _ in range(2)]
    talk = [p.communicate(timeout=600) for p in procs]
    outs = [o for o, _ in talk]
    assert [p.returncode for p in procs] == [0, 0], [e[-3000:] for _, e in talk]
    both = "\n".join(outs)
    # the checkpoint was trained by one process and loaded by the other
    assert len(re.findall(r"\(trained in", both)) == 1 and len(re.findall(r"\(reused\)", both)) == 1
    # each cell was computed by one process; the other found it done
    for attack in ("fgsm", "pgd(steps=20)"):
        lines = [ln for ln in both.splitlines() if ln.startswith(f"[none / {attack} / Linf]")]
        assert len(lines) == 2 and sum("(resumed)" not in ln for ln in lines) == 1, lines
    # a solo run on the same checkpoint gives exactly the same outcomes and steps
    shutil.copytree(out / "checkpoints", solo / "checkpoints")
    r = subprocess.run(args[:-1] + [str(solo), "--quiet"], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    s_shared, s_solo = Store(out), Store(solo)
    try:
        ids = sorted(s_solo.cells_frame()["cell_id"])
        assert sorted(s_shared.cells_frame()["cell_id"]) == ids and len(ids) == 2
        for cid in ids:
            pd.testing.assert_frame_equal(s_shared.outcomes(cid), s_solo.outcomes(cid))
            mine, theirs = s_shared.steps(cid), s_solo.steps(cid)
            assert len(mine) == len(theirs) > 0
            np.testing.assert_array_equal(mine["attacked"], theirs["attacked"])
            np.testing.assert_array_equal(mine["broken"], theirs["broken"])
        assert "curve-rises" not in set(s_shared.flags_frame()["flag"])
        assert s_shared.conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0
    finally:
        s_shared.close()
        s_solo.close()



@pytest.mark.parametrize("change, same", [("added-param", True), ("added-param-set", False), ("version", False)])
def test_cell_identity_moves_with_behaviour_not_with_new_defaults(change, same):
    """A parameter added later with a behaviour-keeping default (``added_field``) leaves the
    attack's part of every cell id as it was; setting it, or bumping the attack's behaviour
    ``version``, changes it (so those results are recomputed)."""
    import dataclasses

    from robustbench_er.models.checkpoints import spec_hash
    from robustbench_er.plugins.attack import added_field
    from robustbench_er.plugins.registry import get_attack

    base = get_attack("fgsm")
    kw: dict[str, int] = {}
    if change == "version":
        cls = type("Bumped", (base,), {"version": base.version + 1})
    else:
        params = dataclasses.make_dataclass("P", [("new_knob", "int | None", added_field(None))], bases=(base.Params,))
        cls = type("Knob", (base,), {"Params": params})
        kw = {"new_knob": 3} if change == "added-param-set" else {}
    old, new = base(norm="Linf").describe(), cls(norm="Linf", **kw).describe()
    assert (spec_hash(old) == spec_hash(new)) is same, (old, new)


def test_autoattack_schedule_parameters_left_at_default_keep_the_old_cell_ids():
    """``n_iter``/``n_restarts`` came after the committed AutoAttack cells: at their default they
    are not part of the identity; set, they are."""
    from robustbench_er.plugins.registry import get_attack

    aa = get_attack("autoattack")
    assert "n_iter" not in aa(norm="Linf").describe()["params"]
    assert aa(norm="Linf", n_iter=10).describe()["params"]["n_iter"] == 10
