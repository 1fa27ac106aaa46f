"""CE + Dice per level and the deep-supervision sum: golden values and gradients."""

import math

import pytest
import torch

from sam3dseg.model.decoder import SAM3DDecoder
from sam3dseg.model.losses import (
    DEEP_SUPERVISION_WEIGHTS,
    DeepSupervisionLoss,
    cross_entropy,
    deep_supervision_loss,
    dice_loss,
    level_loss,
    level_target,
    one_hot,
    per_class_dice_loss,
)


def _two_voxels():
    """K = 2, two voxels. Logits (ln 3, 0) -> Ŷ = (3/4, 1/4); (0, 0) -> (1/2, 1/2).
    Labels: voxel 1 is class 0, voxel 2 is class 1."""
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]]).t().reshape(1, 2, 1, 1, 2)
    labels = torch.tensor([0, 1]).reshape(1, 1, 1, 2)
    return logits, one_hot(labels, 2)


def test_cross_entropy_golden():
    logits, target = _two_voxels()
    # -(ln 3/4 + ln 1/2) / 2 voxels
    assert cross_entropy(logits, target).item() == pytest.approx(-(math.log(0.75) + math.log(0.5)) / 2, abs=1e-7)


def test_dice_golden():
    logits, target = _two_voxels()
    # Σ YŶ = 3/4 + 1/2 = 5/4; Σ Y² = 2; Σ Ŷ² = 9/16 + 1/16 + 1/4 + 1/4 = 9/8
    # L_Dice = 1 - 2·(5/4) / (2 + 9/8) = 1 - (5/2)/(25/8) = 1 - 4/5 = 1/5
    assert dice_loss(logits, target).item() == pytest.approx(0.2, abs=1e-7)
    assert level_loss(logits, target, dice_loss).item() == pytest.approx(0.2 - (math.log(0.75) + math.log(0.5)) / 2, abs=1e-7)


def test_dice_with_soft_target_golden():
    # One voxel, target (1/4, 3/4), prediction (1/2, 1/2):
    # 1 - 2·(1/8 + 3/8) / ((1/16 + 9/16) + (1/4 + 1/4)) = 1 - 1/(9/8) = 1/9
    logits = torch.zeros(1, 2, 1, 1, 1)
    target = torch.tensor([0.25, 0.75]).reshape(1, 2, 1, 1, 1)
    assert dice_loss(logits, target).item() == pytest.approx(1 / 9, abs=1e-7)
    # CE = -(1/4 ln 1/2 + 3/4 ln 1/2) = ln 2
    assert cross_entropy(logits, target).item() == pytest.approx(math.log(2), abs=1e-7)


def test_perfect_prediction_has_zero_dice_loss():
    target = one_hot(torch.tensor([[[[0, 1], [2, 1]]]]), 3)
    logits = target * 200.0  # softmax saturates to the one-hot
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert cross_entropy(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_level_targets_are_average_pooled_in_plane():
    labels = torch.tensor([[0, 1, 0, 0], [1, 1, 0, 2]]).reshape(1, 1, 2, 4)  # (B, D, H, W)
    target = level_target(one_hot(labels, 3), 2)
    assert target.shape == (1, 3, 1, 1, 2)
    # left 2×2 patch: one 0, three 1; right patch: three 0, one 2
    assert torch.equal(target[0, :, 0, 0, 0], torch.tensor([0.25, 0.75, 0.0]))
    assert torch.equal(target[0, :, 0, 0, 1], torch.tensor([0.75, 0.0, 0.25]))
    nearest = level_target(one_hot(labels, 3), 2, mode="nearest")
    assert torch.equal(nearest[0, :, 0, 0], torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))


def test_weights_are_1_2_4_8_over_15_and_sum_to_1():
    assert DEEP_SUPERVISION_WEIGHTS == (1 / 15, 2 / 15, 4 / 15, 8 / 15)
    assert sum(DEEP_SUPERVISION_WEIGHTS) == pytest.approx(1.0, abs=1e-12)


def test_deep_supervision_golden():
    """Level ℓ has logits (ln ℓ, 0) everywhere, so Ŷ0 = ℓ/(ℓ+1); all labels are class 0.
    CE_ℓ = ln((ℓ+1)/ℓ); Dice_ℓ = 1 - 2p/(1 + p² + (1-p)²) = 1/3, 1/7, 1/13, 1/21."""
    labels = torch.zeros(1, 2, 16, 16, dtype=torch.long)
    logits = []
    for lvl in (1, 2, 3, 4):
        size = 16 // 2 ** (4 - lvl)
        x = torch.zeros(1, 2, 2, size, size)
        x[:, 0] = math.log(lvl)
        logits.append(x)
    ce = [math.log(2), math.log(3 / 2), math.log(4 / 3), math.log(5 / 4)]
    dice = [1 / 3, 1 / 7, 1 / 13, 1 / 21]
    expected = sum(a * (c + d) for a, c, d in zip((1 / 15, 2 / 15, 4 / 15, 8 / 15), ce, dice))
    assert deep_supervision_loss(logits, labels, dice=dice_loss).item() == pytest.approx(expected, abs=1e-6)
    assert DeepSupervisionLoss(dice=dice_loss)(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_total_gradient_is_weighted_sum_of_level_gradients():
    dec = SAM3DDecoder(num_classes=3, in_channels=8, channels=(8, 8, 4, 4))
    feats = torch.randn(2, 8, 3, 2, 2)
    labels = torch.randint(0, 3, (2, 3, 32, 32))
    params = [p for p in dec.parameters()]

    outs = dec(feats)
    total_grads = torch.autograd.grad(deep_supervision_loss(outs, labels), params)

    target = one_hot(labels, 3)
    summed = [torch.zeros_like(p) for p in params]
    for lvl, alpha in enumerate(DEEP_SUPERVISION_WEIGHTS):
        outs = dec(feats)
        factor = 2 ** (3 - lvl)
        loss = level_loss(outs[lvl], level_target(target, factor))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, g in zip(summed, grads):
            if g is not None:
                acc += alpha * g
    for a, b in zip(total_grads, summed):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    # The coarse levels really do send gradient to the first block (not vacuous).
    assert any(g.abs().sum() > 0 for g in total_grads)


def test_loss_is_per_sample_then_batch_mean():
    logits = [torch.randn(2, 3, 2, 2 * 2**lvl, 2 * 2**lvl) for lvl in (1, 2, 3, 4)]
    labels = torch.randint(0, 3, (2, 2, 32, 32))
    both = deep_supervision_loss(logits, labels)
    one = deep_supervision_loss([x[:1] for x in logits], labels[:1])
    two = deep_supervision_loss([x[1:] for x in logits], labels[1:])
    assert both.item() == pytest.approx((one.item() + two.item()) / 2, rel=1e-6)


def test_bad_labels_are_refused():
    logits = [torch.randn(1, 2, 1, 2 * 2**lvl, 2 * 2**lvl) for lvl in (1, 2, 3, 4)]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), found values in \[0, 5\]"):
        bad = torch.zeros(1, 1, 32, 32, dtype=torch.long)
        bad[0, 0, 3, 4] = 5
        deep_supervision_loss(logits, bad)
    with pytest.raises(ValueError, match="do not match the finest output grid"):
        deep_supervision_loss(logits, torch.zeros(1, 1, 16, 16, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        deep_supervision_loss(logits, torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="4 outputs but 3 weights"):
        deep_supervision_loss(logits, torch.zeros(1, 1, 32, 32, dtype=torch.long), weights=(0.2, 0.3, 0.5))


# --- the per-class soft Dice (loss.dice=per_class), nnU-Net's form --------------------------


def test_per_class_dice_golden():
    logits, target = _two_voxels()
    # class 1 only: Σ YŶ = 1/2, Σ Ŷ = 3/4, Σ Y = 1 -> 1 - 1/(7/4) = 3/7
    assert per_class_dice_loss(logits, target, smooth=0).item() == pytest.approx(3 / 7, abs=1e-7)
    # with the background: class 0 scores 2·(3/4) / (1 + 5/4) = 2/3, mean (2/3 + 4/7)/2 = 13/21
    assert per_class_dice_loss(logits, target, include_background=True, smooth=0).item() == pytest.approx(8 / 21, abs=1e-7)


def test_per_class_dice_batch_golden():
    """Sample A as above; sample B has both voxels in class 1: Σ YŶ = 3/4, Σ Ŷ = 3/4, Σ Y = 2."""
    logits, target_a = _two_voxels()
    target_b = one_hot(torch.tensor([1, 1]).reshape(1, 1, 1, 2), 2)
    logits, target = torch.cat([logits, logits]), torch.cat([target_a, target_b])
    per_sample = 1 - (4 / 7 + 6 / 11) / 2  # mean of 1/(7/4) and (3/2)/(11/4)
    assert per_class_dice_loss(logits, target, smooth=0).item() == pytest.approx(per_sample, abs=1e-7)
    batch = 1 - (2 * 5 / 4) / (3 + 3 / 2)  # sums over the batch first
    assert per_class_dice_loss(logits, target, batch_dice=True, smooth=0).item() == pytest.approx(batch, abs=1e-7)


def test_per_class_dice_smooth_scores_an_absent_class():
    logits = torch.zeros(1, 2, 1, 1, 2)  # Ŷ1 = 1/2 at both voxels; class 1 absent from Y
    target = one_hot(torch.zeros(1, 1, 1, 2, dtype=torch.long), 2)
    assert per_class_dice_loss(logits, target, smooth=1.0).item() == pytest.approx(1 - 1 / 2, abs=1e-7)  # (0+1)/(0+1+1)


@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("batch", [False, True])
def test_per_class_dice_equals_monai(include_background, batch):
    monai_losses = pytest.importorskip("monai.losses")
    torch.manual_seed(3)
    logits = torch.randn(3, 4, 2, 5, 6, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 2, 5, 6))
    labels[1][labels[1] == 2] = 0  # a class missing from one sample
    target = one_hot(labels, 4).double()
    ours = per_class_dice_loss(logits, target, include_background, batch, smooth=1e-5)
    reference = monai_losses.DiceLoss(
        include_background=include_background, softmax=True, batch=batch, smooth_nr=1e-5, smooth_dr=1e-5
    )(logits, target)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)


def test_joint_is_the_method_and_unchanged():
    """`loss.dice=joint` runs the method's formula: the same numbers bit for bit; the default is per_class,
    for training (LossConfig) and for the public loss functions alike."""
    from sam3dseg.model.losses import LossConfig, build_loss

    logits = [torch.randn(2, 3, 2, 2 * 2**lvl, 2 * 2**lvl) for lvl in (1, 2, 3, 4)]
    labels = torch.randint(0, 3, (2, 2, 32, 32))
    written = sum(a * (cross_entropy(x, t) + dice_loss(x, t)) for a, x, t in zip(
        DEEP_SUPERVISION_WEIGHTS, logits, [level_target(one_hot(labels, 3), 2 ** (3 - i)) for i in range(4)]))  # fmt: skip
    joint = deep_supervision_loss(logits, labels, dice=dice_loss)
    assert torch.equal(build_loss(LossConfig(dice="joint"))(logits, labels), joint)
    assert torch.equal(joint, written)
    per_class = build_loss(LossConfig())(logits, labels)
    assert torch.equal(per_class, build_loss(LossConfig(dice="per_class"))(logits, labels))
    assert torch.equal(per_class, deep_supervision_loss(logits, labels)) and torch.equal(per_class, DeepSupervisionLoss()(logits, labels))
    assert not torch.equal(per_class, joint)


@pytest.mark.parametrize("form", ["joint", "per_class"])
def test_total_gradient_is_the_weighted_sum_for_both_dice_forms(form):
    from sam3dseg.model.losses import LossConfig, build_loss

    loss = build_loss(LossConfig(dice=form))
    dec = SAM3DDecoder(num_classes=3, in_channels=8, channels=(8, 8, 4, 4))
    feats, labels = torch.randn(2, 8, 3, 2, 2), torch.randint(0, 3, (2, 3, 32, 32))
    params = list(dec.parameters())
    total = torch.autograd.grad(loss(dec(feats), labels), params)
    target, summed = one_hot(labels, 3), [torch.zeros_like(p) for p in params]
    for lvl, alpha in enumerate(DEEP_SUPERVISION_WEIGHTS):
        level = level_loss(dec(feats)[lvl], level_target(target, 2 ** (3 - lvl)), loss.dice)
        for acc, g in zip(summed, torch.autograd.grad(level, params, allow_unused=True)):
            if g is not None:
                acc += alpha * g
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(total, summed))


@pytest.mark.parametrize("dice", ["joint", "per_class"])
def test_the_ignore_label_is_left_out_of_the_loss(dice):
    """nnU-Net's ignore label (value K, one past the classes): whatever the prediction there, the loss is the
    same; its gradient there is zero at the finest level, and at coarser levels wherever a whole patch is
    ignored; without ignored voxels the loss equals the plain one; and the CE is averaged over the voxels that count."""
    from functools import partial

    dice_fn = dice_loss if dice == "joint" else partial(per_class_dice_loss)
    torch.manual_seed(3)
    k, shape = 3, (2, 4, 16, 16)
    labels = torch.randint(0, k, shape)
    ignored = torch.zeros(shape, dtype=torch.bool)
    ignored[:, :, :8, :8] = True  # whole 8 × 8 patches: ignored at every level
    ignored[0, 1, 10, 3] = True
    with_ignore = torch.where(ignored, k, labels)
    logits = [torch.randn(2, k, 4, 16 // f, 16 // f, requires_grad=True) for f in (8, 4, 2, 1)]
    loss = deep_supervision_loss(logits, with_ignore, dice=dice_fn, ignore=True)
    loss.backward()
    changed = [x.detach().clone() for x in logits]
    finest = changed[-1].movedim(1, -1)  # a view: (B, D, H, W, K)
    finest[ignored] += 5.0 * torch.randn_like(finest[ignored])
    changed[0][..., 0, 0] -= 3.0  # the coarsest voxel of the ignored corner
    assert deep_supervision_loss(changed, with_ignore, dice=dice_fn, ignore=True).item() == pytest.approx(loss.item(), rel=1e-6)
    assert logits[-1].grad.movedim(1, -1)[ignored].abs().max() == 0
    assert logits[0].grad[..., 0, 0].abs().max() == 0 and logits[0].grad.abs().max() > 0
    plain = [x.detach() for x in logits]
    assert deep_supervision_loss(plain, labels, dice=dice_fn, ignore=True).item() == pytest.approx(
        deep_supervision_loss(plain, labels, dice=dice_fn).item(), rel=1e-6)
    target = one_hot(torch.where(ignored, 0, labels), k) * (~ignored)[:, None]
    ce = -(target * torch.log_softmax(plain[-1], 1)).sum(1).flatten(1).sum(1) / (~ignored).flatten(1).sum(1)
    assert cross_entropy(plain[-1], target, (~ignored)[:, None].float()).item() == pytest.approx(ce.mean().item(), rel=1e-6)


def test_gradient_identity_holds_for_the_stride_four_decoder():
    """∇L_tot = Σ α_ℓ ∇L(ℓ) with levels 1 and 2 on the same grid (decision D12)."""
    dec = SAM3DDecoder(num_classes=3, in_channels=8, channels=(8, 8, 4, 4), stride=4)
    feats = torch.randn(2, 8, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 3, 16, 16))
    params = list(dec.parameters())
    total = torch.autograd.grad(deep_supervision_loss(dec(feats), labels), params)
    target = one_hot(labels, 3)
    summed = [torch.zeros_like(p) for p in params]
    for lvl, (alpha, factor) in enumerate(zip(DEEP_SUPERVISION_WEIGHTS, (4, 4, 2, 1))):
        loss = level_loss(dec(feats)[lvl], level_target(target, factor))
        for acc, g in zip(summed, torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:
                acc += alpha * g
    for a, b in zip(total, summed):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    assert all(g.abs().sum() > 0 for g in total[:3])  # the first block's weights get gradient
