"""The engine's one volume type: voxels plus geometry.

Conventions (used everywhere in :mod:`pesf`; conversions happen only at the edges):

* ``Volume.array`` is indexed ``[i, j, k]``: the first axis is the fastest-varying axis of the file
  (columns, "x"), the last is the slice axis. This is the order of NIfTI/nibabel, MONAI and torchio, and the
  transpose of ``SimpleITK.GetArrayFromImage`` (which returns ``[k, j, i]``).
* Physical points are in millimetres in **LPS** (the ITK/DICOM patient frame). RAS points (Slicer, NIfTI
  viewers) are converted with :func:`ras_to_lps` / :func:`lps_to_ras` (negate x and y).
* ``direction`` is a 3x3 matrix whose **columns** are the unit directions of the i, j, k axes in LPS, so
  ``lps = origin + direction @ (spacing * ijk)``.
* Voxel index ``(i, j, k)`` refers to the voxel centre.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Volume", "ras_to_lps", "lps_to_ras"]

_LPS_RAS = np.array([-1.0, -1.0, 1.0])


def ras_to_lps(points: np.ndarray) -> np.ndarray:
    """Convert points ``(..., 3)`` from RAS to LPS millimetres."""
    return np.asarray(points, dtype=np.float64) * _LPS_RAS


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """Convert points ``(..., 3)`` from LPS to RAS millimetres."""
    return np.asarray(points, dtype=np.float64) * _LPS_RAS


@dataclass
class Volume:
    """A 3D image or label map with its geometry.

    Attributes:
        array: voxels, shape ``(I, J, K)``, indexed ``[i, j, k]``.
        origin: LPS position (mm) of the centre of voxel ``(0, 0, 0)``, shape ``(3,)``.
        spacing: voxel size (mm) along i, j, k, shape ``(3,)``.
        direction: ``(3, 3)``; column ``a`` is the LPS unit vector of axis ``a``.
    """

    array: np.ndarray
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise ValueError(f"a volume must be 3D, got an array of shape {self.array.shape}")
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if np.any(self.spacing <= 0):
            raise ValueError(f"spacing must be positive, got {self.spacing.tolist()}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def ijk_to_lps(self) -> np.ndarray:
        """The 4x4 affine mapping homogeneous ``(i, j, k, 1)`` to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction * self.spacing[None, :]
        m[:3, 3] = self.origin
        return m

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """The 4x4 affine mapping ``(i, j, k, 1)`` to RAS millimetres (the NIfTI/Slicer convention)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.ijk_to_lps

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Voxel indices ``(..., 3)`` (may be fractional) to LPS points ``(..., 3)``."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ (self.direction * self.spacing[None, :]).T + self.origin

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        """LPS points ``(..., 3)`` to continuous voxel indices ``(..., 3)``."""
        lps = np.asarray(lps, dtype=np.float64)
        inv = np.linalg.inv(self.direction * self.spacing[None, :])
        return (lps - self.origin) @ inv.T

    def same_geometry(self, other: Volume, tol: float = 1e-4) -> bool:
        """True when ``other`` has the same shape, origin, spacing and direction (within ``tol``)."""
        return (
            self.shape == other.shape
            and np.allclose(self.origin, other.origin, atol=tol * max(1.0, float(np.abs(self.origin).max())))
            and np.allclose(self.spacing, other.spacing, rtol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def with_array(self, array: np.ndarray) -> Volume:
        """A volume on the same grid holding ``array`` (same shape required)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the grid {self.array.shape}")
        return Volume(array, self.origin.copy(), self.spacing.copy(), self.direction.copy())
