"""The PESF confidence module: a network predicting the Dice of a mask, to filter out bad pseudo-labels.

Following Jin et al. (Neural Networks 2025), a *feature extraction module* turns the region's image embedding
and a predicted mask into features that discriminate the organ from its surroundings, and a *confidence
prediction module* maps them to the expected Dice of that mask. Here:

* features: the embedding projected to a small width; the mask probability pooled to the token grid
  (``8^3``) and to ``16^3``; mask-weighted average pooling of the embedding inside and outside the mask
  (foreground vs background features, their difference and cosine similarity); mask statistics (volume,
  sharpness, uncertain band, entropy, mass on the region border, surface-to-volume ratio, mean logit);
* prediction: two 3D convolutions over ``concat(projected embedding, mask maps)``, global average and max
  pooling, then an MLP with a sigmoid;
* an optional *Dice map* (:meth:`ConfidenceModule.set_dice_map`): a non-decreasing piecewise-linear map from
  the network's output to the Dice it stands for, fitted on masks held back from the network's fitting
  (:func:`pesf.train.confidence.fit_dice_map`). The network is fitted on masks of the organs and regions it
  learns from and reads lower on others; the map turns its score back into a Dice without changing the
  order of masks.

The module rides along with a :class:`~pesf.models.sam3d.Sam3D` (:func:`attach_confidence_module`); its weights
travel in the checkpoint and :func:`~pesf.models.checkpoint.load_model` rebuilds it
(:func:`confidence_module_from_state`). Making training examples, fitting, calibrating the filtering threshold
and filtering are in :mod:`pesf.train.confidence`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ConfidenceConfig",
    "ConfidenceModule",
    "MaskFeatures",
    "attach_confidence_module",
    "confidence_module_from_state",
    "mask_features",
    "mask_statistics",
]

_N_STATS = 9
_EPS = 1e-6


# --------------------------------------------------------------------------- the network


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

    dice_map: tuple[Tensor, Tensor] | None = None

    def set_dice_map(self, knots: Sequence[float] | None, values: Sequence[float] | None = None) -> None:
        """Map the network's output through the piecewise-linear curve ``knots -> values`` (``None``: no map).

        Outside the knots the end values hold. Raises ``ValueError`` unless both are equally long
        (at least one), finite, in ``[0, 1]``, with ``knots`` increasing and ``values`` non-decreasing.
        """
        if knots is None:
            self.dice_map = None
            return
        x = torch.as_tensor(list(knots), dtype=torch.float64)
        y = torch.as_tensor(list(values if values is not None else []), dtype=torch.float64)
        ok = x.ndim == 1 and x.shape == y.shape and x.numel() >= 1
        ok = ok and bool(torch.isfinite(x).all() and torch.isfinite(y).all())
        ok = ok and bool(((x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)).all())
        ok = ok and bool((x.diff() > 0).all() and (y.diff() >= 0).all())
        if not ok:
            raise ValueError(
                "a Dice map needs equally long knots (increasing) and values (non-decreasing), all in [0, 1]"
            )
        self.dice_map = (x.float(), y.float())

    def map_dice(self, raw: Tensor) -> Tensor:
        """The network's output ``raw`` through the Dice map (unchanged without one)."""
        if self.dice_map is None:
            return raw
        x, y = (t.to(raw.device, raw.dtype) for t in self.dice_map)
        if x.numel() == 1:
            return y.expand_as(raw).clone()
        i = torch.searchsorted(x, raw.contiguous()).clamp(1, x.numel() - 1)
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        t = ((raw - x0) / (x1 - x0)).clamp(0, 1)
        return y0 + t * (y1 - y0)

    def forward(self, embedding: Tensor, low_res_logits: Tensor) -> Tensor:
        """Predicted Dice in ``[0, 1]`` (through the Dice map when there is one).

        Args:
            embedding: image embedding ``(B, C, g, g, g)`` (or ``(1, C, g, g, g)`` shared by all masks).
            low_res_logits: mask logits ``(B, 1, 4g, 4g, 4g)``; moved to the module's device.

        Returns:
            ``(B,)`` predicted Dice.
        """
        weight = self.embed_proj[0].weight
        logits = low_res_logits.to(weight.device, weight.dtype)
        return self.predict(embedding, mask_features(logits, embedding.shape[-3:]))

    def predict(self, embedding: Tensor, masks: MaskFeatures, raw: bool = False) -> Tensor:
        """:meth:`forward` on precomputed :func:`mask_features` (training computes them once per mask);
        ``raw`` skips the Dice map (the network's own output, which training fits)."""
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
        out = torch.sigmoid(self.head(torch.cat(features, dim=1))).squeeze(1)
        return out if raw else self.map_dice(out)


# --------------------------------------------------------------------------- attaching to the model


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
    info.pop("dice_map", None)
    if module.dice_map is not None:
        info["dice_map"] = {"knots": module.dice_map[0].tolist(), "values": module.dice_map[1].tolist()}
    model.metadata = {**getattr(model, "metadata", {}), "confidence": info}


def confidence_module_from_state(
    config: dict[str, Any], state: dict[str, Tensor], dice_map: dict[str, Any] | None = None
) -> ConfidenceModule:
    """Rebuild a module from a checkpoint's ``confidence_config`` and ``confidence_state_dict`` (strict), with
    its Dice map (``{"knots": [...], "values": [...]}``, as :func:`attach_confidence_module` stores it in the
    model's metadata) when it has one.

    Raises:
        ValueError: a config or state dict that does not fit.
    """
    module = ConfidenceModule(ConfidenceConfig.from_dict(dict(config)))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(" ".join(str(exc).split())[:200]) from None
    if dice_map is not None:
        if not isinstance(dice_map, dict):
            raise ValueError("its Dice map is not an object of knots and values")
        module.set_dice_map(dice_map.get("knots"), dice_map.get("values"))
    return module.eval()
