"""A fast simulated user for training: SAM-Med3D-style clicks drawn from the error, in torch.

The benchmark user (:class:`pesf.eval.clicks.ClickSimulator`) labels connected components and runs exact
distance transforms so that every click lands on the middle of the largest error; on a noisy prediction over
a whole 128^3 region that costs close to half a second per click, more than the model's own forward and
backward passes. Training does not need that precision: SAM-Med3D trains with clicks drawn at random in the
false negatives or false positives, whichever is larger. :class:`TrainingClicker` does that, away from the
error's border (a voxel whose six neighbours are all error), and draws its
first click among the organ's most interior voxels, measured on a half-resolution grid for large organs.
It has the benchmark user's interface, so the trainer takes either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pesf.errors import PesfError
from pesf.eval.clicks import ClickSimulator, box_offset
from pesf.eval.metrics import as_spacing, bounding_box

__all__ = ["TrainingClicker"]

_FIRST_CLICK_FULL_RES_VOXELS = 48**3  # organs whose box is larger are measured at half resolution


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` eroded ``radius`` times by the 6-neighbourhood (the array border counts as outside)."""
    out = mask.copy()
    for _ in range(radius):
        eroded = out.copy()
        for axis in range(3):
            n = out.shape[axis]
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
            eroded[tuple(lo)] &= out[tuple(hi)]
            eroded[tuple(hi)] &= out[tuple(lo)]
            edge = [slice(None)] * 3
            edge[axis] = [0, n - 1]
            eroded[tuple(edge)] = False
        out = eroded
    return out


class TrainingClicker:
    """Training clicks: deep first click, then random clicks in the larger error class.

    Args:
        seed: seeds the generator; the same seed and calls give the same clicks.
        interior_fraction: the first click is drawn among organ voxels at least this fraction of the
            maximum distance to the boundary (as the benchmark user), in ``(0, 1]``.
        erosion: error voxels this many voxels from the error's border are preferred for corrective clicks.
    """

    def __init__(self, seed: int, interior_fraction: float = 0.9, erosion: int = 1) -> None:
        self._exact = ClickSimulator(seed, interior_fraction, border_is_boundary=True)
        self._rng = np.random.default_rng([int(seed), 1])
        self.erosion = int(erosion)

    def first_click(
        self, gt: np.ndarray, spacing: Sequence[float] | np.ndarray = (1.0, 1.0, 1.0)
    ) -> tuple[np.ndarray, bool]:
        """The first, positive click deep inside the organ (``(ijk, True)``, int64 ``(3,)``)."""
        gt = np.asarray(gt, dtype=bool)
        box = bounding_box(gt)
        if box is None:
            raise PesfError("cannot simulate a click on an empty organ mask (the label has no voxel of it)")
        if gt[box].size <= _FIRST_CLICK_FULL_RES_VOXELS:
            return self._exact.first_click(gt, spacing)
        # half resolution: a coarse voxel is organ when all its fine voxels are, so the click stays inside
        sub = gt[box]
        pad = [(0, s % 2) for s in sub.shape]
        sub = np.pad(sub, pad)
        coarse = sub.reshape(sub.shape[0] // 2, 2, sub.shape[1] // 2, 2, sub.shape[2] // 2, 2).all(
            axis=(1, 3, 5)
        )
        if not coarse.any():
            return self._exact.first_click(gt, spacing)
        ijk, _ = self._exact.first_click(coarse, as_spacing(spacing) * 2.0)
        fine = 2 * ijk + self._rng.integers(0, 2, size=3)
        return (fine + box_offset(box)).astype(np.int64), True

    def next_click(
        self,
        gt: np.ndarray,
        pred: np.ndarray,
        spacing: Sequence[float] | np.ndarray = (1.0, 1.0, 1.0),
    ) -> tuple[np.ndarray, bool] | None:
        """A corrective click in the larger of the false negatives and false positives, or ``None`` when
        the prediction is exact."""
        g, p = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
        if g.shape != p.shape:
            raise ValueError(f"gt {g.shape} and prediction {p.shape} differ in shape")
        fn, fp = g & ~p, p & ~g
        n_fn, n_fp = int(np.count_nonzero(fn)), int(np.count_nonzero(fp))
        if n_fn == 0 and n_fp == 0:
            return None
        positive = n_fn >= n_fp
        error = fn if positive else fp
        inner = _erode(error, self.erosion) if self.erosion > 0 else error
        candidates = inner if inner.any() else error
        flat = np.flatnonzero(candidates)
        index = int(flat[self._rng.integers(flat.size)])
        return np.array(np.unravel_index(index, error.shape), dtype=np.int64), bool(positive)
