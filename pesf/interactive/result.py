"""What a click returns: one organ's mask, probabilities and confidence on the input grid."""

from __future__ import annotations

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
        probability: float32 crop, foreground probability.
        confidence_map: float32 crop, per-voxel agreement of decoder runs with perturbed clicks (0..1).
        confidence: organ-level score (predicted Dice from the confidence module when the model has one,
            else the mean agreement of perturbed runs with the main mask).
        confidence_source: ``"confidence-module"`` or ``"perturbation"``.
        n_clicks: clicks given for this organ so far.
        n_regions: regions of interest that make up the organ.
        timings: seconds per step of the last click (``preprocess_s``, ``encode_s``, ``decode_s``,
            ``paste_s``, ``total_s``).
    """

    name: str
    image_shape: tuple[int, int, int]
    bbox: tuple[slice, slice, slice]
    probability: np.ndarray
    confidence_map: np.ndarray
    confidence: float = 0.0
    confidence_source: str = "perturbation"
    n_clicks: int = 0
    n_regions: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def empty(cls, name: str, image_shape: tuple[int, int, int]) -> OrganResult:
        zero = (slice(0, 0),) * 3
        return cls(name, image_shape, zero, np.zeros((0, 0, 0), np.float32), np.ones((0, 0, 0), np.float32))

    @property
    def mask(self) -> np.ndarray:
        """Boolean crop: probability above 0.5."""
        return self.probability > 0.5

    @property
    def voxel_count(self) -> int:
        return int(np.count_nonzero(self.mask))

    def volume_ml(self, spacing: np.ndarray) -> float:
        """Volume of the mask in millilitres for voxel ``spacing`` in mm."""
        return self.voxel_count * float(np.prod(spacing)) / 1000.0

    def _full(self, crop: np.ndarray, fill: float | bool, dtype: type) -> np.ndarray:
        out = np.full(self.image_shape, fill, dtype=dtype)
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
