"""Where work runs: the device, and the process group of a ``torchrun`` launch.

Under ``torchrun`` every process has ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in
its environment (that is torchrun's contract, not a path setting); a process that
has none is a single-process run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import UserError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")

# How every stage reports (train, cache, predict, evaluate, postprocess, the demo, analyze): facts,
# results and warnings go to a ``log`` callable, one line each (None: silence); progress bars are a
# separate ``progress`` switch. `--quiet` turns off the bars only.
Log = Callable[[str], None]


def print_line(text: str) -> None:
    """The command line's ``log``: the line on stdout, flushed (so it interleaves with progress bars)."""
    print(text, flush=True)


def resolve_device(name: str, world: int = 1) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device; ``auto`` takes the GPU when there is one.

    In a data-parallel run (``world > 1``) each process takes the GPU of its
    ``LOCAL_RANK`` whatever index was asked for.
    """
    if not DEVICE_PATTERN.match(name):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but no CUDA GPU is available")
    device = torch.device(name)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def world_size() -> int:
    """The number of processes of a ``torchrun`` launch (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> tuple[int, int]:
    """``(rank, world size)``; joins the process group when started by ``torchrun``."""
    world = world_size()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # generous: ranks wait at barriers while others encode or validate on a CPU
        dist.init_process_group(backend, timeout=timedelta(hours=6))
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def barrier() -> None:
    """Wait for every process of the group (nothing to wait for in a single-process run)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_main_process() -> bool:
    """True in a single-process run and on rank 0 of a ``torchrun`` launch."""
    return int(os.environ.get("RANK", "0")) == 0


def return_large_buffers_to_the_os(threshold: int = 1 << 20) -> bool:
    """Have glibc's malloc serve every allocation of ``threshold`` bytes or more with its own mmap.

    glibc raises its mmap threshold each time a large block is freed, after which crop-sized
    buffers (MiBs, allocated and freed every step) come from the heap; small long-lived objects
    allocated between them (a newly opened case, its class locations) then pin the heap, which
    grows with every case read (measured: about 4 MiB per case). A fixed threshold (which also
    turns the adjustment off) sends large buffers back to the OS when freed. Process-wide; a
    no-op returning False where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False
