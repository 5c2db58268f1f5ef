"""What a click returns: one organ's mask, probabilities and confidence on the input grid."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["OrganResult"]


@dataclass
class OrganResult:
    """One organ's segmentation, stored as a crop of the input grid.

    Arrays are crops ``image[bbox]`` of the input image grid, indexed ``[i, j, k]``; outside ``bbox`` the
    organ is absent (probability 0, confidence 1). Use the ``full_*`` methods for whole-grid arrays.

    Attributes:
        name: organ name.
        image_shape: shape ``(I, J, K)`` of the input image.
        bbox: three slices into the input grid; empty slices when nothing is segmented.
        logits: float32 crop, foreground logits (probability = sigmoid(logits)).
        confidence: organ-level score, computed on first use (predicted Dice from the confidence module
            when the model has one, else the mean overlap of perturbed runs with the main mask).
        confidence_source: ``"confidence-module"`` or ``"perturbation"``.
        n_clicks: clicks given for this organ so far.
        n_regions: regions of interest that make up the organ.
        timings: seconds per step of the last click (``preprocess_s``, ``encode_s``, ``decode_s``,
            ``paste_s``, with the refinement (by default from an organ's first click on) ``refine_s``, and ``total_s``).
    """

    name: str
    image_shape: tuple[int, int, int]
    bbox: tuple[slice, slice, slice]
    logits: np.ndarray
    confidence_map_fn: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    confidence_fn: Callable[[], float] | None = field(default=None, repr=False)
    confidence_source: str = "perturbation"
    n_clicks: int = 0
    n_regions: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    _mask: np.ndarray | None = field(default=None, init=False, repr=False)
    _confidence: float | None = field(default=None, init=False, repr=False)
    _confidence_map: np.ndarray | None = field(default=None, init=False, repr=False)

    @classmethod
    def empty(cls, name: str, image_shape: tuple[int, int, int]) -> OrganResult:
        zero = (slice(0, 0),) * 3
        return cls(name, image_shape, zero, np.zeros((0, 0, 0), np.float32))

    @property
    def mask(self) -> np.ndarray:
        """Boolean crop: probability above 0.5."""
        if self._mask is None:
            self._mask = self.logits > 0
        return self._mask

    @property
    def confidence(self) -> float:
        """Organ-level score (0..1); computed on first use, so the mask does not wait for it."""
        if self._confidence is None:
            self._confidence = float(self.confidence_fn()) if self.confidence_fn is not None else 0.0
        return self._confidence

    @property
    def probability(self) -> np.ndarray:
        """Float32 crop: foreground probability."""
        return (1.0 / (1.0 + np.exp(-self.logits))).astype(np.float32, copy=False)

    @property
    def confidence_map(self) -> np.ndarray:
        """Float32 crop: per-voxel agreement of decoder runs with perturbed clicks (0..1).

        Pasted onto the input grid on first use (the mask does not wait for it).
        """
        if self._confidence_map is None:
            if self.confidence_map_fn is None:
                self._confidence_map = np.ones(self.logits.shape, np.float32)
            else:
                self._confidence_map = self.confidence_map_fn()
        return self._confidence_map

    @property
    def voxel_count(self) -> int:
        return int(np.count_nonzero(self.mask))

    def volume_ml(self, spacing: np.ndarray) -> float:
        """Volume of the mask in millilitres for voxel ``spacing`` in mm."""
        return self.voxel_count * float(np.prod(spacing)) / 1000.0

    def _full(self, crop: np.ndarray, fill: float | bool, dtype: type) -> np.ndarray:
        out = np.full(self.image_shape, fill, dtype=dtype)
        if crop.size:
            out[self.bbox] = crop
        return out

    def full_mask(self) -> np.ndarray:
        """Boolean mask of the whole input grid."""
        return self._full(self.mask, False, bool)

    def full_probability(self) -> np.ndarray:
        """Float32 probability of the whole input grid."""
        return self._full(self.probability, 0.0, np.float32)

    def full_confidence_map(self) -> np.ndarray:
        """Float32 voxel confidence of the whole input grid (1 where nothing was predicted)."""
        return self._full(self.confidence_map, 1.0, np.float32)
