"""The Ray executor: the local executor's results sample for sample, retries counted once, a
killed driver resumed without Ray, and a GPU request the cluster cannot meet refused."""

from __future__ import annotations

import os

import pytest
from interrupt import Interrupted, crash_once, stop_after

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'robustbench-er[ray]')")

from robustbench_er.core.errors import UserInputError  # noqa: E402
from robustbench_er.engine import executor  # noqa: E402
from robustbench_er.engine.spec import AttackConfig, SweepConfig  # noqa: E402
from robustbench_er.jobs.sweep import run_sweep  # noqa: E402
from robustbench_er.store.results import Store  # noqa: E402

RAY = {"kind": "ray", "threads_per_task": 1}


def _start() -> None:
    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # two CPUs and two pretend GPUs: tasks that ask for a GPU get one pinned
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    _start()
    yield
    ray.shutdown()


def _cfg(out, executor=None, **kw):
    base = dict(dataset="digits", defenses=["none"], attacks=[AttackConfig("fgsm"), AttackConfig("pgd", {"steps": 3})],
                eps=[0.0, 0.05, 0.1, 0.2, 0.3], samples=160, out=out, progress=False, batch_size=40,
                defense_overrides={"none": {"epochs": 1}}, executor=executor or {"kind": "local"})
    base.update(kw)
    return SweepConfig(**base)


def _outcomes(out):
    store = Store(out)
    try:
        df = store.outcomes_frame()
        return df.sort_values(["cell_id", "sample_id"])[["cell_id", "sample_id", "broken_at", "broken_by"]] \
            .reset_index(drop=True)
    finally:
        store.close()


def _with_checkpoints(local_run, folder):
    """A results folder that starts from the local run's checkpoint (so both sweep the same weights)."""
    import shutil

    shutil.copytree(local_run / "checkpoints", folder / "checkpoints", ignore=shutil.ignore_patterns("leases*"))
    return folder


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_sweep(_cfg(out))
    return out


def test_ray_gives_the_local_results(local_run, tmp_path):
    run_sweep(_cfg(_with_checkpoints(local_run, tmp_path), RAY))
    a, b = _outcomes(local_run), _outcomes(tmp_path)
    assert len(a) == 2 * 160 and a.equals(b)
    assert a["broken_at"].notna().sum() > 0  # real attacks broke real points


def test_training_jobs_run_as_tasks(tmp_path):
    from robustbench_er.models.checkpoints import read_meta

    got = run_sweep(_cfg(tmp_path, RAY, attacks=[AttackConfig("fgsm")]))  # no checkpoint here: a task trains it
    (folder,) = [p for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()]
    assert read_meta(folder)["defense"] == "none" and got[0].clean_acc > 0.5


def test_a_transfer_attacks_surrogate_is_trained_as_a_task_too(tmp_path):
    loaded = []
    run_sweep(_cfg(tmp_path, RAY, attacks=[AttackConfig("transfer", {"surrogate": "none[epochs=2]"})], samples=40),
              on_train=lambda label, t: loaded.append((label, t.reused)))
    assert len(list((tmp_path / "checkpoints").glob("*/meta.json"))) == 2  # the defense and its surrogate
    # both came from tasks: the driver only loaded finished checkpoints
    assert len(loaded) == 2 and all(reused for _, reused in loaded), loaded


def test_a_gpu_per_task_runs_and_an_impossible_request_is_refused(local_run, tmp_path):
    run_sweep(_cfg(_with_checkpoints(local_run, tmp_path / "g"), {**RAY, "gpus_per_cell": 1}))  # each task is pinned one (pretend) GPU
    assert _outcomes(tmp_path / "g").equals(_outcomes(local_run))
    with pytest.raises(UserInputError, match="GPU"):
        run_sweep(_cfg(tmp_path / "h", {**RAY, "gpus_per_cell": 3}))
    assert not (tmp_path / "h" / "store.sqlite").exists()


def test_killed_driver_resumes_without_ray(local_run, tmp_path):
    with pytest.raises(Interrupted):
        run_sweep(_cfg(_with_checkpoints(local_run, tmp_path), RAY), on_step=stop_after(1))
    run_sweep(_cfg(tmp_path))  # the local executor picks up where the Ray run stopped
    assert _outcomes(tmp_path).equals(_outcomes(local_run))


def test_a_worker_killed_mid_task_is_retried_and_counted_once(local_run, tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    monkeypatch.setattr(executor, "_batch_task", crash_once(executor._batch_task, marker))
    run_sweep(_cfg(_with_checkpoints(local_run, tmp_path / "r"), RAY))
    assert marker.is_file()  # a worker did die mid-task
    assert _outcomes(tmp_path / "r").equals(_outcomes(local_run))
