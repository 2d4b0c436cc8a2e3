"""Fidelity: our survivors-only PGD sweep is never weaker than Foolbox's LinfPGD on the same
checkpoint and samples (by more than 0.5 points at any epsilon)."""

from __future__ import annotations

import numpy as np
import torch

from robustbench_er.engine.spec import AttackConfig, SweepConfig
from robustbench_er.jobs.sweep import run_sweep

GRID = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


def test_pgd_sweep_not_weaker_than_foolbox(madry_digits, digits, ckpt_root, tmp_path):
    import shutil

    import foolbox as fb

    n = 120
    out = tmp_path / "sweep"
    shutil.copytree(madry_digits.folder, out / "checkpoints" / madry_digits.folder.name)
    cfg = SweepConfig(dataset="digits", defenses=["madry"], attacks=[AttackConfig("pgd", {"steps": 20})], eps=GRID,
                      samples=n, out=out, progress=False)
    ours = np.array([run_sweep(cfg)[0].robust[e] for e in GRID])

    ids = digits.sample_ids(n)
    x, y = digits.x_test[ids], digits.y_test[ids]
    torch.manual_seed(0)
    fmodel = fb.PyTorchModel(madry_digits.model.eval(), bounds=(0, 1))
    _, _, success = fb.attacks.LinfPGD(steps=20, random_start=True)(fmodel, x, y, epsilons=GRID)
    theirs = (~success).float().mean(1).numpy()
    assert abs(ours[0] - theirs[0]) < 1e-6  # eps 0: clean accuracy
    assert 0.2 < ours[3] < ours[0]  # a real curve: the robust model is partly broken mid-grid
    assert np.all(ours <= theirs + 0.005), (ours, theirs)
