"""The roofline of `rabo bench`: the machine's dense float32 matrix-multiply rate, the most
FLOP/s this process can get from torch on ``device``; the simulator's counted FLOPs per second
are reported as a fraction of it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

CPU_SIZES = (256, 512, 1024, 2048)
CUDA_SIZES = (1024, 2048, 4096, 8192)


@dataclass(frozen=True)
class Roofline:
    """Best dense float32 matmul rate: ``flops_per_s`` = max over sizes n of 2n³ / t, t the
    fastest of the timed calls at that size; ``by_size`` holds each size's rate."""

    flops_per_s: float
    device: str
    by_size: dict[int, float] = field(default_factory=dict)


def synchronize(device: str | torch.device) -> None:
    """Wait for queued kernels, so that a wall-clock reading covers them (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], Any], device: str | torch.device) -> tuple[float, Any]:
    """Run ``step`` once: (wall-clock seconds, including its queued kernels; its result)."""
    synchronize(device)
    start = time.perf_counter()
    result = step()
    synchronize(device)
    return time.perf_counter() - start, result


def matmul_flops(device: str = "cpu", sizes: Sequence[int] | None = None, repeats: int = 5,
                 min_seconds: float = 0.2) -> Roofline:
    """Dense float32 C = A·B at each size n: one warm-up call, then at least ``repeats`` timed
    calls (more until ``min_seconds`` have passed); the rate is 2n³ over the fastest call."""
    if sizes is None:
        sizes = CUDA_SIZES if torch.device(device).type == "cuda" else CPU_SIZES
    gen = torch.Generator().manual_seed(0)
    rates: dict[int, float] = {}
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(device)
        b = torch.randn(n, n, generator=gen).to(device)
        out = torch.empty(n, n, device=device)
        torch.mm(a, b, out=out)
        synchronize(device)
        best, spent, calls = math.inf, 0.0, 0
        while calls < repeats or spent < min_seconds:
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            synchronize(device)
            took = time.perf_counter() - start
            best, spent, calls = min(best, took), spent + took, calls + 1
        rates[n] = 2.0 * n ** 3 / max(best, 1e-12)
        del a, b, out
    return Roofline(max(rates.values()), str(device), rates)
