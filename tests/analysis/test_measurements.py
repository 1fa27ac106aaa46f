"""``sam3dseg analyze``: the measurements' building blocks, and the quick run end to end."""

import json
import math

import pytest
import torch

from sam3dseg.analysis.measurements import (
    AnalysisConfig,
    BlockForm,
    conv_spectral_norm,
    fit_memory_law,
    fit_slope,
    measure_deep_supervision,
    measure_dice_forms,
    measure_level_flops,
    saved_activation_bytes,
)
from sam3dseg.cli import main


def test_fit_slope_and_memory_law_recover_known_laws():
    x = [10.0, 30.0, 100.0, 300.0, 1000.0]
    assert fit_slope(x, [3 * v**2 for v in x]) == pytest.approx(2.0)
    assert fit_slope(x, [7 * v for v in x]) == pytest.approx(1.0)
    law = fit_memory_law(x, [5 + 0.5 * v + 0.01 * v * v for v in x], degree=2)
    assert law == pytest.approx([5, 0.5, 0.01], rel=1e-6)
    # a term that would come out negative is dropped, so the law only grows
    law = fit_memory_law(x, [100 - 0.001 * v + 1e-5 * v * v for v in x], degree=2)
    assert all(c >= 0 for c in law)


def test_level_flops_match_the_closed_form_and_the_seed_constant():
    rows = measure_level_flops(AnalysisConfig(level_flops_size=(4, 64)))
    assert all(r["measured"] == r["closed_form"] for r in rows)
    seed = [r["ratio"] for r in rows if r["shortcut_kernel"] == 3]
    orig = [r["ratio"] for r in rows if r["shortcut_kernel"] == 1]
    # 2 FLOPs per MAC × (½ + ¼ + ½) = 2.5; with a 1×1×1 W0 2 × (¾ + 1/54); heads add 4K/(27 C_ℓ)
    for r, c in zip(seed, (256, 128, 64, 32)):
        assert r == pytest.approx(2.5 + 2 * 4 * 3 * (c // 2) / (27 * c * c))
    assert orig[0] == pytest.approx(2 * (0.75 + 1 / 54) + 2 * 4 * 3 * 128 / (27 * 256 * 256))


def test_block_forms_parameters_and_jacobians():
    c = 3
    params = {form: BlockForm(form, c).num_parameters() for form in ("projection", "identity", "serial", "concat")}
    phi = 2 * 27 * c * c + 2 * 2 * c  # W1, W2 and two affine norms
    assert params == {"identity": phi, "serial": phi, "projection": phi + 27 * c * c + 2 * c, "concat": phi + 2 * c * c}
    # identity and serial share φ for a seed: their Jacobians differ by exactly I
    g = torch.randn(1, c, 2, 3, 3, dtype=torch.float64)
    jac = {}
    for form in ("identity", "serial"):
        torch.manual_seed(0)
        block = BlockForm(form, c).double()
        jac[form] = torch.autograd.functional.jacobian(block, g).reshape(g.numel(), g.numel())
    torch.testing.assert_close(jac["identity"] - jac["serial"], torch.eye(g.numel(), dtype=torch.float64))


def test_saved_activation_bytes_counts_each_storage_once():
    x = torch.randn(1000, requires_grad=True)
    # exp saves its output (4000 B, which is also the returned tensor); mul by x saves x and exp(x)
    assert saved_activation_bytes(lambda: x.exp()) == 4000
    assert saved_activation_bytes(lambda: (x.exp() * x)) == 3 * 4000


def test_power_iteration_finds_the_operator_norm():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, 3, padding=1, bias=False).double()
    grid = (2, 3, 3)
    dense = torch.autograd.functional.jacobian(
        lambda x: conv(x), torch.zeros(1, 2, *grid, dtype=torch.float64)
    ).reshape(3 * 18, 2 * 18)
    exact = float(torch.linalg.matrix_norm(dense, ord=2))
    estimate = conv_spectral_norm(conv, grid, iterations=200)
    # power iteration approaches from below; close singular values slow it down
    assert exact * (1 - 1e-3) <= estimate <= exact * (1 + 1e-12)
    assert float(conv.weight.detach().abs().sum()) >= exact  # the seed's ‖W‖₁ bound


def test_deep_supervision_gradient_is_the_weighted_sum():
    result = measure_deep_supervision(AnalysisConfig(seeds=1, supervision_grid=(2, 2, 2)))
    (row,) = result["seeds"]
    assert row["max_abs_diff"] <= 1e-12 * row["max_abs_gradient"]
    assert sum(row["first_block_per_level"]) >= row["first_block_total"] - 1e-12  # triangle inequality


def test_joint_dice_is_the_cosine_and_scores_all_background_as_accuracy():
    """Method §5.1: one-hot Y and Ŷ have equal norms, so Dice = cosine = voxel accuracy; the per-class form
    scores all background 0, and sends a small class a larger share of its gradient than the joint form."""
    result = measure_dice_forms(AnalysisConfig(dice_grid=(4, 32, 32), dice_fractions=(0.1, 0.01, 0.002)))
    for row in result["identity"]:
        assert row["dice"] == pytest.approx(row["cosine"], abs=1e-12) == pytest.approx(row["accuracy"], abs=1e-12)
    for row in result["background"]:
        assert row["joint_dice"] == pytest.approx(1 - row["voxels"] / 4096, abs=1e-6)
        assert row["per_class_dice"] < 1e-5
    assert [g["fraction"] for g in result["gradients"]] == [0.01, 0.002]
    for g in result["gradients"]:
        assert g["joint"][-1] == pytest.approx(g["voxels"] / 4096, rel=0.2)  # the voxel share, like CE
        assert g["per_class"][-1] > 5 * g["joint"][-1]


@pytest.mark.slow
def test_analyze_quick_writes_report_with_expected_slopes(tmp_path):
    out = tmp_path / "analysis"
    assert main(["analyze", "--out", str(out), "--quick", "--quiet"]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    results = json.loads((out / "results.json").read_text())
    assert "## Verdicts" in report and "| §2.2 conv decoder FLOPs are O(HWD)" in report
    assert "| §5.1 ‖Y‖₂ = ‖Ŷ‖₂ ⇒ Dice = cosine" in report
    for png in ("complexity_flops", "complexity_memory", "level_flops", "gradients", "lipschitz", "deep_supervision", "dice_forms"):
        assert (out / f"{png}.png").stat().st_size > 1000
        assert f"({png}.png)" in report
    slopes = results["complexity"]["slopes"]
    assert 0.9 <= slopes["flops/conv/forward"] <= 1.1
    assert 1.8 <= slopes["flops/attention/forward"] <= 2.2
    assert 0.9 <= slopes["activations/conv/forward_backward"] <= 1.1
    assert 1.8 <= slopes["activations/explicit/forward_backward"] <= 2.2
    assert 0.9 <= slopes["activations/sdpa/forward_backward"] <= 1.1
    law = results["complexity"]["memory_laws"]["explicit/forward_backward"]
    assert law["law_mib"][2] > 0 and math.isfinite(law["voxels_at_machine_memory"])


