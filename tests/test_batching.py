"""batch_size auto: 128 on a CPU; on a GPU the largest batch that fits, probed once per model and
cached. The GPU's out-of-memory error is stood in for by a network that raises it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from robustbench_er.models import batching


class _Fits(nn.Module):
    """A linear model that runs out of memory above ``limit`` images, as a GPU would."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.calls = limit, []
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("limit, probed", [(100, 64), (300, 128), (5000, 2048), (10**6, 4096)])
def test_the_probe_takes_half_the_largest_batch_that_fits(limit, probed):
    model = _Fits(limit)
    assert batching.probe_batch_size(model, (1, 8, 8), torch.device("cpu")) == probed
    tried = [128 * 2**k for k in range(7) if 128 * 2**(k - 1) <= min(limit, batching.MAX_BATCH_SIZE)]
    assert model.calls == tried  # doubling until the first that does not fit, or the cap


def test_a_cpu_gets_128_without_a_probe():
    model = _Fits(10)
    assert batching.auto_batch_size(model, "id", (1, 8, 8), torch.device("cpu")) == batching.CPU_BATCH_SIZE
    assert model.calls == []


def test_the_answer_is_cached_per_model_device_and_shape(tmp_path, monkeypatch):
    monkeypatch.setattr(batching, "_CACHE", {})
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Stand-in GPU")
    model = _Fits(600)
    cuda = torch.device("cuda")
    monkeypatch.setattr(batching, "_fits", lambda m, shape, n, device: n <= m.limit)  # no CUDA here
    first = batching.auto_batch_size(model, "abc", (1, 8, 8), cuda, tmp_path)
    assert first == 256
    stored = json.loads((tmp_path / batching.CACHE_FILE).read_text())
    assert stored == {"abc|Stand-in GPU|1x8x8": 256}
    monkeypatch.setattr(batching, "_CACHE", {})  # a new process: the file answers, no probe
    monkeypatch.setattr(batching, "_fits", lambda *a: pytest.fail("probed again"))
    assert batching.auto_batch_size(model, "abc", (1, 8, 8), cuda, tmp_path) == 256
