"""A simulated user who clicks on a 3D organ, for reproducible interactive-segmentation benchmarks.

How the clicks are chosen (the common protocol of interactive 3D benchmarks, made deterministic):

* **First click** — always positive, near the organ's "centre": the Euclidean distance from every organ voxel
  to the organ boundary (the scan's border counts) is computed in millimetres (so anisotropic spacing is
  respected), and the click is drawn uniformly among the voxels whose distance is at least
  ``interior_fraction`` (default 0.9) of the maximum. On a scan of three 1 mm slices every voxel of the
  middle slice more than 2 mm from the section's edge lies 2 mm from "the boundary", and the click would
  land anywhere in the organ's section; so the voxels drawn from are narrowed to those also at least that
  fraction of the largest depth measured with the scan's border open (the organ taken to go on beyond it):
  on those three slices, the middle of the section on the middle slice. An organ cut by the scan's edge
  keeps its click away from that edge. This keeps the click well inside the organ, like a user aiming at
  the middle of it, while still varying with the seed. ``interior_fraction=1.0`` gives the single most
  interior voxel (ties drawn by seed); lower values spread the clicks wider. Taking the distance maximum
  rather than the centre of mass keeps the click inside curved or multi-part organs, where the centre of
  mass may fall outside.
* **Later clicks** — a correction of the largest error. False negatives (organ missed) and false positives
  (background included) are split into connected components (26-connectivity) separately; the larger of the
  largest false-negative component and the largest false-positive component is corrected (a tie goes to the
  false negative). The click lands on that component's most interior voxel (maximum of the Euclidean
  distance transform in mm; ties narrowed by the depth with the scan's border open, as for the first click,
  then drawn by seed), and is positive for a false negative, negative for a false positive. Compared with a
  click drawn anywhere in the error, this fixes big mistakes first and never clicks on a one-voxel sliver of
  the boundary, so the curves measure the model, not the luck of the draw.

Everything is computed inside the bounding box of ``gt ∪ pred`` (plus a one-voxel margin), so a small organ
in a 512x512x300 volume costs milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from pesf.errors import PesfError
from pesf.eval.metrics import Box, as_spacing, bounding_box

__all__ = [
    "ClickSimulator",
    "box_offset",
    "deep_voxel",
    "deepest_voxels",
    "faces_on_border",
    "interior_distance",
]

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def interior_distance(
    mask: np.ndarray, spacing: np.ndarray, open_faces: Sequence[tuple[bool, bool]] | None = None
) -> np.ndarray:
    """Distance in mm from each voxel of ``mask`` to the nearest voxel outside it.

    The array's border counts as outside, except on the faces ``open_faces`` names (per axis, before and
    after), beyond which the mask is taken to go on as its edge layer does: the faces on a scan's border.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1, mode="constant", constant_values=False)
    for axis, sides in enumerate(open_faces or ()):
        for pad, edge in ((0, 1), (-1, -2)):  # an open face's padding repeats the edge layer beside it
            if sides[pad]:
                dst = [slice(None)] * padded.ndim
                src = [slice(None)] * padded.ndim
                dst[axis], src[axis] = pad, edge
                padded[tuple(dst)] = padded[tuple(src)]
    return ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]


def faces_on_border(
    box: Box, shape: Sequence[int], offset: Sequence[int] | None = None
) -> list[tuple[bool, bool]]:
    """For each axis, whether the box (shifted by ``offset``) starts at the array's first and ends at its last
    index."""
    off = [0] * len(shape) if offset is None else [int(o) for o in offset]
    return [(s.start + o == 0, s.stop + o == n) for s, o, n in zip(box, off, shape, strict=True)]


def box_offset(box: Box) -> np.ndarray:
    """Index of the first voxel of a bounding box (slices), int64 ``(3,)``."""
    return np.array([s.start for s in box], dtype=np.int64)


def deep_voxel(
    mask: np.ndarray,
    spacing: np.ndarray,
    fraction: float,
    rng: np.random.Generator,
    border_is_boundary: bool = True,
) -> np.ndarray | None:
    """A voxel drawn among those of ``mask`` at least ``fraction`` of its largest distance (mm) to its
    boundary, int64 ``(3,)``; ``None`` when ``mask`` is empty. With ``border_is_boundary`` false (the mask
    is a whole scan's) they are narrowed by the depth with the scan's border open too (module description)."""
    box = bounding_box(mask)
    if box is None:
        return None
    faces = None if border_is_boundary else faces_on_border(box, mask.shape)
    candidates = np.argwhere(deepest_voxels(mask[box], spacing, fraction, faces))
    return (candidates[rng.integers(len(candidates))] + box_offset(box)).astype(np.int64)


def deepest_voxels(
    mask: np.ndarray, spacing: np.ndarray, fraction: float, open_faces: Sequence[tuple[bool, bool]] | None
) -> np.ndarray:
    """The voxels of ``mask`` at least ``fraction`` of its largest distance (mm) to its boundary, boolean.

    With ``open_faces`` (faces on the scan's border, beyond which the organ goes on) these voxels are
    narrowed to those also at least ``fraction`` of their largest depth with those faces open: on a scan of
    a few slices the depth is otherwise the distance to the scan's edge for almost the whole section, and
    the open depth finds the section's middle; an organ cut by the scan's edge keeps its distance from it.
    """
    # Exact equality at fraction 1.0 keeps only the maximum; the tiny slack absorbs float rounding.
    slack = 1.0 - 1e-9
    dist = interior_distance(mask, spacing)
    keep = dist >= dist.max() * fraction * slack
    if open_faces is not None and any(any(f) for f in open_faces):
        opened = interior_distance(mask, spacing, open_faces)
        keep &= opened >= opened[keep].max() * fraction * slack
    return keep


class ClickSimulator:
    """Chooses clicks from the ground truth and the current prediction; deterministic for a seed.

    Args:
        seed: seeds the ``numpy`` generator that breaks ties and draws the first click. The same seed and the
            same sequence of calls give the same clicks.
        interior_fraction: the first click is drawn among organ voxels at least this fraction of the maximum
            distance to the boundary, in ``(0, 1]``.
        border_is_boundary: True: the array's border is only a boundary (the array is a crop, as the
            training's regions are; their clicks have always been drawn so). False (the benchmark user, on
            whole scans): the clicks are narrowed by the depth with the scan's border open as well (module
            description), so that on a scan of a few slices they land in the middle of the organ's section.
    """

    def __init__(self, seed: int, interior_fraction: float = 0.9, border_is_boundary: bool = False) -> None:
        if not 0.0 < interior_fraction <= 1.0:
            raise ValueError(f"interior_fraction must be in (0, 1], got {interior_fraction}")
        self.seed = int(seed)
        self.interior_fraction = float(interior_fraction)
        self.border_is_boundary = bool(border_is_boundary)
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
        ijk = deep_voxel(
            self._check(gt), as_spacing(spacing), self.interior_fraction, self._rng, self.border_is_boundary
        )
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
        faces = None if self.border_is_boundary else faces_on_border(region_box, gt.shape, box_offset(box))
        peaks = np.argwhere(deepest_voxels(region, sp, 1.0, faces))
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
