"""A simulated user who clicks on a 3D organ, for reproducible interactive-segmentation benchmarks.

How the clicks are chosen (the common protocol of interactive 3D benchmarks, made deterministic):

* **First click** — always positive, near the organ's "centre": the Euclidean distance from every organ voxel
  to the organ boundary is computed in millimetres (so anisotropic spacing is respected), and the click is
  drawn uniformly among the voxels whose distance is at least ``interior_fraction`` (default 0.9) of the
  maximum. This keeps the click well inside the organ, like a user aiming at the middle of it, while still
  varying with the seed. ``interior_fraction=1.0`` gives the single most interior voxel (ties drawn by seed);
  lower values spread the clicks wider. Taking the distance maximum rather than the centre of mass keeps the
  click inside curved or multi-part organs, where the centre of mass may fall outside.
* **Later clicks** — a correction of the largest error. False negatives (organ missed) and false positives
  (background included) are split into connected components (26-connectivity) separately; the larger of the
  largest false-negative component and the largest false-positive component is corrected (a tie goes to the
  false negative). The click lands on that component's most interior voxel (maximum of the Euclidean
  distance transform in mm, ties drawn by seed), and is positive for a false negative, negative for a false
  positive. Compared with a click drawn anywhere in the error, this fixes big mistakes first and never
  clicks on a one-voxel sliver of the boundary, so the curves measure the model, not the luck of the draw.

Everything is computed inside the bounding box of ``gt ∪ pred`` (plus a one-voxel margin), so a small organ
in a 512x512x300 volume costs milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from pesf.errors import PesfError
from pesf.eval.metrics import Box, as_spacing, bounding_box

__all__ = ["ClickSimulator", "box_offset", "deep_voxel"]

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def _interior_distance(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in mm from each voxel of ``mask`` to the nearest voxel outside it (the array border counts)."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    return ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]


def box_offset(box: Box) -> np.ndarray:
    """Index of the first voxel of a bounding box (slices), int64 ``(3,)``."""
    return np.array([s.start for s in box], dtype=np.int64)


def deep_voxel(
    mask: np.ndarray, spacing: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray | None:
    """A voxel drawn among those of ``mask`` at least ``fraction`` of its largest distance (mm) to its
    boundary, int64 ``(3,)``; ``None`` when ``mask`` is empty."""
    box = bounding_box(mask)
    if box is None:
        return None
    dist = _interior_distance(mask[box], spacing)
    threshold = dist.max() * fraction
    # Exact equality at fraction 1.0 keeps only the maximum; the tiny slack absorbs float rounding.
    candidates = np.argwhere(dist >= threshold * (1.0 - 1e-9))
    return (candidates[rng.integers(len(candidates))] + box_offset(box)).astype(np.int64)


class ClickSimulator:
    """Chooses clicks from the ground truth and the current prediction; deterministic for a seed.

    Args:
        seed: seeds the ``numpy`` generator that breaks ties and draws the first click. The same seed and the
            same sequence of calls give the same clicks.
        interior_fraction: the first click is drawn among organ voxels at least this fraction of the maximum
            distance to the boundary, in ``(0, 1]``.
    """

    def __init__(self, seed: int, interior_fraction: float = 0.9) -> None:
        if not 0.0 < interior_fraction <= 1.0:
            raise ValueError(f"interior_fraction must be in (0, 1], got {interior_fraction}")
        self.seed = int(seed)
        self.interior_fraction = float(interior_fraction)
        self._rng = np.random.default_rng(self.seed)

    def first_click(
        self, gt: np.ndarray, spacing: Sequence[float] | np.ndarray = (1.0, 1.0, 1.0)
    ) -> tuple[np.ndarray, bool]:
        """The first, positive click: a voxel deep inside the organ.

        Args:
            gt: organ mask ``(I, J, K)``.
            spacing: voxel size in mm along i, j, k.

        Returns:
            ``(ijk, True)`` with ``ijk`` an int64 array ``(3,)`` of a voxel inside ``gt``.

        Raises:
            PesfError: when ``gt`` is empty.
        """
        ijk = deep_voxel(self._check(gt), as_spacing(spacing), self.interior_fraction, self._rng)
        if ijk is None:
            raise PesfError("cannot simulate a click on an empty organ mask (the label has no voxel of it)")
        return ijk, True

    def next_click(
        self,
        gt: np.ndarray,
        pred: np.ndarray,
        spacing: Sequence[float] | np.ndarray = (1.0, 1.0, 1.0),
    ) -> tuple[np.ndarray, bool] | None:
        """A corrective click at the most interior voxel of the largest error region.

        Args:
            gt: organ mask ``(I, J, K)``.
            pred: current prediction, same shape.
            spacing: voxel size in mm along i, j, k.

        Returns:
            ``(ijk, positive)`` — positive when the voxel is a false negative — or ``None`` when ``pred``
            equals ``gt``.

        Raises:
            PesfError: when ``gt`` is empty.
        """
        gt = self._check(gt)
        pred = self._check(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"gt {gt.shape} and prediction {pred.shape} differ in shape")
        sp = as_spacing(spacing)
        box = bounding_box(gt, pred, margin=1)
        if box is None or not gt[box].any():
            raise PesfError("cannot simulate a click on an empty organ mask (the label has no voxel of it)")
        g, p = gt[box], pred[box]
        fn = g & ~p
        fp = p & ~g
        fn_region = self._largest_component(fn)
        fp_region = self._largest_component(fp)
        if fn_region is None and fp_region is None:
            return None
        fn_size = 0 if fn_region is None else int(fn_region[0].sum())
        fp_size = 0 if fp_region is None else int(fp_region[0].sum())
        positive = fn_size >= fp_size
        region, region_box = fn_region if positive else fp_region  # type: ignore[misc]
        dist = _interior_distance(region, sp)
        peaks = np.argwhere(dist >= dist.max() * (1.0 - 1e-9))
        ijk = peaks[self._rng.integers(len(peaks))] + box_offset(region_box) + box_offset(box)
        return ijk.astype(np.int64), bool(positive)

    def _largest_component(self, error: np.ndarray) -> tuple[np.ndarray, Box] | None:
        """The largest 26-connected component of ``error``, cropped to its own box, or ``None`` if empty."""
        labels, n = ndimage.label(error, structure=_STRUCTURE_26)
        if n == 0:
            return None
        sizes = np.bincount(labels.ravel())[1:]
        largest = np.flatnonzero(sizes == sizes.max()) + 1
        chosen = int(largest[self._rng.integers(len(largest))]) if len(largest) > 1 else int(largest[0])
        box = ndimage.find_objects(labels, max_label=chosen)[chosen - 1]
        return labels[box] == chosen, box

    @staticmethod
    def _check(mask: np.ndarray) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.ndim != 3:
            raise ValueError(f"expected a 3D mask, got shape {mask.shape}")
        return mask if mask.dtype == bool else mask.astype(bool)
