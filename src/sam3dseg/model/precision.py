"""The arithmetic the frozen encoder computes in: ``fp32``, ``bf16`` or ``int8`` (``--encoder-precision``).

- ``fp32``: every product in float32; linear layers on a CPU through oneDNN with GELU fused
  (:func:`linear`).
- ``bf16``: the encoder runs under ``torch.autocast`` in bfloat16 (features returned in
  float32). Worth it only where the hardware computes bf16 natively: CUDA GPUs, and CPUs with
  AVX512-BF16 or AMX. On an AVX2-only CPU a bf16 matrix product is emulated, about 400× slower
  than fp32, so ``auto`` never picks it there (:func:`native_bf16`).
- ``int8``: dynamic quantisation of the linear layers (:class:`Int8Linear`): weights int8 per
  output channel, each token's activations int8 by their own absolute maximum, products in
  int32 (``torch._int_mm``: VNNI on x86), rescaled to float32. Attention, norms and
  convolutions stay in float32.

``auto`` (:func:`resolve_precision`) picks bf16 on a CUDA device with bf16 support and on a CPU
whose flags state native bf16 *and* whose bf16 matrix product measures faster than fp32 (once
per process); fp32 elsewhere.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16", "int8")
PRECISION_CHOICES = ("auto", *PRECISIONS)

# CPU flags that mean bf16 dot products in hardware (x86: AVX512-BF16, AMX tiles).
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# How much faster than fp32 a bf16 product must measure for auto to pick bf16.
_BF16_GAIN = 1.2


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_speedup(n: int = 512, repeats: int = 3) -> float:
    """Measured fp32 time over bf16 time of an ``n × n`` matrix product on this CPU (best of ``repeats``)."""
    def best(dtype: torch.dtype) -> float:
        a = torch.randn(n, n).to(dtype)
        torch.mm(a, a)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, a)
            times.append(time.perf_counter() - start)
        return min(times)

    return best(torch.float32) / best(torch.bfloat16)


@functools.cache
def native_bf16() -> bool:
    """True where this CPU computes bf16 natively: its flags say so and a one-off measurement agrees
    (a bf16 product at least ``_BF16_GAIN`` × faster than fp32). Flags alone are not trusted: a
    virtual machine can report flags its host does not run at speed."""
    return bool(cpu_flags() & _BF16_FLAGS) and bf16_speedup() >= _BF16_GAIN


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``auto`` to what this device computes best without losing accuracy: bf16 on CUDA with bf16 support
    and on CPUs with native bf16, fp32 elsewhere; any other value is returned as it is."""
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_bf16() else "fp32"


def linear(x: Tensor, layer: nn.Module, activation: str = "none") -> Tensor:
    """``layer(x)``, then GELU if ``activation == "gelu"``: ``(..., in) -> (..., out)``.

    On a CPU the product goes to oneDNN's linear with the activation fused into it (the kernel
    torch.compile's CPU backend picks): in fp32 on the ViT-B shapes it ran ×1.1–1.4 faster than
    ``F.linear``'s MKL ``addmm`` here (AMD EPYC, AVX-512), and the GELU costs no extra pass over
    the ``(tokens, 4·C)`` hidden tensor. Under bf16 autocast a frozen layer's bf16 weights are made
    once, not cast at every call as autocast does. Elsewhere (CUDA, :class:`Int8Linear`, a torch
    without oneDNN) the layer itself and ``F.gelu``: the same numbers to float rounding.
    """
    operands = _onednn_operands(x, layer)
    if operands is None:
        out = layer(x)
        return F.gelu(out) if activation == "gelu" else out
    x, weight, bias = operands
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, bias, activation, [None], _ALGORITHM[activation])
    return out.view(*x.shape[:-1], out.shape[-1])


def _onednn_operands(x: Tensor, layer: nn.Module) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """Input, weight and bias for oneDNN's linear where it applies (an fp32 ``nn.Linear`` on a CPU, fed fp32, or
    frozen under bf16 autocast: cast as autocast would, the weights once); None elsewhere."""
    if not (_ONEDNN and isinstance(layer, nn.Linear) and x.device.type == "cpu" and layer.weight.dtype == torch.float32):
        return None
    if not torch.is_autocast_enabled("cpu"):
        return (x, layer.weight, layer.bias) if x.dtype == torch.float32 else None
    if torch.get_autocast_dtype("cpu") == torch.bfloat16 and not layer.weight.requires_grad:
        return (x.to(torch.bfloat16), *_bf16_weights(layer))
    return None


def _bf16_weights(layer: nn.Linear) -> tuple[Tensor, Tensor | None]:
    """A frozen layer's weight and bias in bf16, made once (again if the weights were loaded anew)."""
    version = layer.weight._version
    cached = getattr(layer, "_bf16_cache", None)
    if cached is None or cached[0] != version:
        bias = None if layer.bias is None else layer.bias.detach().to(torch.bfloat16)
        cached = (version, layer.weight.detach().to(torch.bfloat16), bias)
        layer._bf16_cache = cached
    return cached[1], cached[2]


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_ALGORITHM = {"none": "", "gelu": "none"}  # GELU's erf form, F.gelu's default


class Int8Linear(nn.Module):
    """A linear layer quantised dynamically: ``(..., in) -> (..., out)`` in float32.

    The weight is stored as int8 with one scale per output channel (its absolute maximum / 127);
    at each call every token (row of the input) is scaled to int8 by its own absolute maximum,
    multiplied in int32 (``torch._int_mm``), and rescaled. Symmetric, no zero points.
    """

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        weight = layer.weight.detach().float()
        scale = weight.abs().amax(1).clamp_min(1e-12) / 127
        self.register_buffer("weight", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float().clone())
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).float()
        token_scale = flat.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
        q = torch.round(flat / token_scale).to(torch.int8)
        rows = q.shape[0]
        if q.is_cuda and rows <= 16:  # CUDA's int8 product takes more than 16 rows: pad with zero tokens
            q = F.pad(q, (0, 0, 0, 17 - rows))
        out = torch._int_mm(q, self.weight.t())[:rows].float().mul_(token_scale * self.scale)
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)


def quantize_linears(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` by its :class:`Int8Linear`, in place; returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
        else:
            quantize_linears(child)
    return module
