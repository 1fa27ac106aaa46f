"""The method's analysis (method §2.2–§5), measured on the real modules.

Five measurements, each a function returning plain numbers (``results.json``):

- :func:`measure_complexity`: FLOPs (``torch.utils.flop_counter``) and peak memory of the
  conv decoder and the self-attention baseline over depths × in-plane sizes, with the
  fitted log-log slope against voxels (method §2.2, §3).
- :func:`measure_level_flops`: the conv FLOPs per level beside the method's
  ``H_ℓ W_ℓ D k C_ℓ²`` and the exact closed form (method §2.2).
- :func:`measure_gradient_forms`: the block with its projection shortcut, the
  identity residual ``y = g + φ(g)``, serial ``y = φ(g)`` and concat + 1×1×1 fusion:
  parameters, activation memory, gradient norms through four blocks, Jacobian
  singular values (method §4).
- :func:`measure_lipschitz`: the method's bound ``‖W‖₁`` against each conv's spectral
  norm by power iteration (method §3).
- :func:`measure_deep_supervision`: ``∇L_tot = Σ α_ℓ ∇L(ℓ)`` and the gradient reaching
  the first block with and without the auxiliary levels (method §5.2).
- :func:`measure_dice_forms`: the joint Dice's ``Dice = cosine`` identity, how it scores the
  all-background prediction as the foreground shrinks, and the share of the Dice gradient a
  small class receives under the joint and the per-class form (method §5.1).

:func:`run_analysis` runs them all and writes the report (:mod:`sam3dseg.analysis.report`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..common.files import write_json
from ..common.settings import to_dict
from ..model.decoder import ResidualUpBlock, SAM3DDecoder
from ..model.losses import DEEP_SUPERVISION_WEIGHTS, deep_supervision_loss, dice_loss, one_hot, per_class_dice_loss
from .memory_probe import METHOD as MEMORY_METHOD
from .memory_probe import decoder_of_kind, measure_peak_memory, saved_storages

KINDS = ("conv", "sdpa", "explicit")


@dataclass(frozen=True)
class AnalysisConfig:
    """Sizes of every measurement; :func:`analysis_config` gives the quick and the full set."""

    flop_depths: tuple[int, ...] = (4, 8, 16, 32, 64)
    flop_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # output in-plane size H = W
    # Memory: (depth, sizes) and (size, depths) sweeps per decoder kind, run for real.
    # Sizes are multiples of 16 (the encoder grid is H/16).
    conv_memory: tuple[tuple[int, tuple[int, ...]], tuple[int, tuple[int, ...]]] = (
        (16, (128, 160, 192, 224, 256)),
        (192, (8, 12, 16, 24, 32)),
    )
    attention_memory: tuple[tuple[int, tuple[int, ...]], tuple[int, tuple[int, ...]]] = (
        (4, (48, 64, 80, 96, 112)),
        (64, (1, 2, 4, 6, 8)),
    )
    memory_backward_only: bool = False
    flop_backward: bool = True
    attention_dim: int = 32
    num_classes: int = 3
    level_flops_size: tuple[int, int] = (16, 128)  # (D, H) for the per-level table
    gradient_width: int = 16
    gradient_grid: tuple[int, int, int] = (4, 16, 16)
    jacobian_width: int = 4
    jacobian_grid: tuple[int, int, int] = (2, 4, 4)
    seeds: int = 8
    lipschitz_grid: tuple[int, int, int] = (8, 16, 16)
    power_iterations: int = 60
    supervision_grid: tuple[int, int, int] = (4, 4, 4)  # decoder input (D, h, w)
    dice_grid: tuple[int, int, int] = (8, 64, 64)  # label volume (D, H, W) for the Dice forms
    dice_fractions: tuple[float, ...] = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)


def analysis_config(quick: bool) -> AnalysisConfig:
    """The full run (minutes) or ``--quick`` (under a minute, coarser memory sweep, fewer seeds)."""
    if not quick:
        return AnalysisConfig()
    return AnalysisConfig(
        conv_memory=((8, (64, 96, 128, 160, 192)), (128, ())),
        attention_memory=((2, (48, 64, 80, 96, 112)), (64, ())),
        memory_backward_only=True,
        flop_backward=False,
        seeds=3,
        lipschitz_grid=(4, 8, 8),
        power_iterations=25,
    )


# --------------------------------------------------------------------------- complexity


def count_flops(model: nn.Module, depth: int, size: int, backward: bool) -> int:
    """FLOPs of one pass of a meta-device decoder on a ``(1, C_0, D, H/16, H/16)`` input.

    ``flop_counter`` counts matmuls and convolutions (2 FLOPs per multiply-add); norms,
    activations and interpolation are not counted. On the meta device nothing is
    computed, so sizes that would not fit in memory can be counted too. Count the
    attention baseline with its explicit kernel: on CPU tensors ``flop_counter`` does
    not see the fused CPU SDPA kernel at all (it reports 0), while the FLOPs of
    ``softmax(QKᵀ/√d)V`` do not depend on how a kernel tiles them.
    """
    features = torch.empty(1, model.in_channels, depth, size // 16, size // 16, device="meta")
    with FlopCounterMode(display=False) as counter:
        outputs = model(features)
        if backward:
            sum(out.sum() for out in outputs).backward()
    return counter.get_total_flops()


def fit_slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    lx, ly = torch.tensor(x, dtype=torch.float64).log(), torch.tensor(y, dtype=torch.float64).log()
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())


def fit_memory_law(voxels: list[float], mib: list[float], degree: int) -> list[float]:
    """Non-negative ``[a, b, c]`` of ``mib ≈ a + b·V + c·V²`` (``c = 0`` for degree 1), least squares.

    A term whose coefficient comes out negative is dropped and the rest refitted, so
    the law only grows with ``V`` and can be extrapolated.
    """
    v = torch.tensor(voxels, dtype=torch.float64)
    y = torch.tensor(mib, dtype=torch.float64)
    basis = [torch.ones_like(v), v, v * v][: degree + 1]
    keep = list(range(degree + 1))
    while True:
        a = torch.stack([basis[i] for i in keep], dim=1)
        scale = a.abs().max(dim=0).values  # columns differ by ~10^10: scale before solving
        coef = torch.linalg.lstsq(a / scale, y.unsqueeze(1)).solution.squeeze(1) / scale
        if (coef >= 0).all() or len(keep) == 1:
            break
        keep.pop(int(coef.argmin()))
    law = [0.0, 0.0, 0.0]
    for i, c in zip(keep, coef.clamp(min=0).tolist()):
        law[i] = c
    return law


def _solve_law(law: list[float], mib: float) -> float:
    """The ``V`` where ``a + b·V + c·V² = mib``."""
    a, b, c = law
    if c > 0:
        return (-b + math.sqrt(b * b + 4 * c * (mib - a))) / (2 * c)
    return (mib - a) / b if b > 0 else math.inf


def _machine_memory_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/meminfo has no MemTotal")


# Training crops at which the memory laws are evaluated: the default (crop depth 16,
# ViT input 1024 -> decoder output 1024²) and a 256² encoder input.
CROPS = ((16, 256), (16, 1024))


def _flop_grid(config: AnalysisConfig) -> list[dict[str, Any]]:
    """FLOPs of both decoders (counted on the meta device) at every depth × size of the grid."""
    flops = []
    for kind in ("conv", "explicit"):
        with torch.device("meta"):
            model = decoder_of_kind(kind, config.num_classes, config.attention_dim)
        for depth in config.flop_depths:
            for size in config.flop_sizes:
                row = {"decoder": "conv" if kind == "conv" else "attention", "depth": depth, "size": size}
                row["voxels"] = depth * size * size
                row["forward"] = count_flops(model, depth, size, False)
                if config.flop_backward:
                    row["forward_backward"] = count_flops(model, depth, size, True)
                flops.append(row)
    return flops


def _memory_probes(config: AnalysisConfig, modes: tuple[bool, ...]) -> list[dict[str, Any]]:
    """The peak-memory runs to make: each decoder kind at its sweep of sizes and depths, in each mode."""
    probes = []
    for kind in KINDS:
        (depth, sizes), (size, depths) = config.conv_memory if kind == "conv" else config.attention_memory
        points = [(depth, s) for s in sizes]
        points += [(d, size) for d in depths if (d, size) not in points]
        for backward in modes:
            for d, s in points:
                probes.append({"decoder": kind, "depth": d, "size": s, "backward": backward, "dim": config.attention_dim})
    return probes


def measure_complexity(config: AnalysisConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """FLOPs over the depth × size grid and peak memory over the memory sweeps, with slopes."""
    flops = _flop_grid(config)
    slopes: dict[str, float] = {}
    for name in ("conv", "attention"):
        rows = [r for r in flops if r["decoder"] == name]
        for mode in ("forward", "forward_backward")[: 1 + config.flop_backward]:
            slopes[f"flops/{name}/{mode}"] = fit_slope([r["voxels"] for r in rows], [r[mode] for r in rows])
    log("FLOP slopes: " + ", ".join(f"{k} {v:.3f}" for k, v in slopes.items()))

    modes = (True,) if config.memory_backward_only else (False, True)
    probes = _memory_probes(config, modes)
    log(f"peak memory: {len(probes)} configurations, each in its own process")
    memory = measure_peak_memory(probes, on_result=lambda r: log(_probe_line(r)))
    for row in memory:
        row["voxels"] = row["depth"] * row["size"] ** 2
    machine = _machine_memory_mib()
    laws = {}
    for kind in KINDS:
        for backward in modes:
            rows = [r for r in memory if r["decoder"] == kind and r["backward"] == backward and "peak_mib" in r]
            if len(rows) < 3:
                continue
            mode = "forward_backward" if backward else "forward"
            voxels = [r["voxels"] for r in rows]
            slopes[f"memory/{kind}/{mode}"] = fit_slope(voxels, [r["peak_mib"] for r in rows])
            if backward:
                slopes[f"activations/{kind}/{mode}"] = fit_slope(voxels, [r["saved_mib"] for r in rows])
            law = fit_memory_law(voxels, [r["peak_mib"] for r in rows], 2 if kind == "explicit" else 1)
            laws[f"{kind}/{mode}"] = {
                "law_mib": law,
                "voxels_at_machine_memory": _solve_law(law, machine),
                "crops_mib": {f"{d}x{s}x{s}": law[0] + law[1] * d * s * s + law[2] * (d * s * s) ** 2 for d, s in CROPS},
            }
    return {
        "flops": flops,
        "memory": memory,
        "memory_method": MEMORY_METHOD,
        "machine_memory_mib": machine,
        "slopes": slopes,
        "memory_laws": laws,
        "attention_dim": config.attention_dim,
    }


def _probe_line(r: dict[str, Any]) -> str:
    mode = "fwd+bwd" if r["backward"] else "fwd"
    value = f"{r['peak_mib']:8.1f} MiB {r['seconds']:6.2f} s" if "peak_mib" in r else r["error"]
    return f"  {r['decoder']:8s} {mode:7s} D={r['depth']:<3d} H={r['size']:<4d} {value}"


# --------------------------------------------------------------------------- per-level FLOPs


def measure_level_flops(config: AnalysisConfig) -> list[dict[str, Any]]:
    """Conv FLOPs per level (flop_counter) beside the method's ``H_ℓ W_ℓ D k C_ℓ²`` and the closed form.

    Level ℓ = 0..3 is block ℓ: input ``C_ℓ × D × H_ℓ × W_ℓ`` with ``H_ℓ = H / 2^(4-ℓ)``.
    Closed form in multiply-adds (×2 for FLOPs), with ``k = 27`` and ``k0`` W0's kernel::

        H_ℓ W_ℓ D (k C_ℓ C_ℓ+1  +  k C_ℓ+1²  +  k0 C_ℓ C_ℓ+1)  +  4 H_ℓ W_ℓ D C_ℓ+1 K
             W1 (C_ℓ → C_ℓ+1)      W2            W0 shortcut        head ℓ+1 at 2H_ℓ × 2W_ℓ
    """
    depth, size = config.level_flops_size
    rows = []
    for shortcut_kernel in (3, 1):
        with torch.device("meta"):
            model = SAM3DDecoder(config.num_classes, shortcut_kernel=shortcut_kernel)
            g = torch.empty(1, model.in_channels, depth, size // 16, size // 16)
        widths = model.widths
        for level, (block, head) in enumerate(zip(model.blocks, model.heads)):
            with FlopCounterMode(display=False) as counter:
                g = block(g)
                head(g)
            h_l = size // 2 ** (4 - level)
            c, c_next = widths[level], widths[level + 1]
            voxels = h_l * h_l * depth
            seed = voxels * 27 * c * c
            closed = 2 * voxels * (27 * c * c_next + 27 * c_next**2 + shortcut_kernel**3 * c * c_next)
            closed += 2 * 4 * voxels * c_next * config.num_classes
            rows.append(
                {
                    "shortcut_kernel": shortcut_kernel,
                    "level": level,
                    "grid": [depth, h_l, h_l],
                    "channels": [c, c_next],
                    "measured": counter.get_total_flops(),
                    "seed_formula": seed,
                    "closed_form": closed,
                    "ratio": counter.get_total_flops() / seed,
                }
            )
    return rows


# --------------------------------------------------------------------------- gradient forms

FORMS = ("projection", "identity", "serial", "concat")


class BlockForm(nn.Module):
    """One of the four ways method §4 compares to join ``g`` and ``φ(g) = IN(W2 σ(IN(W1 g)))``.

    ``(B, C, D, h, w) -> (B, C, D, h, w)``, without the upsampling (it is the same for all).

    - ``projection``: the decoder's real block, ``σ(φ(g) + IN(W0 * g))``;
    - ``identity``: the method's ``y = g + φ(g)``;
    - ``serial``: ``y = φ(g)``;
    - ``concat``: ``y = W_f [g ; φ(g)]``, a 1×1×1 fusion ``2C -> C``.

    All four take ``W1``, ``W2`` (and ``W0``) from one :class:`ResidualUpBlock`, so for a
    given seed they differ only in how the paths are joined.
    """

    def __init__(self, form: str, channels: int) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.form = form
        self.block = ResidualUpBlock(channels, channels)
        self.fuse = nn.Conv3d(2 * channels, channels, 1, bias=False) if form == "concat" else None

    def forward(self, g: Tensor) -> Tensor:
        phi = self.block.residual(g)
        if self.form == "projection":
            return self.block.act(phi + self.block.shortcut(g))
        if self.form == "identity":
            return g + phi
        if self.form == "serial":
            return phi
        return self.fuse(torch.cat([g, phi], dim=1))

    def num_parameters(self) -> int:
        """Parameters the form uses (the unused shortcut ``W0`` of the other forms not counted)."""
        used = [self.block.conv1, self.block.norm1, self.block.conv2, self.block.norm2]
        if self.form == "projection":
            used += [self.block.conv0, self.block.norm0]
        if self.fuse is not None:
            used.append(self.fuse)
        return sum(p.numel() for m in used for p in m.parameters())


def saved_activation_bytes(fn: Callable[[], Tensor]) -> int:
    """Bytes autograd keeps for the backward pass of ``fn()`` (distinct storages, output included)."""
    with saved_storages() as storages:
        out = fn()
    storages[out.untyped_storage().data_ptr()] = out.untyped_storage().nbytes()
    return sum(storages.values())


def _gradient_ratio(model: nn.Module, g: Tensor, seed: int) -> float:
    """``‖Jᵀ v‖ / ‖v‖`` for a Gaussian cotangent ``v`` at the output: gradient gain input ← output."""
    g = g.clone().requires_grad_(True)
    out = model(g)
    v = torch.randn(out.shape, generator=torch.Generator().manual_seed(10_000 + seed))
    (grad,) = torch.autograd.grad(out, g, v)
    return float(grad.norm() / v.norm())


def measure_gradient_forms(config: AnalysisConfig) -> dict[str, Any]:
    """Parameters, activation memory, gradient gain through 4 blocks and Jacobian spectra per form."""
    c, (d, h, w) = config.gradient_width, config.gradient_grid
    results: dict[str, Any] = {"width": c, "grid": [d, h, w], "seeds": config.seeds, "forms": {}}
    for form in FORMS:
        torch.manual_seed(0)
        single = BlockForm(form, c)
        g = torch.randn(1, c, d, h, w, requires_grad=True)
        row: dict[str, Any] = {
            "parameters": single.num_parameters(),
            "activation_bytes": saved_activation_bytes(lambda: single(g)),
        }
        one, four = [], []
        for seed in range(config.seeds):
            torch.manual_seed(seed)
            stack = nn.Sequential(*(BlockForm(form, c) for _ in range(4)))
            g = torch.randn(1, c, d, h, w)
            one.append(_gradient_ratio(stack[0], g, seed))
            four.append(_gradient_ratio(stack, g, seed))
        row["gain_one_block"], row["gain_four_blocks"] = one, four
        row["jacobian_singular_values"] = _jacobian_spectrum(form, config)
        results["forms"][form] = row
    return results


def _jacobian_spectrum(form: str, config: AnalysisConfig) -> list[list[float]]:
    """Singular values of one block's full Jacobian ``∂y/∂g`` at a small size, one list per seed (≤ 3)."""
    c, (d, h, w) = config.jacobian_width, config.jacobian_grid
    spectra = []
    for seed in range(min(3, config.seeds)):
        torch.manual_seed(seed)
        block = BlockForm(form, c).double()
        g = torch.randn(1, c, d, h, w, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(block, g).reshape(g.numel(), g.numel())
        spectra.append(torch.linalg.svdvals(jac).tolist())
    return spectra


# --------------------------------------------------------------------------- Lipschitz


def conv_spectral_norm(conv: nn.Conv3d, grid: tuple[int, int, int], iterations: int, seed: int = 0) -> float:
    """Largest singular value of ``x ↦ W * x`` on a ``D × h × w`` grid (zero padding), by power iteration.

    Iterates ``x ← Aᵀ A x / ‖Aᵀ A x‖`` with ``A`` the convolution and ``Aᵀ`` its adjoint
    (the transposed convolution with the same weights); ``σ = ‖A x‖`` at the end. The
    estimate approaches the true norm from below (``‖A x‖ ≤ σ_max`` for a unit ``x``).
    """
    weight = conv.weight.detach()
    padding = conv.padding
    x = torch.randn(1, weight.shape[1], *grid, generator=torch.Generator().manual_seed(seed), dtype=weight.dtype)
    x = x / x.norm()
    with torch.no_grad():
        for _ in range(iterations):
            y = F.conv3d(x, weight, padding=padding)
            x = F.conv_transpose3d(y, weight, padding=padding)
            x = x / x.norm()
        return float(F.conv3d(x, weight, padding=padding).norm())


def measure_lipschitz(config: AnalysisConfig, model: SAM3DDecoder | None = None) -> list[dict[str, Any]]:
    """Per conv layer: the method's bound ``‖W‖₁ = Σ|w|`` and the spectral norm; their ratio is the slack."""
    if model is None:
        torch.manual_seed(0)
        model = SAM3DDecoder(config.num_classes)
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv3d):
            continue
        weight = module.weight.detach().double()
        conv = nn.Conv3d(weight.shape[1], weight.shape[0], module.kernel_size, padding=module.padding, bias=False)
        conv = conv.double()
        conv.weight.data.copy_(weight)
        sigma = conv_spectral_norm(conv, config.lipschitz_grid, config.power_iterations)
        row = {"layer": name, "shape": list(weight.shape), "l1_bound": float(weight.abs().sum()), "spectral": sigma}
        if module.kernel_size == (1, 1, 1):  # exact: the largest singular value of the C_out × C_in matrix
            row["exact"] = float(torch.linalg.matrix_norm(weight.flatten(1), ord=2))
        row["slack"] = row["l1_bound"] / sigma
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- deep supervision


def _smooth_labels(shape: tuple[int, int, int, int], num_classes: int, generator: torch.Generator) -> Tensor:
    """Blob-like integer labels ``(B, D, H, W)``: the argmax of smoothed noise."""
    noise = torch.randn(shape[0], num_classes, *shape[1:], generator=generator)
    smooth = F.avg_pool3d(noise, kernel_size=(1, 9, 9), stride=1, padding=(0, 4, 4))
    return smooth.argmax(dim=1)


def measure_deep_supervision(config: AnalysisConfig) -> dict[str, Any]:
    """``∇L_tot`` against ``Σ α_ℓ ∇L(ℓ)``, and the gradient at block 1 with and without auxiliary levels."""
    d, h, w = config.supervision_grid
    k = config.num_classes
    rows = []
    for seed in range(config.seeds):
        torch.manual_seed(seed)
        model = SAM3DDecoder(k).double()
        generator = torch.Generator().manual_seed(seed)
        features = torch.randn(1, model.in_channels, d, h, w, generator=generator, dtype=torch.float64)
        labels = _smooth_labels((1, d, 16 * h, 16 * w), k, generator)
        params = list(model.parameters())
        first = list(model.blocks[0].parameters())
        outputs = model(features)

        def grads(loss: Tensor, wrt: list[Tensor]) -> list[Tensor]:
            got = torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(p) if gr is None else gr for p, gr in zip(wrt, got)]

        total = deep_supervision_loss(outputs, labels)
        level_losses = []
        for level in range(4):  # L(ℓ) alone: the same sum with one-hot weights
            onehot = [1.0 if i == level else 0.0 for i in range(4)]
            level_losses.append(deep_supervision_loss(outputs, labels, onehot))
        g_total = grads(total, params)
        g_levels = [grads(loss, params) for loss in level_losses]
        combined = [sum(a * gl[i] for a, gl in zip(DEEP_SUPERVISION_WEIGHTS, g_levels)) for i in range(len(params))]
        diff = max(float((a - b).abs().max()) for a, b in zip(g_total, combined))
        scale = max(float(a.abs().max()) for a in g_total)

        def norm(gs: list[Tensor]) -> float:
            return float(torch.sqrt(sum((g * g).sum() for g in gs)))

        first_levels = [grads(loss, first) for loss in level_losses]
        final = torch.cat([g.flatten() for g in first_levels[3]])
        auxiliary = sum(a * torch.cat([g.flatten() for g in gl]) for a, gl in zip(DEEP_SUPERVISION_WEIGHTS, first_levels[:3]))
        rows.append(
            {
                "seed": seed,
                "max_abs_diff": diff,
                "max_abs_gradient": scale,
                "first_block_total": norm(grads(total, first)),
                "first_block_final_only": norm(first_levels[3]),
                "first_block_per_level": [a * norm(g) for a, g in zip(DEEP_SUPERVISION_WEIGHTS, first_levels)],
                "cosine_final_auxiliary": float(F.cosine_similarity(final, auxiliary, dim=0)),
            }
        )
    return {"weights": list(DEEP_SUPERVISION_WEIGHTS), "grid": [d, h, w], "dtype": "float64", "seeds": rows}


def _labels_with_fraction(grid: tuple[int, int, int], fractions: list[float], generator: torch.Generator) -> Tensor:
    """``(1, D, H, W)`` labels: class k + 1 on a random ``fractions[k]`` share of the voxels, the rest background."""
    n = grid[0] * grid[1] * grid[2]
    order = torch.randperm(n, generator=generator)
    labels = torch.zeros(n, dtype=torch.long)
    start = 0
    for k, f in enumerate(fractions, 1):
        count = max(1, round(f * n))
        labels[order[start : start + count]] = k
        start += count
    return labels.view(1, *grid)


def _class_gradient_shares(logits: Tensor, labels: Tensor, loss: Callable[[Tensor, Tensor], Tensor]) -> list[float]:
    """Share of ``‖∂loss/∂logits‖²`` on each class's voxels, ``[background, class 1, ...]``."""
    x = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x, labels), x)
    per_voxel = (grad**2).sum(dim=1)  # (1, D, H, W)
    total = float(per_voxel.sum())
    return [float(per_voxel[labels == k].sum()) / total for k in range(logits.shape[1])]


def measure_dice_forms(config: AnalysisConfig) -> dict[str, Any]:
    """Method §5.1's claim "if ‖Y‖₂ = ‖Ŷ‖₂, Dice = cosine" and what it means for small classes.

    ``identity``: for one-hot predictions (``‖Y‖² = ‖Ŷ‖² = N``) the joint Dice equals
    the cosine of Y and Ŷ, and both equal voxel accuracy. ``background``: the
    all-background prediction's joint Dice, per-class Dice (no background) and
    accuracy as the foreground fraction f shrinks. ``gradients``: a background, a
    large class (20 %) and a small class of fraction f, logits of small random
    noise (an untrained network); the share of the Dice term's squared gradient on
    each class's voxels under the joint form (method §5.1) and the per-class form,
    with cross-entropy's for reference.
    """
    generator = torch.Generator().manual_seed(0)
    grid, n = config.dice_grid, math.prod(config.dice_grid)
    identity, background = [], []
    for f in config.dice_fractions:
        labels = _labels_with_fraction(grid, [f], generator)
        y = one_hot(labels, 2).double()
        for name, pred in (("all background", torch.zeros_like(labels)), ("random", torch.randint(0, 2, labels.shape, generator=generator))):
            p = one_hot(pred, 2).double()
            dice = 2 * float((y * p).sum()) / float((y * y).sum() + (p * p).sum())
            cosine = float(F.cosine_similarity(y.flatten(), p.flatten(), dim=0))
            identity.append({"fraction": f, "prediction": name, "dice": dice, "cosine": cosine,
                             "accuracy": float((pred == labels).double().mean())})  # fmt: skip
        logits = 20.0 * (one_hot(torch.zeros_like(labels), 2).double() - 0.5)  # a confident all-background prediction
        background.append({
            "fraction": f, "voxels": round(f * n),
            "joint_dice": 1 - float(dice_loss(logits, y)),
            "per_class_dice": 1 - float(per_class_dice_loss(logits, y)),
            "accuracy": 1 - f,
        })  # fmt: skip
    gradients = []
    for f in config.dice_fractions:
        if f > 0.05:
            continue
        labels = _labels_with_fraction(grid, [0.2, f], generator)
        y = one_hot(labels, 3).double()
        logits = 0.01 * torch.randn(1, 3, *grid, generator=generator, dtype=torch.float64)
        forms = {
            "joint": lambda x, t: dice_loss(x, t),
            "per_class": lambda x, t: per_class_dice_loss(x, t),
            "cross_entropy": lambda x, t: F.cross_entropy(x, t.argmax(1)),
        }
        row = {"fraction": f, "voxels": round(f * n)}
        for name, loss in forms.items():
            row[name] = _class_gradient_shares(logits, labels, lambda x, _, loss=loss: loss(x, y))
        gradients.append(row)
    return {"grid": list(grid), "identity": identity, "background": background, "gradients": gradients}


# --------------------------------------------------------------------------- the whole run


def run_analysis(out: Path, quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every measurement and write ``out/results.json``, ``out/*.png`` and ``out/report.md``."""
    from .report import write_report

    config = analysis_config(quick)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {"quick": quick, "config": to_dict(config), "torch": torch.__version__}
    steps = [
        ("complexity", lambda: measure_complexity(config, log)),
        ("level_flops", lambda: measure_level_flops(config)),
        ("gradient_forms", lambda: measure_gradient_forms(config)),
        ("lipschitz", lambda: measure_lipschitz(config)),
        ("deep_supervision", lambda: measure_deep_supervision(config)),
        ("dice_forms", lambda: measure_dice_forms(config)),
    ]
    for i, (name, step) in enumerate(steps, 1):
        t0 = time.perf_counter()
        log(f"[{i}/{len(steps)}] {name} ...")
        with torch.random.fork_rng(devices=[]):  # each measurement seeds itself; the caller's generator is left alone
            results[name] = step()
        log(f"[{i}/{len(steps)}] {name} done in {time.perf_counter() - t0:.1f} s")
    results["seconds"] = time.perf_counter() - started
    write_json(out / "results.json", results)
    write_report(results, out)
    return results
