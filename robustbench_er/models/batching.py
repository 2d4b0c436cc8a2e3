"""The attack batch size a sweep uses when none is given (``batch_size: auto``, the default).

On a CPU it is 128 (:data:`CPU_BATCH_SIZE`): larger batches buy little there, and the default
keeps the cells' ids. On a GPU a call on 10 points costs about what one on 500 does, so the
harness takes the largest batch that fits, found by a probe: a forward and a backward pass (what
a gradient attack does per step) on random inputs of the data's shape, at 128, 256, 512, ...
points up to :data:`MAX_BATCH_SIZE`, stopping at the first that runs out of memory. The answer
is cached per model identity, device and image shape, in the process and in
``<out>/batch_sizes.json``, so a rerun asks no second time.

The probe needs headroom beyond a plain forward pass: an attack keeps the clean inputs, the
adversarial ones and their gradients, and verification reruns the model, so the probe's own
batch is taken at half of what it measured (:data:`HEADROOM`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from robustbench_er.core.files import write_text_atomic

#: the batch size on a CPU and the first size the GPU probe tries
CPU_BATCH_SIZE = 128
#: the probe's last size: beyond it a step rarely has more points
MAX_BATCH_SIZE = 8192
#: the fraction of the largest probed batch that a sweep uses
HEADROOM = 0.5
CACHE_FILE = "batch_sizes.json"

_CACHE: dict[str, int] = {}


def _fits(model: nn.Module, shape: Sequence[int], n: int, device: torch.device) -> bool:
    """One forward and backward pass on ``n`` random images; False when the device runs out of memory."""
    try:
        x = torch.rand((n, *shape), device=device, requires_grad=True)
        model(x).logsumexp(dim=1).sum().backward()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def probe_batch_size(model: nn.Module, shape: Sequence[int], device: torch.device,
                     start: int = CPU_BATCH_SIZE, cap: int = MAX_BATCH_SIZE) -> int:
    """The largest power-of-two multiple of ``start`` (up to ``cap``) whose forward and backward
    pass fits, times :data:`HEADROOM` (never below ``start``'s half or 1)."""
    was = model.training
    model.eval()
    best = 0
    n = start
    try:
        while n <= cap and _fits(model, shape, n, device):
            best = n
            n *= 2
    finally:
        model.train(was)
        model.zero_grad(set_to_none=True)
    return max(1, int(best * HEADROOM) if best else start // 2)


def auto_batch_size(model: nn.Module, identity: str, shape: Sequence[int], device: torch.device,
                    out: str | Path | None = None) -> int:
    """The batch size for ``model`` on ``device``: 128 on a CPU (or MPS), the probed size on a
    GPU, cached under the model's identity, the device and the image shape."""
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    key = f"{identity}|{torch.cuda.get_device_name(device)}|{'x'.join(map(str, shape))}"
    path = Path(out) / CACHE_FILE if out is not None else None
    if key not in _CACHE and path is not None and path.is_file():
        try:
            _CACHE.update({k: int(v) for k, v in json.loads(path.read_text()).items()})
        except (ValueError, TypeError, AttributeError):
            pass  # an unreadable cache is probed again and rewritten
    if key not in _CACHE:
        _CACHE[key] = probe_batch_size(model, shape, device)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(_CACHE, indent=2, sort_keys=True))
    return _CACHE[key]
