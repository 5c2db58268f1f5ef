"""The PESF confidence module: predicts the Dice of a mask so that bad pseudo-labels can be filtered out.

Following Jin et al. (Neural Networks 2025), a *feature extraction module* turns the region's image embedding
and a predicted mask into features that discriminate the organ from its surroundings, and a *confidence
prediction module* maps them to the expected Dice of that mask. Here:

* features: the embedding projected to a small width; the mask probability pooled to the token grid
  (``8^3``) and to ``16^3``; mask-weighted average pooling of the embedding inside and outside the mask
  (foreground vs background features, their difference and cosine similarity); mask statistics (volume,
  sharpness, uncertain band, entropy, mass on the region border, surface-to-volume ratio, mean logit);
* prediction: two 3D convolutions over ``concat(projected embedding, mask maps)``, global average and max
  pooling, then an MLP with a sigmoid.

Training examples are masks of varied quality made by the SAM model itself from simulated click sequences
(clean, jittered, wrong-organ and wrong-negative clicks, with or without the previous-mask prompt), plus the
target degraded by known amounts (erosion, dilation, shift, cut, false-positive blob), each labelled with its
true Dice at full region resolution. The module is fitted with MSE on Dice plus a pairwise ranking loss, on
held-out pairs its MAE, Spearman correlation and a calibration table are measured, and the default filtering
threshold is calibrated there (:func:`calibrate_threshold`).

Typical use::

    module, metrics = train_confidence_module(model, pairs, epochs=30, lr=1e-3, seed=0)
    attach_confidence_module(model, module, {"threshold": metrics["threshold"], "metrics": metrics})
    save_checkpoint(model, "model.pt")  # load_model rebuilds and attaches the module
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, stats
from torch import Tensor, nn

from pesf.eval.clicks import ClickSimulator

__all__ = [
    "ConfidenceConfig",
    "ConfidenceExamples",
    "ConfidenceModule",
    "PerturbSettings",
    "attach_confidence_module",
    "calibrate_threshold",
    "calibration_table",
    "evaluate_confidence",
    "filter_pseudo_labels",
    "fit_confidence_module",
    "make_confidence_examples",
    "train_confidence_module",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]
"""``progress(done, total, message)``."""

_N_STATS = 9
_EPS = 1e-6


# --------------------------------------------------------------------------- the module


@dataclass(frozen=True)
class ConfidenceConfig:
    """Sizes of a :class:`ConfidenceModule`.

    Attributes:
        embed_dim: channels of the image embedding (the SAM model's ``prompt_embed_dim``).
        width: channels of the projected embedding and of the fused convolutions (multiple of 4).
        mask_width: channels of the mask-map convolutions (multiple of 4).
        hidden: hidden width of the prediction MLP.
    """

    embed_dim: int = 384
    width: int = 32
    mask_width: int = 16
    hidden: int = 64

    def __post_init__(self) -> None:
        if min(self.embed_dim, self.width, self.mask_width, self.hidden) < 1:
            raise ValueError(f"invalid ConfidenceConfig {self}: sizes must be positive")
        if self.width % 4 or self.mask_width % 4:
            raise ValueError(f"invalid ConfidenceConfig {self}: width and mask_width must be multiples of 4")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for a weights-only checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConfidenceConfig:
        """Inverse of :meth:`to_dict`; ``ValueError`` on unknown keys or bad sizes."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown ConfidenceConfig fields: {', '.join(unknown)}")
        return cls(**{k: int(v) for k, v in data.items()})


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(4, cout), nn.GELU())


def mask_statistics(logits: Tensor) -> Tensor:
    """Scalar descriptors of masks ``(B, 1, s, s, s)`` logits, each roughly in ``[0, 1]``: ``(B, 9)``.

    Soft and hard volume fraction, log voxel count, sharpness ``|2p - 1|`` and binary entropy inside the
    mask, the uncertain band (``0.1 < p < 0.9``) relative to the mask, the share of the mask on the region
    border, surface-to-volume ratio and the mean logit inside the mask.
    """
    prob = torch.sigmoid(logits)
    hard = (logits > 0).to(prob.dtype)
    dims = (1, 2, 3, 4)
    n = prob[0].numel()
    mass = prob.sum(dims)
    count = hard.sum(dims)
    ent = -(prob * torch.log2(prob.clamp(min=_EPS)) + (1 - prob) * torch.log2((1 - prob).clamp(min=_EPS)))
    band = ((prob > 0.1) & (prob < 0.9)).to(prob.dtype).sum(dims)
    inner = prob[:, :, 1:-1, 1:-1, 1:-1].sum(dims)
    surface = sum((prob.diff(dim=d).abs()).sum(dims) for d in (2, 3, 4))
    out = [
        prob.mean(dims),
        hard.mean(dims),
        torch.log1p(count) / math.log1p(n),
        ((2 * prob - 1).abs() * prob).sum(dims) / (mass + _EPS),
        (ent * prob).sum(dims) / (mass + _EPS),
        torch.log1p(band / (count + 1)) / 3,
        (mass - inner) / (mass + _EPS),
        torch.log1p(surface / (mass.clamp(min=0) ** (2 / 3) + 1)) / 3,
        ((logits * hard).sum(dims) / (count + 1) / 10).clamp(-2, 2),
    ]
    return torch.stack(out, dim=1)


class MaskFeatures(NamedTuple):
    """Parameter-free descriptors of masks, computed once per mask (see :func:`mask_features`).

    Attributes:
        fine: ``(B, 3, 2g, 2g, 2g)`` probability, sharpness ``|2p - 1|`` and hard mask, average-pooled.
        coarse: ``(B, 2, g, g, g)`` probability and hard mask pooled to the token grid.
        stats: ``(B, 9)`` :func:`mask_statistics`.
    """

    fine: Tensor
    coarse: Tensor
    stats: Tensor

    def rows(self, index: Tensor | slice) -> MaskFeatures:
        return MaskFeatures(self.fine[index], self.coarse[index], self.stats[index])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> MaskFeatures:
        return MaskFeatures(*(t.to(device, dtype) for t in self))


def mask_features(low_res_logits: Tensor, grid: Sequence[int] = (8, 8, 8)) -> MaskFeatures:
    """The mask inputs of :class:`ConfidenceModule` for logits ``(B, 1, s, s, s)`` and a token ``grid``."""
    logits = low_res_logits.float() if not low_res_logits.is_floating_point() else low_res_logits
    if logits.ndim != 5 or logits.shape[1] != 1:
        raise ValueError(f"confidence module expects logits (B, 1, s, s, s), got {tuple(logits.shape)}")
    prob = torch.sigmoid(logits)
    hard = (logits > 0).to(prob.dtype)
    grid = tuple(int(n) for n in grid)
    fine = tuple(2 * n for n in grid)
    return MaskFeatures(
        fine=torch.cat([F.adaptive_avg_pool3d(x, fine) for x in (prob, (2 * prob - 1).abs(), hard)], 1),
        coarse=torch.cat([F.adaptive_avg_pool3d(x, grid) for x in (prob, hard)], 1),
        stats=mask_statistics(logits),
    )


class ConfidenceModule(nn.Module):
    """Predicted Dice of a mask from the region's image embedding and the mask's low-resolution logits.

    Args:
        config: sizes; ``config.embed_dim`` must match the embedding's channels.
    """

    def __init__(self, config: ConfidenceConfig) -> None:
        super().__init__()
        self.config = config
        w, m = config.width, config.mask_width
        self.embed_proj = nn.Sequential(nn.Conv3d(config.embed_dim, w, 1), nn.GroupNorm(4, w), nn.GELU())
        self.mask_conv = _block(3, m, stride=2)  # 2g -> g
        self.fuse = nn.Sequential(_block(w + m + 2, w), _block(w, w, stride=2))  # g -> g/2
        n_features = 2 * w + 3 * w + 1 + _N_STATS
        self.head = nn.Sequential(
            nn.Linear(n_features, config.hidden), nn.GELU(), nn.Linear(config.hidden, 1)
        )

    def forward(self, embedding: Tensor, low_res_logits: Tensor) -> Tensor:
        """Predicted Dice in ``[0, 1]``.

        Args:
            embedding: image embedding ``(B, C, g, g, g)`` (or ``(1, C, g, g, g)`` shared by all masks).
            low_res_logits: mask logits ``(B, 1, 4g, 4g, 4g)``; moved to the module's device.

        Returns:
            ``(B,)`` predicted Dice.
        """
        weight = self.embed_proj[0].weight
        logits = low_res_logits.to(weight.device, weight.dtype)
        return self.predict(embedding, mask_features(logits, embedding.shape[-3:]))

    def predict(self, embedding: Tensor, masks: MaskFeatures) -> Tensor:
        """:meth:`forward` on precomputed :func:`mask_features` (training computes them once per mask)."""
        weight = self.embed_proj[0].weight
        emb = embedding.to(weight.device, weight.dtype)
        masks = masks.to(weight.device, weight.dtype)
        if emb.ndim != 5 or emb.shape[1] != self.config.embed_dim:
            raise ValueError(
                f"confidence module expects an embedding (B, {self.config.embed_dim}, g, g, g), "
                f"got {tuple(emb.shape)}"
            )
        if emb.shape[0] == 1 and masks.stats.shape[0] > 1:
            emb = emb.expand(masks.stats.shape[0], -1, -1, -1, -1)
        feat = self.embed_proj(emb)
        p8 = masks.coarse[:, :1]
        fused = self.fuse(torch.cat([feat, self.mask_conv(masks.fine), masks.coarse], dim=1))
        dims = (2, 3, 4)
        fg = (feat * p8).sum(dims) / (p8.sum(dims) + _EPS)
        bg = (feat * (1 - p8)).sum(dims) / ((1 - p8).sum(dims) + _EPS)
        cosine = F.cosine_similarity(fg, bg, dim=1, eps=_EPS)[:, None]
        features = [fused.mean(dims), fused.amax(dims), fg, bg, (fg - bg).abs(), cosine, masks.stats]
        return torch.sigmoid(self.head(torch.cat(features, dim=1))).squeeze(1)


# --------------------------------------------------------------------------- training examples


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
    """

    sequences: int = 4
    jitter_sigma: float = 6.0
    wrong_click_prob: float = 0.25
    negative_click_prob: float = 0.25
    prev_mask_prob: float = 0.75
    degraded_per_pair: int = 4
    click_grid: int = 64


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
    sims = [ClickSimulator(seed=int(rng.integers(2**31))) for _ in range(k)]
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
            low, dice, kind = _pair_examples(model, embedding, target, record, settings, rng)
            index += [len(embeddings)] * len(low)
            embeddings.append(embedding.float().cpu())
            lows += low
            dices += dice
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
def _predict(module: ConfidenceModule, examples: ConfidenceExamples, batch_size: int = 64) -> Tensor:
    module.eval()
    device = module.embed_proj[0].weight.device
    features = examples.mask_features()
    out = []
    for start in range(0, len(examples), batch_size):
        rows = slice(start, start + batch_size)
        emb = examples.embeddings[examples.index[rows]].to(device)
        out.append(module.predict(emb, features.rows(rows)).float().cpu())
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

    Returns:
        The module (eval mode) and plain metrics: ``train_loss`` (last epoch), and with ``val``:
        ``val_loss`` and ``val_loss_untrained`` (MSE after and before training), ``val_mae``,
        ``val_mae_constant`` (predicting the training mean), ``val_spearman``, ``calibration``, ``threshold``.
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
        config: module sizes; by default width 32 over the model's embedding width.

    Returns:
        ``(module, metrics)``: see :func:`fit_confidence_module`, plus ``n_train_pairs``, ``n_val_pairs``,
        ``dice_mean`` and ``dice_std`` of all examples.
    """
    rng = np.random.default_rng(seed)
    examples = make_confidence_examples(model, pairs, rng, clicks_per_example, perturb, progress)
    n = examples.n_pairs
    n_val = min(n - 1, max(1, round(val_fraction * n))) if val_fraction > 0 and n >= 2 else 0
    order = rng.permutation(n).tolist()
    val = examples.select(sorted(order[:n_val])) if n_val else None
    train = examples.select(sorted(order[n_val:]))
    if config is None and hasattr(model, "config"):
        config = ConfidenceConfig(embed_dim=int(model.config.prompt_embed_dim))
    device = next(model.parameters()).device
    module, metrics = fit_confidence_module(
        train,
        val,
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
        n_train_pairs=n - n_val,
        n_val_pairs=n_val,
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
    pred = np.asarray(predicted, dtype=np.float64).reshape(-1)
    true = np.asarray(true_dice, dtype=np.float64).reshape(-1)
    if pred.size == 0 or pred.shape != true.shape:
        raise ValueError(f"need equally long non-empty arrays, got {pred.shape} and {true.shape}")
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(true))):
        raise ValueError("predicted and true Dice must be finite")
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


# --------------------------------------------------------------------------- integration


def attach_confidence_module(
    model: nn.Module, module: ConfidenceModule, metadata: dict[str, Any] | None = None
) -> None:
    """Make ``module`` the model's confidence module (eval mode, on the model's device).

    Sets ``model.confidence_module`` and ``model.confidence_state_dict``; ``metadata`` (plain data, e.g.
    ``{"threshold": ..., "metrics": ...}``) is stored as ``model.metadata["confidence"]`` together with the
    module's ``config``. :func:`~pesf.models.checkpoint.save_checkpoint` then writes the weights and
    ``confidence_config``, and :func:`~pesf.models.checkpoint.load_model` attaches the module again.
    """
    device = next(model.parameters()).device
    module = module.to(device).eval()
    model.confidence_module = module
    model.confidence_state_dict = module.state_dict()
    info = {**dict(metadata or {}), "config": module.config.to_dict()}
    model.metadata = {**getattr(model, "metadata", {}), "confidence": info}


def confidence_module_from_state(config: dict[str, Any], state: dict[str, Tensor]) -> ConfidenceModule:
    """Rebuild a module from a checkpoint's ``confidence_config`` and ``confidence_state_dict`` (strict).

    Raises:
        ValueError: a config or state dict that does not fit.
    """
    module = ConfidenceModule(ConfidenceConfig.from_dict(dict(config)))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(" ".join(str(exc).split())[:200]) from None
    return module.eval()
