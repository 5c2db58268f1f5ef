"""Tests for pesf.train.losses: the partial-label Dice + cross-entropy loss."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from pesf.train.losses import PartialDiceCELoss, masked_bce_with_logits, partial_dice_ce_loss

SHAPE = (2, 1, 8, 9, 10)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 2.0
    target = (torch.rand(SHAPE, generator=g) > 0.6).to(torch.float64)
    known = torch.rand(SHAPE, generator=g) > 0.4
    return logits, target, known


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.7, 2.0)])
def test_gradient_is_zero_exactly_on_unknown_voxels(weights) -> None:
    logits, target, known = _batch()
    logits.requires_grad_(True)
    loss = partial_dice_ce_loss(logits, target, known, dice_weight=weights[0], ce_weight=weights[1])
    loss.backward()
    grad = logits.grad
    assert torch.all(grad[~known] == 0.0)
    assert torch.count_nonzero(grad[known]) == int(known.sum())


def test_unknown_voxels_do_not_change_the_value() -> None:
    logits, target, known = _batch(1)
    base = partial_dice_ce_loss(logits, target, known)
    scrambled_logits = torch.where(known, logits, torch.randn_like(logits) * 10)
    scrambled_target = torch.where(known, target, 1.0 - target)
    assert torch.allclose(partial_dice_ce_loss(scrambled_logits, scrambled_target, known), base)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.5, 2.0)])
def test_equals_monai_dice_ce_when_everything_is_known(weights) -> None:
    logits, target, _ = _batch(2)
    known = torch.ones(SHAPE, dtype=torch.bool)
    ours = partial_dice_ce_loss(logits, target, known, dice_weight=weights[0], ce_weight=weights[1])
    ref = DiceCELoss(sigmoid=True, squared_pred=True, lambda_dice=weights[0], lambda_ce=weights[1])
    assert torch.allclose(ours, ref(logits, target), rtol=1e-10, atol=1e-10)
    module = PartialDiceCELoss(*weights)
    assert torch.allclose(module(logits, target, known), ours)


def test_bce_is_mean_over_known_voxels() -> None:
    logits, target, known = _batch(3)
    per_voxel = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert torch.allclose(masked_bce_with_logits(logits, target, known), per_voxel[known].mean())


def test_nothing_known_gives_zero_without_nan() -> None:
    logits, target, _ = _batch(4)
    logits.requires_grad_(True)
    known = torch.zeros(SHAPE, dtype=torch.bool)
    loss = partial_dice_ce_loss(logits, target, known)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) == 0.0
    assert torch.all(logits.grad == 0.0)


def test_empty_target_is_finite_and_prefers_negative_predictions() -> None:
    known = torch.ones(SHAPE, dtype=torch.bool)
    target = torch.zeros(SHAPE)
    low = partial_dice_ce_loss(torch.full(SHAPE, -8.0), target, known)
    high = partial_dice_ce_loss(torch.full(SHAPE, 8.0), target, known)
    assert torch.isfinite(low) and torch.isfinite(high)
    # the soft Dice of an empty target is close to 1 for any prediction (MONAI smoothing); CE tells them apart
    assert float(low) < float(high)


def test_shape_mismatch_is_rejected() -> None:
    logits, target, known = _batch()
    with pytest.raises(ValueError, match="same shape"):
        partial_dice_ce_loss(logits, target[:, :, :-1], known)
    with pytest.raises(ValueError, match="B, 1"):
        partial_dice_ce_loss(logits[:, 0], target[:, 0], known[:, 0])
