"""Training the PESF confidence module, calibrating its threshold and filtering pseudo-labels with it.

The module (:class:`~pesf.models.confidence.ConfidenceModule`, in :mod:`pesf.models.confidence`) predicts the
Dice of a mask. It is fitted with MSE on Dice plus a pairwise ranking loss on examples made by the SAM model
itself (:mod:`pesf.train.confidence_examples`); on held-out pairs its MAE, Spearman correlation and a
calibration table are measured, and the default filtering threshold is calibrated there
(:func:`calibrate_threshold`). Another share of pairs, held back from the network too, fits its Dice map
(:func:`fit_dice_map`): the network reads lower on organs and regions it was not fitted on, and the map
turns its score into the Dice it stands for there. :func:`filter_pseudo_labels` then splits pseudo-labels by
their confidence.

The network and example names are re-exported here, so ``from pesf.train.confidence import ...`` finds them.

Typical use::

    module, metrics = train_confidence_module(model, pairs, epochs=30, lr=1e-3, seed=0)
    attach_confidence_module(model, module, {"threshold": metrics["threshold"], "metrics": metrics})
    save_checkpoint(model, "model.pt")  # load_model rebuilds and attaches the module
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn

from pesf.models.confidence import (
    ConfidenceConfig,
    ConfidenceModule,
    MaskFeatures,
    attach_confidence_module,
    confidence_module_from_state,
    mask_features,
    mask_statistics,
)
from pesf.train.confidence_examples import (
    ConfidenceExamples,
    PerturbSettings,
    ProgressCallback,
    make_confidence_examples,
)

__all__ = [
    "ConfidenceConfig",
    "ConfidenceExamples",
    "ConfidenceModule",
    "MaskFeatures",
    "PerturbSettings",
    "attach_confidence_module",
    "calibrate_threshold",
    "calibration_table",
    "confidence_module_from_state",
    "evaluate_confidence",
    "filter_pseudo_labels",
    "fit_confidence_module",
    "fit_dice_map",
    "make_confidence_examples",
    "mask_features",
    "mask_statistics",
    "train_confidence_module",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- fitting and measuring


def _rank_loss(pred: Tensor, dice: Tensor, margin: float = 0.02, min_gap: float = 0.05) -> Tensor:
    """Pairwise hinge: a mask with a clearly higher Dice must get a higher prediction."""
    gap = dice[:, None] - dice[None, :]
    order = (gap > min_gap).float()
    if not bool(order.any()):
        return pred.sum() * 0
    hinge = F.relu(margin - (pred[:, None] - pred[None, :]))
    return (hinge * order).sum() / order.sum()


@torch.no_grad()
def _predict(
    module: ConfidenceModule, examples: ConfidenceExamples, batch_size: int = 64, raw: bool = False
) -> Tensor:
    module.eval()
    device = module.embed_proj[0].weight.device
    features = examples.mask_features()
    out = []
    for start in range(0, len(examples), batch_size):
        rows = slice(start, start + batch_size)
        emb = examples.embeddings[examples.index[rows]].to(device)
        out.append(module.predict(emb, features.rows(rows), raw=raw).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def calibration_table(
    predicted: np.ndarray, true_dice: np.ndarray, bins: int = 5
) -> list[dict[str, float | int | None]]:
    """Per bin of predicted Dice: ``{"lo", "hi", "count", "mean_predicted", "mean_dice"}`` (``None`` if empty)."""
    predicted, true_dice = np.asarray(predicted, float), np.asarray(true_dice, float)
    edges = np.round(np.linspace(0.0, 1.0, bins + 1), 6)
    table = []
    for i in range(bins):
        upper = predicted <= edges[i + 1] if i == bins - 1 else predicted < edges[i + 1]
        sel = (predicted >= edges[i]) & upper
        n = int(sel.sum())
        table.append(
            {
                "lo": float(edges[i]),
                "hi": float(edges[i + 1]),
                "count": n,
                "mean_predicted": float(predicted[sel].mean()) if n else None,
                "mean_dice": float(true_dice[sel].mean()) if n else None,
            }
        )
    return table


def _paired_scores(predicted: np.ndarray, true_dice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true Dice as flat float64 arrays; ``ValueError`` unless equally long, non-empty, finite."""
    pred = np.asarray(predicted, dtype=np.float64).reshape(-1)
    true = np.asarray(true_dice, dtype=np.float64).reshape(-1)
    if pred.size == 0 or pred.shape != true.shape:
        raise ValueError(f"need equally long non-empty arrays, got {pred.shape} and {true.shape}")
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(true))):
        raise ValueError("predicted and true Dice must be finite")
    return pred, true


def fit_dice_map(predicted: np.ndarray, true_dice: np.ndarray) -> tuple[list[float], list[float]]:
    """The non-decreasing map from predicted to true Dice that fits ``true_dice`` best in squared error
    (isotonic regression, pool-adjacent-violators), as knots for :meth:`ConfidenceModule.set_dice_map`.

    Each pooled block of masks becomes one knot: its mean prediction and its mean true Dice; the map is
    anchored at ``(0, 0)`` and ``(1, 1)`` beyond them, so it rises everywhere and keeps every score's rank.

    Raises:
        ValueError: empty, mismatched or non-finite inputs.
    """
    pred, true = _paired_scores(predicted, true_dice)
    order = np.argsort(pred, kind="stable")
    pred, true = pred[order], true[order]
    # equal predictions first form one block each (a map cannot send one value to two)
    starts = np.flatnonzero(np.r_[True, pred[1:] != pred[:-1]])
    weight = list(np.diff(np.r_[starts, pred.size]).astype(np.float64))
    xs = list(np.add.reduceat(pred, starts) / weight)
    ys = list(np.add.reduceat(true, starts) / weight)
    bx: list[float] = []
    by: list[float] = []
    bw: list[float] = []
    for x, y, w in zip(xs, ys, weight, strict=True):
        bx.append(x)
        by.append(y)
        bw.append(w)
        while len(by) > 1 and by[-2] >= by[-1]:  # pool violators (and ties: knots must differ in value order)
            w2 = bw[-2] + bw[-1]
            bx[-2:] = [(bx[-2] * bw[-2] + bx[-1] * bw[-1]) / w2]
            by[-2:] = [(by[-2] * bw[-2] + by[-1] * bw[-1]) / w2]
            bw[-2:] = [w2]
    # anchored at (0, 0) and (1, 1) beyond the blocks, so the map rises everywhere and keeps every score's
    # rank (a flat end would tie the most and the least trusted masks, and no threshold could split them)
    knots = [float(np.clip(x, 0.0, 1.0)) for x in bx]
    values = [float(np.clip(y, 0.0, 1.0)) for y in by]
    if knots[0] > 0.0:
        knots, values = [0.0, *knots], [0.0, *values]
    if knots[-1] < 1.0:
        knots, values = [*knots, 1.0], [*values, 1.0]
    return knots, values


def evaluate_confidence(
    module: ConfidenceModule, examples: ConfidenceExamples, target_dice: float = 0.8
) -> dict[str, Any]:
    """Measure a module on examples: ``{"n", "mse", "mae", "spearman", "calibration", "threshold"}``.

    ``spearman`` is ``None`` when undefined (fewer than 3 examples or a constant input); ``threshold`` is
    :func:`calibrate_threshold` on these examples.
    """
    pred = _predict(module, examples).numpy().astype(np.float64)
    true = examples.dice.numpy().astype(np.float64)
    rho = None
    if len(pred) >= 3 and np.ptp(pred) > 0 and np.ptp(true) > 0:
        rho = float(stats.spearmanr(pred, true).statistic)
    return {
        "n": len(pred),
        "mse": float(np.mean((pred - true) ** 2)),
        "mae": float(np.mean(np.abs(pred - true))),
        "spearman": rho,
        "calibration": calibration_table(pred, true),
        "threshold": calibrate_threshold(pred, true, target_dice),
    }


def fit_confidence_module(
    train: ConfidenceExamples,
    val: ConfidenceExamples | None = None,
    *,
    calibrate: ConfidenceExamples | None = None,
    config: ConfidenceConfig | None = None,
    epochs: int = 30,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 32,
    rank_weight: float = 0.5,
    target_dice: float = 0.8,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> tuple[ConfidenceModule, dict[str, Any]]:
    """Fit a fresh module on examples with MSE on Dice plus ``rank_weight`` times a pairwise ranking loss.

    With ``calibrate`` (masks of pairs held back from both ``train`` and ``val``), the module then gets the
    Dice map fitted there (:func:`fit_dice_map`), and ``val`` measures the mapped scores.

    Returns:
        The module (eval mode) and plain metrics: ``train_loss`` (last epoch), and with ``val``:
        ``val_loss`` and ``val_loss_untrained`` (MSE after and before training), ``val_mae``,
        ``val_mae_constant`` (predicting the training mean), ``val_spearman``, ``calibration``, ``threshold``;
        with ``calibrate`` also ``dice_map_knots`` and ``val_mae_unmapped`` (the network's own scores).
    """
    if len(train) == 0:
        raise ValueError("no training examples for the confidence module")
    config = config or ConfidenceConfig(embed_dim=int(train.embeddings.shape[1]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = ConfidenceModule(config).to(device)
    metrics: dict[str, Any] = {"n_train_examples": len(train), "config": config.to_dict()}
    if val is not None and len(val):
        metrics["val_loss_untrained"] = float(F.mse_loss(_predict(module, val), val.dice))
    optimiser = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, epochs))
    generator = torch.Generator().manual_seed(seed)
    features = train.mask_features()
    loss_sum = 0.0
    for epoch in range(1, epochs + 1):
        module.train()
        loss_sum = 0.0
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), batch_size):
            rows = order[start : start + batch_size]
            emb = train.embeddings[train.index[rows]].to(device)
            dice = train.dice[rows].to(device)
            pred = module.predict(emb, features.rows(rows))
            loss = F.mse_loss(pred, dice) + rank_weight * _rank_loss(pred, dice)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_sum += float(loss.detach()) * len(rows)
        scheduler.step()
        if progress is not None:
            progress(epoch, epochs, f"confidence module: epoch {epoch} loss {loss_sum / len(train):.4f}")
    module.eval()
    metrics["train_loss"] = loss_sum / len(train)
    if calibrate is not None and len(calibrate):
        knots, values = fit_dice_map(_predict(module, calibrate, raw=True).numpy(), calibrate.dice.numpy())
        module.set_dice_map(knots, values)
        metrics.update(n_calibration_examples=len(calibrate), dice_map_knots=len(knots))
        if val is not None and len(val):
            metrics["val_mae_unmapped"] = float((_predict(module, val, raw=True) - val.dice).abs().mean())
    if val is not None and len(val):
        result = evaluate_confidence(module, val, target_dice)
        constant = float(train.dice.mean())
        metrics.update(
            n_val_examples=result["n"],
            val_loss=result["mse"],
            val_mae=result["mae"],
            val_mae_constant=float((val.dice - constant).abs().mean()),
            val_spearman=result["spearman"],
            calibration=result["calibration"],
            threshold=result["threshold"],
            target_dice=float(target_dice),
        )
        logger.info(
            "confidence module: val MAE %.3f (constant %.3f), Spearman %s, MSE %.4f (untrained %.4f)",
            metrics["val_mae"],
            metrics["val_mae_constant"],
            "n/a" if result["spearman"] is None else f"{result['spearman']:.3f}",
            metrics["val_loss"],
            metrics["val_loss_untrained"],
        )
    return module, metrics


def train_confidence_module(
    model: nn.Module,
    pairs: Iterable[Any],
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    val_fraction: float = 0.2,
    map_fraction: float = 0.15,
    config: ConfidenceConfig | None = None,
    clicks_per_example: Sequence[int] = (1, 2, 3, 5),
    perturb: PerturbSettings | None = None,
    batch_size: int = 32,
    rank_weight: float = 0.5,
    target_dice: float = 0.8,
) -> tuple[ConfidenceModule, dict[str, Any]]:
    """Make examples with ``model`` (:func:`make_confidence_examples`), hold back pairs, fit, measure.

    Args:
        model: the SAM model whose masks are to be judged (its embeddings feed the module).
        pairs: ``(image region (1, 1, 128^3), target (1, 1, 128^3))`` tensors, consumed once.
        epochs, lr, seed: training of the module; ``seed`` also drives the example simulation and split.
        progress: ``progress(done, total, message)`` for the example pairs, then for the epochs.
        val_fraction: share of pairs (at least one when there are two or more) held back for validation.
        map_fraction: share of pairs (at least one when there are three or more) held back from the network
            to fit its Dice map (:func:`fit_dice_map`); 0 fits no map.
        config: module sizes; by default width 32 over the model's embedding width.

    Returns:
        ``(module, metrics)``: see :func:`fit_confidence_module`, plus ``n_train_pairs``, ``n_val_pairs``,
        ``n_map_pairs``, ``dice_mean`` and ``dice_std`` of all examples.
    """
    rng = np.random.default_rng(seed)
    examples = make_confidence_examples(model, pairs, rng, clicks_per_example, perturb, progress)
    n = examples.n_pairs
    n_val = min(n - 1, max(1, round(val_fraction * n))) if val_fraction > 0 and n >= 2 else 0
    n_map = min(n - n_val - 1, max(1, round(map_fraction * n))) if map_fraction > 0 and n >= 3 else 0
    order = rng.permutation(n).tolist()
    val = examples.select(sorted(order[:n_val])) if n_val else None
    held = examples.select(sorted(order[n_val : n_val + n_map])) if n_map else None
    train = examples.select(sorted(order[n_val + n_map :]))
    if config is None and hasattr(model, "config"):
        config = ConfidenceConfig(embed_dim=int(model.config.prompt_embed_dim))
    device = next(model.parameters()).device
    module, metrics = fit_confidence_module(
        train,
        val,
        calibrate=held,
        config=config,
        epochs=epochs,
        lr=lr,
        seed=seed,
        batch_size=batch_size,
        rank_weight=rank_weight,
        target_dice=target_dice,
        device=device,
        progress=progress,
    )
    metrics.update(
        n_train_pairs=n - n_val - n_map,
        n_val_pairs=n_val,
        n_map_pairs=n_map,
        dice_mean=float(examples.dice.mean()),
        dice_std=float(examples.dice.std()) if len(examples) > 1 else 0.0,
    )
    return module, metrics


# --------------------------------------------------------------------------- threshold and filtering


def calibrate_threshold(predicted: np.ndarray, true_dice: np.ndarray, target_dice: float = 0.8) -> float:
    """The filtering threshold: keep as many pseudo-labels as possible whose mean true Dice reaches the target.

    Candidates are the distinct predicted values; for each, the pseudo-labels predicted at least that high
    are "kept". The lowest candidate whose kept set has a mean true Dice ``>= target_dice`` is chosen, and the
    threshold is placed halfway between it and the next lower predicted value (``0.0`` when it is the lowest,
    i.e. everything may be kept). When no kept set reaches the target, ``1.0`` is returned: nothing passes
    automatically (a warning is logged).

    Args:
        predicted: predicted Dice of calibration masks ``(N,)``.
        true_dice: their true Dice ``(N,)``.
        target_dice: required mean true Dice of the kept pseudo-labels.

    Raises:
        ValueError: empty, mismatched or non-finite inputs.
    """
    pred, true = _paired_scores(predicted, true_dice)
    order = np.argsort(-pred, kind="stable")
    pred_sorted, true_sorted = pred[order], true[order]
    kept_mean = np.cumsum(true_sorted) / np.arange(1, pred.size + 1)
    # a candidate value keeps every mask predicted at least that high: the last index of its tie group
    last_of_group = np.r_[pred_sorted[1:] != pred_sorted[:-1], True]
    ok = np.flatnonzero(last_of_group & (kept_mean >= target_dice))
    if ok.size == 0:
        logger.warning(
            "no confidence threshold keeps pseudo-labels with mean Dice >= %.2f; nothing passes", target_dice
        )
        return 1.0
    i = int(ok[-1])
    value = pred_sorted[i]
    lower = pred_sorted[i + 1] if i + 1 < pred.size else None
    return 0.0 if lower is None else float((value + lower) / 2)


_R = TypeVar("_R")


def filter_pseudo_labels(records: Iterable[_R], threshold: float) -> tuple[list[_R], list[_R]]:
    """Split records by their ``.confidence``: ``(kept, dropped)``, order preserved.

    A record is kept when its confidence is ``None`` (accepted by a person: always kept) or at least
    ``threshold``; otherwise it is dropped.
    """
    kept: list[_R] = []
    dropped: list[_R] = []
    for record in records:
        confidence = record.confidence  # type: ignore[attr-defined]
        (kept if confidence is None or confidence >= threshold else dropped).append(record)
    return kept, dropped
