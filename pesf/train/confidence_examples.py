"""Training examples of the confidence module: masks of varied quality, each with its true Dice.

The masks are made by the SAM model itself from simulated click sequences (clean, jittered, wrong-organ and
wrong-negative clicks, with or without the previous-mask prompt), some of them refined by the image as the
interactive session refines them (:mod:`pesf.interactive.refine`; the refined mask enters as the model's
logits set to +-2 where the refinement turned them, as the session scores it), plus the target degraded by
known amounts (erosion, dilation, shift, cut, false-positive blob), each labelled with its true Dice at full
region resolution (:func:`make_confidence_examples`, varied as :class:`PerturbSettings` says). The network is in
:mod:`pesf.models.confidence`, its fitting in :mod:`pesf.train.confidence`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from pesf.eval.clicks import ClickSimulator
from pesf.eval.metrics import dice
from pesf.interactive.refine import RefineConfig, mark_turned, refine_mask
from pesf.models.confidence import MaskFeatures, mask_features

__all__ = ["ConfidenceExamples", "PerturbSettings", "ProgressCallback", "make_confidence_examples"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]
"""``progress(done, total, message)``."""


@dataclass
class PerturbSettings:
    """How the masks of varied quality are made (see :func:`make_confidence_examples`).

    Attributes:
        sequences: click sequences per pair, decoded together in one batch per click.
        jitter_sigma: standard deviation (region voxels) of the click jitter applied to every second sequence.
        wrong_click_prob: chance that a sequence starts with a positive click beside the organ (wrong organ).
        negative_click_prob: chance that a sequence gets one negative click inside the organ (a user error).
        prev_mask_prob: chance that a sequence passes its previous mask as the mask prompt.
        degraded_per_pair: extra masks per pair made by degrading the target by known amounts.
        click_grid: grid (voxels per side) on which clicks are simulated; a divisor of the region size.
        refine_prob: chance that a decoded mask is also refined by the image with its clicks (an extra
            example); 0 makes none.
        refine: the refinement's settings (default :class:`~pesf.interactive.refine.RefineConfig`).
        spacing_mm: the regions' voxel size, for the refinement's widths.
    """

    sequences: int = 4
    jitter_sigma: float = 6.0
    wrong_click_prob: float = 0.25
    negative_click_prob: float = 0.25
    prev_mask_prob: float = 0.75
    degraded_per_pair: int = 4
    click_grid: int = 64
    refine_prob: float = 0.5
    refine: RefineConfig | None = None
    spacing_mm: float = 1.5


@dataclass
class ConfidenceExamples:
    """Masks with their true Dice, ready for training.

    Attributes:
        embeddings: ``(P, C, g, g, g)`` one image embedding per pair (CPU, float32).
        index: ``(N,)`` row of ``embeddings`` of each example.
        low_res: ``(N, 1, 4g, 4g, 4g)`` mask logits.
        dice: ``(N,)`` true Dice at region resolution against the target.
        kinds: how each mask was made (``clicks``, ``jitter``, ``wrong``, ``negative``, ``degraded-*``).
    """

    embeddings: Tensor
    index: Tensor
    low_res: Tensor
    dice: Tensor
    kinds: list[str] = field(default_factory=list)
    _features: MaskFeatures | None = field(default=None, repr=False)

    def mask_features(self, batch_size: int = 64) -> MaskFeatures:
        """:func:`mask_features` of every example, computed on first use and kept."""
        if self._features is None:
            grid = self.embeddings.shape[-3:]
            with torch.no_grad():
                parts = [
                    mask_features(self.low_res[i : i + batch_size], grid)
                    for i in range(0, len(self), batch_size)
                ]
            self._features = MaskFeatures(*(torch.cat(t) for t in zip(*parts, strict=True)))
        return self._features

    def __len__(self) -> int:
        return int(self.dice.numel())

    @property
    def n_pairs(self) -> int:
        return int(self.embeddings.shape[0])

    def select(self, pairs: Sequence[int]) -> ConfidenceExamples:
        """The examples of the given pairs only, with their embeddings re-indexed."""
        pairs = list(pairs)
        remap = torch.full((self.n_pairs,), -1, dtype=torch.long)
        remap[torch.as_tensor(pairs, dtype=torch.long)] = torch.arange(len(pairs))
        keep = remap[self.index] >= 0
        rows = torch.nonzero(keep).flatten().tolist()
        return ConfidenceExamples(
            embeddings=self.embeddings[pairs],
            index=remap[self.index[keep]],
            low_res=self.low_res[keep],
            dice=self.dice[keep],
            kinds=[self.kinds[i] for i in rows] if self.kinds else [],
            _features=None if self._features is None else self._features.rows(keep),
        )


def _as_pair(item: Any) -> tuple[Tensor, Tensor]:
    """``(image (1, 1, S, S, S), target (1, 1, S, S, S))`` from a tuple or an object with ``.image``/``.target``."""
    image, target = (item.image, item.target) if hasattr(item, "image") else item
    image = torch.as_tensor(image, dtype=torch.float32)
    target = torch.as_tensor(target, dtype=torch.float32)
    size = image.shape[-1]
    return image.reshape(1, 1, size, size, size), target.reshape(1, 1, size, size, size)


def _dice_at(low_res: Tensor, target: Tensor) -> Tensor:
    """Dice ``(B,)`` of ``upsample(low_res) > 0`` against the boolean ``target`` ``(S, S, S)``."""
    size = tuple(target.shape)
    pred = F.interpolate(low_res.float(), size=size, mode="trilinear", align_corners=False)[:, 0] > 0
    inter = (pred & target).flatten(1).sum(1).float()
    total = pred.flatten(1).sum(1).float() + target.sum().float()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def _random_voxel(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    idx = np.flatnonzero(mask)
    return np.array(np.unravel_index(int(idx[rng.integers(len(idx))]), mask.shape), dtype=np.float64)


def _beside(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A voxel outside ``target`` but near it (a click on a neighbouring organ)."""
    dist = ndimage.distance_transform_edt(~target)
    near = (dist >= 2) & (dist <= max(4.0, target.shape[0] / 6))
    return _random_voxel(near if near.any() else ~target, rng)


def _degrade(target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The low-resolution target ``(s, s, s)`` changed by a random known operation."""
    op = str(rng.choice(["erode", "dilate", "shift", "cut", "blob", "exact"]))
    mask = target.copy()
    if op in ("erode", "dilate"):
        steps = int(rng.integers(1, 4))
        morph = ndimage.binary_erosion if op == "erode" else ndimage.binary_dilation
        mask = morph(mask, iterations=steps)
    elif op == "shift":
        offset = rng.integers(-4, 5, size=3).astype(np.float64)
        mask = ndimage.shift(mask.astype(np.uint8), offset, order=0, cval=0).astype(bool)
    elif op == "cut":
        normal = rng.normal(size=3)
        coords = np.stack(np.nonzero(mask), axis=1) @ normal
        if coords.size:
            limit = np.quantile(coords, rng.uniform(0.3, 0.9))
            grid = np.stack(np.indices(mask.shape), axis=-1) @ normal
            mask &= grid <= limit
    elif op == "blob":
        centre = _beside(target, rng) if target.any() else rng.uniform(0, target.shape[0], 3)
        radius = rng.uniform(2, max(3.0, target.shape[0] / 6))
        grid = np.stack(np.indices(mask.shape), axis=-1)
        mask |= np.linalg.norm(grid - centre, axis=-1) <= radius
    return mask, f"degraded-{op}"


def _refined_example(
    image: np.ndarray,
    low_res: Tensor,
    target: Tensor,
    clicks: list[tuple[np.ndarray, bool]],
    settings: PerturbSettings,
) -> tuple[Tensor, Tensor] | None:
    """A decoded mask refined by the image with its clicks: ``(logits (1, s, s, s), true Dice)``, or ``None``
    when the refinement turns nothing.

    The logits are the model's, set to +-2 at the low-resolution voxels whose centre the refinement turned
    (the session's input to the module); the Dice is the refined mask's own, at region resolution.
    """
    size = image.shape
    up = F.interpolate(low_res[None].float(), size=size, mode="trilinear", align_corners=False)[0, 0].numpy()
    mask = up > 0
    full = tuple(slice(0, n) for n in size)
    spacing = [settings.spacing_mm] * 3
    out = refine_mask(image, mask, full, spacing, clicks, settings.refine, logits=up)
    if out is None:
        return None
    box, refined_box = out
    refined = mask.copy()
    refined[box] = refined_box
    turned = refined.astype(np.float32) - mask.astype(np.float32)  # +1 on, -1 off, 0 kept
    if not turned.any():
        return None
    factor = size[0] // low_res.shape[-1]
    at_centres = torch.from_numpy(turned)[None, None]
    if factor > 1:  # read at each low-resolution voxel's centre (between its two middle voxels)
        lo = (factor - 1) // 2
        at_centres = F.avg_pool3d(at_centres[..., lo:, lo:, lo:], 2 if factor % 2 == 0 else 1, factor)
    logits = low_res.clone().float()
    at = at_centres[0, 0, : logits.shape[-3], : logits.shape[-2], : logits.shape[-1]]
    mark_turned(logits[0], at)
    return logits, torch.tensor(dice(target[0, 0].numpy() > 0.5, refined), dtype=torch.float32)


def _mask_logits(mask: np.ndarray, rng: np.random.Generator) -> Tensor:
    """Decoder-like logits for a binary mask: scaled signed distance plus smooth noise, ``(1, 1, s, s, s)``."""
    inside = ndimage.distance_transform_edt(mask) if mask.any() else np.zeros(mask.shape)
    outside = ndimage.distance_transform_edt(~mask) if (~mask).any() else np.zeros(mask.shape)
    signed = np.clip(inside - outside + 0.5 * (mask.astype(np.float64) * 2 - 1), -4, 4)
    noise = ndimage.gaussian_filter(rng.normal(size=mask.shape), 1.5) * rng.uniform(0, 3)
    logits = signed * rng.uniform(0.5, 4.0) + noise
    return torch.from_numpy(logits.astype(np.float32))[None, None]


@torch.no_grad()
def _pair_examples(
    model: nn.Module,
    embedding: Tensor,
    image: Tensor,
    target: Tensor,
    record: set[int],
    settings: PerturbSettings,
    rng: np.random.Generator,
) -> tuple[list[Tensor], list[Tensor], list[str]]:
    """Decoded and degraded masks for one pair: ``(low_res list, dice list, kinds)``."""
    size = target.shape[-1]
    tgt = target[0, 0] > 0.5
    low = model.config.low_res_mask_size if hasattr(model, "config") else (size // 4,) * 3
    grid = settings.click_grid if size % settings.click_grid == 0 else size
    factor = size // grid
    tgt_grid = F.avg_pool3d(target, factor)[0, 0].numpy() > 0.5 if factor > 1 else tgt.numpy()
    if not tgt_grid.any():  # organ thinner than the click grid
        grid, factor, tgt_grid = size, 1, tgt.numpy()
    k = max(1, settings.sequences)
    sims = [ClickSimulator(seed=int(rng.integers(2**31)), border_is_boundary=True) for _ in range(k)]
    jitter = [i % 2 == 1 for i in range(k)]
    wrong = rng.random(k) < settings.wrong_click_prob
    use_prev = torch.from_numpy(rng.random(k) < settings.prev_mask_prob).float().view(k, 1, 1, 1, 1)
    steps = max(record)
    negative = [
        int(rng.integers(2, steps + 1)) if steps >= 2 and rng.random() < settings.negative_click_prob else 0
        for _ in range(k)
    ]
    kinds = [
        "wrong" if wrong[i] else "negative" if negative[i] else "jitter" if jitter[i] else "clicks"
        for i in range(k)
    ]
    device = embedding.device
    coords = np.zeros((k, 0, 3))
    labels = np.zeros((k, 0), dtype=np.int64)
    prev = torch.zeros(k, 1, *low)
    pred_grid: list[np.ndarray] = []
    out_low, out_dice, out_kinds = [], [], []
    for step in range(1, steps + 1):
        new, signs = np.zeros((k, 1, 3)), np.ones((k, 1), dtype=np.int64)
        for i in range(k):
            if step == 1:
                point = _beside(tgt_grid, rng) if wrong[i] else sims[i].first_click(tgt_grid)[0]
            elif step == negative[i]:
                point, signs[i, 0] = _random_voxel(tgt_grid, rng), 0
            else:
                nxt = sims[i].next_click(tgt_grid, pred_grid[i])
                point = _random_voxel(tgt_grid, rng) if nxt is None else nxt[0]
                signs[i, 0] = 1 if nxt is None else int(nxt[1])
            ijk = np.asarray(point, dtype=np.float64) * factor + (factor - 1) / 2
            if jitter[i]:
                ijk = ijk + rng.normal(0.0, settings.jitter_sigma, 3)
            new[i, 0] = np.clip(ijk, 0, size - 1)
        coords, labels = np.concatenate([coords, new], 1), np.concatenate([labels, signs], 1)
        points = (
            torch.from_numpy(coords.astype(np.float32)).to(device),
            torch.from_numpy(labels).to(device),
        )
        low_res, _ = model.decode(embedding, points, (prev * use_prev).to(device))
        low_res = low_res[:, :1].float().cpu()
        if step in record:
            out_low += list(low_res)
            out_dice += list(_dice_at(low_res, tgt))
            out_kinds += kinds
            for i in range(k):
                if settings.refine_prob <= 0 or rng.random() >= settings.refine_prob:
                    continue
                clicks = [(coords[i, j], bool(labels[i, j])) for j in range(step)]
                refined = _refined_example(image[0, 0].numpy(), low_res[i], target, clicks, settings)
                if refined is not None:
                    out_low.append(refined[0])
                    out_dice.append(refined[1])
                    out_kinds.append(f"refined-{kinds[i]}")
        if step < steps:
            up = F.interpolate(low_res, size=(grid,) * 3, mode="trilinear", align_corners=False)[:, 0] > 0
            pred_grid = list(up.numpy())
        prev = low_res
    tgt_low = F.adaptive_avg_pool3d(target, low)[0, 0].numpy() > 0.5
    for _ in range(settings.degraded_per_pair):
        mask, kind = _degrade(tgt_low, rng)
        logits = _mask_logits(mask, rng)
        out_low.append(logits[0])
        out_dice.append(_dice_at(logits, tgt)[0])
        out_kinds.append(kind)
    return out_low, out_dice, out_kinds


def make_confidence_examples(
    model: nn.Module,
    pairs: Iterable[Any],
    rng: np.random.Generator,
    clicks_per_example: Sequence[int] = (1, 2, 3, 5),
    perturb: PerturbSettings | None = None,
    progress: ProgressCallback | None = None,
) -> ConfidenceExamples:
    """Masks of varied quality made by ``model`` itself, each with its true Dice.

    For each pair the image is encoded once; ``perturb.sequences`` click sequences are simulated (first click
    inside the organ, later clicks on the largest error, as :class:`~pesf.eval.clicks.ClickSimulator`; every
    second sequence jittered; some start beside the organ or get a negative click inside it; some pass the
    previous mask as prompt) and decoded together; the masks after ``clicks_per_example`` clicks are kept.
    ``perturb.degraded_per_pair`` masks made by degrading the target (known operations) are added.

    Args:
        model: a :class:`~pesf.models.sam3d.Sam3D` (``encode``/``decode``); used in eval mode, restored after.
        pairs: ``(image (1, 1, S, S, S), target (1, 1, S, S, S))`` region tensors (or objects with ``.image``
            and ``.target``), consumed one at a time; pairs with an empty target are skipped.
        rng: numpy generator for every random choice.
        clicks_per_example: click counts after which a mask is recorded.
        perturb: how masks are varied; defaults to :class:`PerturbSettings`.
        progress: ``progress(pairs_done, pairs_total, message)``; total is 0 for an iterator without length.

    Returns:
        The examples (CPU tensors).

    Raises:
        ValueError: no pair with a non-empty target, or bad ``clicks_per_example``.
    """
    settings = perturb or PerturbSettings()
    record = {int(n) for n in clicks_per_example}
    if not record or min(record) < 1:
        raise ValueError(f"clicks_per_example must be positive click counts, got {list(clicks_per_example)}")
    total = len(pairs) if hasattr(pairs, "__len__") else 0  # type: ignore[arg-type]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    embeddings, index, lows, dices, kinds = [], [], [], [], []
    try:
        for done, item in enumerate(pairs, start=1):
            image, target = _as_pair(item)
            if not bool((target > 0.5).any()):
                logger.warning("confidence examples: pair %d has an empty target, skipped", done - 1)
                continue
            with torch.no_grad():
                embedding = model.encode(image.to(device))
            low, true_dice, kind = _pair_examples(model, embedding, image, target, record, settings, rng)
            index += [len(embeddings)] * len(low)
            embeddings.append(embedding.float().cpu())
            lows += low
            dices += true_dice
            kinds += kind
            if progress is not None:
                progress(done, total, f"confidence examples: pair {done}")
    finally:
        model.train(was_training)
    if not embeddings:
        raise ValueError("no pair with a non-empty target to make confidence examples from")
    examples = ConfidenceExamples(
        embeddings=torch.cat(embeddings),
        index=torch.tensor(index, dtype=torch.long),
        low_res=torch.stack(lows).float(),
        dice=torch.stack(dices).float(),
        kinds=kinds,
    )
    hist, _ = np.histogram(examples.dice.numpy(), bins=10, range=(0.0, 1.0))
    logger.debug(
        "confidence examples: %d masks from %d pairs, Dice mean %.3f std %.3f, histogram (0.1 bins) %s",
        len(examples),
        examples.n_pairs,
        float(examples.dice.mean()),
        float(examples.dice.std()) if len(examples) > 1 else 0.0,
        hist.tolist(),
    )
    return examples
