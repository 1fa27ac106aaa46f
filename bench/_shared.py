"""What the benchmarks share (imported by them, not run): the CPU's name for the record beside every
figure, and timing two callables on the same input in turn, A B A B, so drift of a shared machine hits
both alike."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def alternate(
    a: Callable[[torch.Tensor], torch.Tensor], b: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int,
    warm: torch.Tensor | None = None,
) -> tuple[list[float], list[float], float, torch.Tensor]:
    """``a(x)`` and ``b(x)`` timed in turn ``repeats`` times without autograd, after one warm-up call each on
    ``warm`` (default ``x``: first calls allocate and pick kernels). Returns the seconds of each call of
    ``a``, of ``b``, the largest ``|a(x) - b(x)|`` seen and ``b``'s last output."""

    def timed(fn: Callable[[torch.Tensor], torch.Tensor], inp: torch.Tensor) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        with torch.no_grad():
            out = fn(inp)
        return time.perf_counter() - start, out

    timed(a, x if warm is None else warm), timed(b, x if warm is None else warm)
    t_a, t_b, diff, out_b = [], [], 0.0, None
    for _ in range(repeats):
        t, out_a = timed(a, x)
        t_a.append(t)
        t, out_b = timed(b, x)
        t_b.append(t)
        diff = max(diff, (out_a - out_b).abs().max().item())
    return t_a, t_b, diff, out_b
