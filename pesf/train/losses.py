"""Partial-label segmentation loss: soft Dice + binary cross-entropy over the voxels whose label is known.

PESF trains on a mix of human labels and filtered pseudo-labels. An organ whose pseudo-label was rejected by
the confidence module, or that nobody annotated, is *unknown*, not background: the voxels where it may lie
must neither reward nor punish the prediction. Each sample therefore carries a ``known`` mask, and both terms
of the loss are computed over those voxels only, so the gradient with respect to the logits is exactly zero
on every unknown voxel.

The terms follow SAM-Med3D's training loss (MONAI ``DiceCELoss(sigmoid=True, squared_pred=True)``): a soft
Dice on ``sigmoid(logits)`` with squared predictions in the denominator, computed per sample and averaged over
the batch, plus a binary cross-entropy on the logits averaged over voxels. When every voxel is known the value
equals that of ``DiceCELoss``.
"""

from __future__ import annotations

import torch.nn.functional as F
from monai.losses import MaskedDiceLoss
from torch import Tensor, nn

__all__ = ["partial_dice_ce_loss", "PartialDiceCELoss", "masked_bce_with_logits"]

_DICE = MaskedDiceLoss(sigmoid=True, squared_pred=True, reduction="mean")


def _check_shapes(logits: Tensor, target: Tensor, known: Tensor) -> None:
    if logits.dim() != 5 or logits.shape[1] != 1:
        raise ValueError(f"logits must have shape (B, 1, X, Y, Z), got {tuple(logits.shape)}")
    if target.shape != logits.shape or known.shape != logits.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, target {tuple(target.shape)} and known {tuple(known.shape)} "
            "must have the same shape"
        )


def masked_bce_with_logits(logits: Tensor, target: Tensor, known: Tensor) -> Tensor:
    """Binary cross-entropy on logits, averaged over the known voxels of the whole batch.

    Args:
        logits: ``(B, 1, X, Y, Z)``.
        target: ``(B, 1, X, Y, Z)`` in ``{0, 1}``.
        known: ``(B, 1, X, Y, Z)`` bool (or ``{0, 1}`` float).

    Returns:
        A scalar; ``0`` (still attached to ``logits``) when no voxel is known.
    """
    weight = known.to(logits.dtype)
    per_voxel = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    return (per_voxel * weight).sum() / weight.sum().clamp_min(1.0)


def partial_dice_ce_loss(
    logits: Tensor,
    target: Tensor,
    known: Tensor,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
) -> Tensor:
    """Soft Dice (on ``sigmoid(logits)``) + binary cross-entropy, both over the ``known`` voxels only.

    Args:
        logits: mask logits ``(B, 1, X, Y, Z)``.
        target: ``(B, 1, X, Y, Z)`` float in ``{0, 1}``: 1 on the sample's organ.
        known: ``(B, 1, X, Y, Z)`` bool: True where the label of the voxel is trusted (inside the image, not
            where a rejected or unannotated organ may lie, or positive for the sample's own organ).
        dice_weight: weight of the Dice term.
        ce_weight: weight of the cross-entropy term.

    Returns:
        A scalar tensor. A sample without any known voxel contributes 0 to the Dice mean; a batch without any
        known voxel gives 0 (never NaN) and a zero gradient.
    """
    _check_shapes(logits, target, known)
    target = target.to(logits.dtype)
    loss = logits.new_zeros(())
    if dice_weight:
        # MaskedDiceLoss applies the sigmoid first, then multiplies prediction and target by the mask, so the
        # unknown voxels drop out of numerator and denominator (and their gradient is exactly zero).
        loss = loss + dice_weight * _DICE(logits, target, mask=known.to(logits.dtype))
    if ce_weight:
        loss = loss + ce_weight * masked_bce_with_logits(logits, target, known)
    return loss


class PartialDiceCELoss(nn.Module):
    """:func:`partial_dice_ce_loss` as a module (weights fixed at construction)."""

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0) -> None:
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)

    def forward(self, logits: Tensor, target: Tensor, known: Tensor) -> Tensor:
        return partial_dice_ce_loss(logits, target, known, self.dice_weight, self.ce_weight)
