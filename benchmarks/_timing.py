"""Wall-clock timing that waits for the GPU, shared by the benchmark scripts."""

from __future__ import annotations

import time

import torch


def synchronize(device):
    """Wait for the work queued on ``device``; CUDA runs asynchronously, the CPU does not."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device):
    """Seconds that ``function()`` takes, its queued GPU work included, and its result."""
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result
