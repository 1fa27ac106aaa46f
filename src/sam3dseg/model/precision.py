"""The arithmetic the frozen encoder computes in: ``fp32``, ``bf16`` or ``int8`` (``--encoder-precision``).

- ``fp32``: every product in float32; linear layers on a CPU through oneDNN with GELU fused
  (:func:`linear`).
- ``bf16``: the encoder runs under ``torch.autocast`` in bfloat16 (features returned in
  float32). Worth it only where the hardware computes bf16 natively: CUDA GPUs, and CPUs with
  AVX512-BF16 or AMX. A CPU whose oneDNN has no bf16 at all (AVX2 only) can only emulate it:
  measured ×5 (ViT-B) to ×13 (LiteMedSAM) slower than fp32 a 256² slice (AMD EPYC, AVX2), so
  asking for bf16 there is refused at the door (:func:`resolve_precision`) and ``auto`` never
  picks it; the Python API still computes it (the layers under autocast).
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
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError

PRECISIONS = ("fp32", "bf16", "int8")
PRECISION_CHOICES = ("auto", *PRECISIONS)

# CPU flags that mean bf16 dot products in hardware (x86: AVX512-BF16, AMX tiles).
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# How much faster than fp32 a bf16 product must measure for auto to pick bf16.
_BF16_GAIN = 1.2


def _cpuinfo(key: str) -> str | None:
    """The first ``key : value`` of ``/proc/cpuinfo`` (None where there is no such file, e.g. macOS, or key)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() == key:
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none, e.g. macOS)."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_name() -> str:
    """The CPU's model name, for messages and the record beside every figure."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_bf16() -> bool:
    """True where this CPU computes bf16 at all (oneDNN has bf16 kernels for it: AVX-512 or newer on x86);
    False on an AVX2-only CPU, where bf16 products are emulated element by element."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())


def describe_cpu() -> str:
    """``AMD EPYC (AVX2; bf16: none)``: the name, torch's vector capability and what bf16 it has."""
    native = sorted(cpu_flags() & _BF16_FLAGS)
    bf16 = ", ".join(native) if native else "oneDNN, no native instructions" if cpu_bf16() else "none"
    return f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}; bf16: {bf16})"


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
    return bool(cpu_flags() & _BF16_FLAGS) and cpu_bf16() and bf16_speedup() >= _BF16_GAIN


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``auto`` to what this device computes best without losing accuracy: bf16 on CUDA with bf16 support
    and on CPUs with native bf16, fp32 elsewhere; any other value is returned as it is, once checked.

    Raises:
        UserError: bf16 asked for on a device that cannot compute it (one line naming the hardware and
            what it can do).
    """
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and native_bf16() else "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16():
        raise UserError(
            f"encoder_precision (--encoder-precision) bf16: this CPU, {describe_cpu()}, has no bf16 arithmetic (emulated, an encoder runs ×5-13 "
            "slower than in fp32); use fp32 or int8 (auto picks fp32 here)"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"encoder_precision (--encoder-precision) bf16: this GPU ({torch.cuda.get_device_name(device)}) has no bf16; use fp32 or int8 (auto picks fp32 here)")
    return precision


def linear(x: Tensor, layer: nn.Module, activation: str = "none") -> Tensor:
    """``layer(x)``, then GELU if ``activation == "gelu"``: ``(..., in) -> (..., out)``.

    On a CPU the product goes to oneDNN's linear with the activation fused into it (the kernel
    torch.compile's CPU backend picks): in fp32 on the ViT-B shapes it ran ×1.1–1.4 faster than
    ``F.linear``'s MKL ``addmm`` here (AMD EPYC, AVX-512), and the GELU costs no extra pass over
    the ``(tokens, 4·C)`` hidden tensor. Under bf16 autocast a frozen layer's bf16 weights are made
    once, not cast at every call as autocast does. Elsewhere (CUDA, :class:`Int8Linear`, a torch
    without oneDNN, bf16 on a CPU without oneDNN's bf16) the layer itself and ``F.gelu``: the same
    numbers to float rounding.
    """
    operands = _onednn_operands(x, layer)
    if operands is None:
        out = layer(x)
        return F.gelu(out) if activation == "gelu" else out
    x, weight, bias = operands
    out = _FUSED_LINEAR(x.reshape(-1, x.shape[-1]), weight, bias, activation, [None], _ALGORITHM[activation])
    return out.view(*x.shape[:-1], out.shape[-1])


def _onednn_operands(x: Tensor, layer: nn.Module) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """Input, weight and bias for oneDNN's linear where it applies (an fp32 ``nn.Linear`` on a CPU, fed fp32, or
    frozen under bf16 autocast: cast as autocast would, the weights once); None elsewhere."""
    if not (_ONEDNN and isinstance(layer, nn.Linear) and x.device.type == "cpu" and layer.weight.dtype == torch.float32):
        return None
    if not torch.is_autocast_enabled("cpu"):
        return (x, layer.weight, layer.bias) if x.dtype == torch.float32 else None
    if torch.get_autocast_dtype("cpu") == torch.bfloat16 and not layer.weight.requires_grad and _ONEDNN_BF16:
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
_FUSED_LINEAR = torch.ops.mkldnn._linear_pointwise if _ONEDNN else None  # oneDNN's linear, its activation fused
# oneDNN's bf16 inner product exists only where it has bf16 kernels (not on an AVX2-only CPU: "could not create a
# primitive descriptor"); there the layer itself runs under autocast, emulated.
_ONEDNN_BF16 = _ONEDNN and cpu_bf16()
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
