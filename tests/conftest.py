"""Shared fixtures: tiny real models trained on scikit-learn's digits (8x8, ~1 s each)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def digits():
    from robustbench_er.data.datasets import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def ckpt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def none_digits(digits, ckpt_root):
    """An undefended TinyCNN on digits (quick preset, ~95% clean accuracy)."""
    from robustbench_er.engine.trained import get_or_train

    torch.manual_seed(0)
    return get_or_train("none", digits, profile="quick", seed=0, out=ckpt_root, progress=False)


@pytest.fixture(scope="session")
def madry_digits(digits, ckpt_root):
    from robustbench_er.engine.trained import get_or_train

    return get_or_train("madry", digits, profile="quick", seed=0, out=ckpt_root, progress=False)
