"""Peak resident memory of one decoder pass, each configuration in a process of its own.

CPU PyTorch keeps no peak-allocation counter, and freed memory stays with the
allocator, so one process measuring several configurations would see the earlier
ones' leftovers. :func:`measure_peak_memory` therefore starts one fresh interpreter
(``python -m sam3dseg.analysis.memory_probe``) that imports torch once and *forks a new child
per configuration*. The child builds the decoder and its input, runs a tiny warm-up
pass (thread pool, kernel caches), resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), reads its resident memory, runs the measured pass and
reads the peak (``VmHWM``). The reported figure is ``peak − resident before the
pass``: activations, workspaces, outputs and gradients, as the operating system saw
them, weights and input excluded. For forward+backward passes the child also sums
the bytes autograd saves for the backward pass (``saved_tensors_hooks``, each storage
once, weights excluded): the activation memory, exact and free of allocator and workspace noise.

The worker must not compute anything itself before forking: a child of a process
that has used OpenMP threads can hang.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

METHOD = (
    "resident set size read from /proc: each configuration runs in a freshly forked process; "
    "peak (VmHWM, reset just before the pass) minus resident memory before the pass"
)


def status_kib(field: str) -> int:
    """A field of ``/proc/self/status`` in KiB (VmRSS, VmHWM, RssAnon, RssFile, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> bool:
    """Set VmHWM to the current RSS (Linux ≥ 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def decoder_of_kind(kind: str, num_classes: int = 3, dim: int = 32):
    """``conv`` (the method's decoder), ``sdpa`` or ``explicit`` (the attention baseline), the method's widths."""
    from ..model.decoder import SAM3DDecoder
    from .attention import AttentionDecoder

    if kind == "conv":
        return SAM3DDecoder(num_classes)
    if kind in ("sdpa", "explicit"):
        return AttentionDecoder(num_classes, dim=dim, kernel=kind)
    raise ValueError(f"decoder kind must be conv, sdpa or explicit, got {kind!r}")


def run_pass(model, features, backward: bool) -> None:
    """One forward (and backward) pass; the loss is a plain sum so it costs nothing to speak of."""
    import torch

    if backward:
        sum(out.mean() for out in model(features)).backward()
    else:
        with torch.no_grad():
            model(features)


@contextmanager
def saved_storages(exclude: Collection[int] = ()) -> Iterator[dict[int, int]]:
    """Record what autograd saves for backward inside the block: ``{storage pointer: bytes}``.

    Each storage is counted once however many views of it are saved; storages whose
    pointer is in ``exclude`` (e.g. the weights) are skipped. Tensors pass through
    unchanged, so recording costs no memory.
    """
    import torch

    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def _probe(config: dict[str, Any]) -> dict[str, Any]:
    """Measure one configuration in this (forked) process."""
    import torch

    torch.set_num_threads(config.get("threads", 2))
    torch.manual_seed(0)
    model = decoder_of_kind(config["decoder"], dim=config.get("dim", 32))
    grid = config["size"] // 16
    features = torch.randn(1, model.in_channels, config["depth"], grid, grid)
    run_pass(model, torch.randn(1, model.in_channels, 2, 1, 1), config["backward"])  # warm-up
    model.zero_grad(set_to_none=True)
    gc.collect()
    reset = reset_peak()
    before = status_kib("VmRSS")
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # kept anyway
    start = time.perf_counter()
    try:
        with saved_storages(exclude=weights) as saved:
            run_pass(model, features, config["backward"])
    except RuntimeError as err:  # an allocation this machine cannot satisfy
        return {**config, "error": str(err).splitlines()[0]}
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM")
    result = {**config, "peak_mib": (peak - before) / 1024, "seconds": seconds, "peak_reset": reset}
    if config["backward"]:
        result["saved_mib"] = sum(saved.values()) / 2**20
    return result


def in_forked_child(work: Callable[..., dict], *args: Any) -> dict:
    """``work(*args)`` in a freshly forked process; its result dict, or ``{"error": ...}``.

    Memory figures read in the child are the child's alone. Call it before the parent runs
    any torch operation: a fork does not copy torch's worker threads, and a child that needs
    them would wait forever.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        try:
            result = work(*args)
        except BaseException as err:  # report, never fall back into the parent's code
            result = {"error": f"{type(err).__name__}: {err}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    # empty: killed (e.g. by the OOM killer) before it could answer
    return json.loads(payload) if payload else {"error": f"child ended with status {status}"}


def _worker(configs: list[dict[str, Any]]) -> None:
    """Fork one child per configuration; print one JSON line per result."""
    import torch  # noqa: F401  (imported once here, inherited by every child)

    for config in configs:
        result = in_forked_child(_probe, config)
        print(json.dumps({**config, **result}), flush=True)


def measure_peak_memory(configs: list[dict[str, Any]], on_result=None) -> list[dict[str, Any]]:
    """Peak memory of each configuration (see the module docstring for the method).

    Args:
        configs: dicts with ``decoder`` (conv | sdpa | explicit), ``depth`` D, ``size``
            (output in-plane size H = W, a multiple of 16), ``backward`` (bool),
            optional ``threads``, ``dim``.
        on_result: called with each result as it arrives (progress display).

    Returns:
        The configs with ``peak_mib`` and ``seconds`` added (and ``saved_mib`` for
        forward+backward), or ``error``.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "sam3dseg.analysis.memory_probe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(configs))
    proc.stdin.close()
    results = []
    for line in proc.stdout:
        results.append(json.loads(line))
        if on_result is not None:
            on_result(results[-1])
    if proc.wait() != 0 or len(results) != len(configs):
        raise RuntimeError(f"memory probe worker failed (exit {proc.returncode}, {len(results)}/{len(configs)} results)")
    return results


if __name__ == "__main__":
    _worker(json.loads(sys.stdin.read()))
