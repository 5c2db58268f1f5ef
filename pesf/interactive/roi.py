"""Regions of interest: 128^3 cubes at the model's spacing, in canonical (RAS) orientation.

A region is an axis-aligned cube in patient space. Its voxel ``(a, b, c)`` lies at
``lps = origin + ROI_DIRECTION @ (spacing * (a, b, c))`` where ``ROI_DIRECTION`` makes the region's axes
point to patient Right, Anterior and Superior, as SAM-Med3D's canonical (RAS) preprocessing does. A click
at LPS point ``p`` yields the region whose voxel ``(64, 64, 64)`` is ``p``.

The region tensor is the input image resampled onto that cube (outside the image: 0, as SAM-Med3D pads),
then z-normalised with the mean and standard deviation of its voxels above 0, as SAM-Med3D does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pesf.interactive.resample import inside_mask, resample_affine, scan_border
from pesf.io.volume import Volume

__all__ = ["ROI_DIRECTION", "Region", "make_region", "normalize_intensity"]

ROI_DIRECTION = np.diag([-1.0, -1.0, 1.0])  # columns: R, A, S expressed in LPS


@dataclass
class Region:
    """One region of interest and what is cached for it.

    Attributes:
        origin: LPS position (mm) of region voxel ``(0, 0, 0)``.
        size: voxels per side (128 for SAM-Med3D).
        spacing: mm per voxel (1.5 for SAM-Med3D).
        image: normalised region image, shape ``(1, 1, size, size, size)``.
        embedding: image-encoder output for ``image`` (filled by the session), e.g. ``(1, 384, 8, 8, 8)``.
        inside: boolean ``(size, size, size)`` tensor, True where the region lies inside the input image.
    """

    origin: np.ndarray
    size: int
    spacing: float
    image: torch.Tensor
    inside: torch.Tensor
    embedding: torch.Tensor | None = None
    key: int = field(default=0)

    @property
    def to_lps(self) -> np.ndarray:
        """4x4 affine from region index to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = ROI_DIRECTION * self.spacing
        m[:3, 3] = self.origin
        return m

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        """LPS points ``(..., 3)`` to continuous region indices ``(..., 3)``."""
        return (np.asarray(lps, dtype=np.float64) - self.origin) @ (ROI_DIRECTION / self.spacing)

    def index_to_lps(self, idx: np.ndarray) -> np.ndarray:
        """Region indices ``(..., 3)`` to LPS points ``(..., 3)``."""
        return np.asarray(idx, dtype=np.float64) * self.spacing @ ROI_DIRECTION.T + self.origin

    def contains(self, lps: np.ndarray, margin: float = 0.0) -> bool:
        """True when ``lps`` lies at least ``margin`` voxels inside the region."""
        idx = self.lps_to_index(lps)
        return bool(np.all(idx >= margin) and np.all(idx <= self.size - 1 - margin))

    def image_to_region(self, image: Volume) -> tuple[np.ndarray, np.ndarray]:
        """``(m, t)`` such that image index = ``m @ region_index + t``."""
        a = np.linalg.inv(image.direction * image.spacing[None, :])
        m = a @ (ROI_DIRECTION * self.spacing)
        t = a @ (self.origin - image.origin)
        return m, t

    def region_to_image(self, image: Volume) -> tuple[np.ndarray, np.ndarray]:
        """``(m, t)`` such that region index = ``m @ image_index + t``."""
        m, t = self.image_to_region(image)
        mi = np.linalg.inv(m)
        return mi, -mi @ t


def normalize_intensity(x: torch.Tensor) -> torch.Tensor:
    """Z-normalise with the statistics of voxels above 0 (SAM-Med3D's ``ZNormalization(x > 0)``)."""
    fg = x[x > 0]
    if fg.numel() < 2:
        fg = x.reshape(-1)
    mean = fg.mean()
    std = fg.std()
    if not torch.isfinite(std) or float(std) < 1e-8:
        std = torch.ones((), dtype=x.dtype)
    return (x - mean) / std


def make_region(
    image: Volume,
    image_tensor: torch.Tensor,
    center_lps: np.ndarray,
    size: int = 128,
    spacing: float = 1.5,
    extrude: int | None = None,
) -> Region:
    """Cut the region centred on ``center_lps`` out of ``image``.

    Args:
        image: the input volume (geometry only is used).
        image_tensor: ``image.array`` as a float32 tensor, shape ``(I, J, K)``.
        center_lps: LPS point (mm) that becomes region voxel ``(size // 2,) * 3``.
        size: voxels per side.
        spacing: mm per voxel.
        extrude: an image axis (0-2) along which the region reads the edge slices on beyond the scan (a
            few-slice scan extruded, for a model trained so; see :class:`~pesf.train.augment.AugmentConfig`'s
            ``extrude_mm``), or ``None``. ``inside`` stays the scan's own extent.
    """
    center = np.asarray(center_lps, dtype=np.float64)
    origin = center - ROI_DIRECTION @ np.full(3, spacing * (size // 2))
    region = Region(origin=origin, size=size, spacing=spacing, image=torch.empty(0), inside=torch.empty(0))
    m, t = region.image_to_region(image)
    shape = (size, size, size)
    data = resample_affine(image_tensor, m, t, shape, fill=0.0, border=scan_border(extrude))
    inside = inside_mask(m, t, shape, image.shape)
    region.image = normalize_intensity(data)[None, None].contiguous()
    region.inside = inside
    return region
