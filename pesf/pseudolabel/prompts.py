"""Automatic prompts: clicks for one organ, chosen from a mask, from a confident prediction, or from a file.

Every function returns the clicks as a list of ``(ijk, positive)`` pairs, ``ijk`` a float64 array ``(3,)`` of
voxel indices of the image grid the mask lives on, in the order they should be given to
:meth:`~pesf.interactive.InteractiveSession.add_click` (positive clicks first).

How clicks are placed on a mask (:func:`prompts_from_mask`):

* Only the largest connected component (26-connectivity) is prompted; stray islands of another tool's output
  are not worth a click.
* **Positive clicks** sit at the most interior voxels: the maximum of the Euclidean distance to the boundary
  in millimetres (so anisotropic spacing is respected); of several such voxels (a flat organ, or one on a
  scan of a few slices, where the scan's edge bounds the depth) those deepest with the scan's border open
  are kept, as the benchmark user narrows them (:mod:`pesf.eval.clicks`), and of those the one nearest
  their centre is taken, not a corner of the organ's section. For several clicks the component is cut
  along its longest axis (the first principal axis of its voxels in mm) into slabs holding equal numbers of
  voxels, and each slab contributes its most interior voxel (the cuts counting as boundary, so clicks do
  not crowd at a cut); the most interior of these clicks comes first, as it opens the organ's first region.
  A maximum of the distance transform is a voxel of the organ, so clicks stay inside curved (C-shaped) or
  thin organs, where the centre of mass may fall outside.
* **Negative clicks** sit in a thin shell just outside the component (``negative_margin_mm`` from its
  boundary), spread by farthest-point sampling starting at the end of the longest axis, where leakage into
  neighbours is most likely; never on another part of the mask.

Typical use::

    clicks = prompts_from_mask(label.array == 5, label.spacing, n_positive=None)
    for ijk, positive in clicks:
        result = session.add_click("liver", ijk, positive)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from pesf.eval.clicks import box_offset, deepest_voxels, faces_on_border, interior_distance
from pesf.io.prompts import OrganPrompt

__all__ = [
    "Click",
    "auto_positive_count",
    "prompts_from_confident_region",
    "prompts_from_mask",
    "prompts_from_points",
]

Click = tuple[np.ndarray, bool]
"""One click: voxel index ``ijk`` (float64, shape ``(3,)``) and ``True`` for a positive click."""

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)

#: Length (mm, along the organ's longest axis) covered by one positive click when the count is automatic.
AUTO_MM_PER_CLICK = 120.0
#: Upper bound of the automatic positive click count.
AUTO_MAX_POSITIVE = 4


def _spacing(spacing: Sequence[float] | np.ndarray) -> np.ndarray:
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or np.any(sp <= 0):
        raise ValueError(f"spacing must be three positive numbers, got {spacing!r}")
    return sp


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {mask.shape}")
    return mask if mask.dtype == bool else mask != 0


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice, slice]] | None:
    """The largest 26-connected component cropped to its bounding box, and that box; ``None`` if empty."""
    labels, n = ndimage.label(mask, structure=_STRUCTURE_26)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    chosen = int(np.argmax(sizes)) + 1  # ties: the first in index order, so the choice is deterministic
    box = ndimage.find_objects(labels, max_label=chosen)[chosen - 1]
    return labels[box] == chosen, box


def _centre_of_deepest(
    mask: np.ndarray, spacing: np.ndarray, open_faces: Sequence[tuple[bool, bool]] | None
) -> np.ndarray:
    """The most interior voxel of ``mask`` (float64 indices): of the voxels at its largest distance to the
    boundary, narrowed by the depth with the scan's border open (:func:`pesf.eval.clicks.deepest_voxels`),
    the one nearest their centre (the first in index order on a tie)."""
    coords = np.argwhere(deepest_voxels(mask, spacing, 1.0, open_faces))
    offsets = (coords - coords.mean(axis=0)) * spacing
    return coords[int(np.argmin((offsets**2).sum(axis=1)))].astype(np.float64)


def _principal_axis(coords_mm: np.ndarray) -> np.ndarray:
    """Unit vector of the largest spread of the points ``(N, 3)`` (the first principal axis)."""
    if len(coords_mm) < 2:
        return np.array([1.0, 0.0, 0.0])
    centred = coords_mm - coords_mm.mean(axis=0)
    cov = centred.T @ centred / len(coords_mm)
    _, vectors = np.linalg.eigh(cov)
    axis = vectors[:, -1]
    # a fixed sign, so the slab order (and with it the click order) does not depend on the solver
    return axis if axis[int(np.argmax(np.abs(axis)))] > 0 else -axis


def auto_positive_count(mask: np.ndarray, spacing: Sequence[float] | np.ndarray) -> int:
    """How many positive clicks :func:`prompts_from_mask` gives with ``n_positive=None``.

    One click per :data:`AUTO_MM_PER_CLICK` mm of the largest component's length along its longest axis,
    at least 1 and at most :data:`AUTO_MAX_POSITIVE`; 0 for an empty mask.
    """
    sp = _spacing(spacing)
    found = _largest_component(_as_mask(mask))
    if found is None:
        return 0
    coords = np.argwhere(found[0]) * sp
    length = float(np.ptp(coords @ _principal_axis(coords))) + float(sp.min())
    return int(min(AUTO_MAX_POSITIVE, max(1, math.ceil(length / AUTO_MM_PER_CLICK))))


def _positive_clicks(
    component: np.ndarray, sp: np.ndarray, n: int, open_faces: Sequence[tuple[bool, bool]] | None = None
) -> list[np.ndarray]:
    """The centre of each of ``n`` equal-count slabs along the longest axis (component crop indices).

    A slab's centre is its most interior voxel, the slab cuts counting as boundary, so neighbouring clicks
    never crowd at a shared cut. Returned most interior (in the whole organ) first. ``open_faces``: the
    faces of the crop on the scan's border (see :func:`_centre_of_deepest`).
    """
    if n <= 1:
        return [_centre_of_deepest(component, sp, open_faces)]
    dist = interior_distance(component, sp)
    coords = np.argwhere(component)
    n = min(n, len(coords))
    projection = (coords * sp) @ _principal_axis(coords * sp)
    order = np.argsort(projection, kind="stable")
    slab = np.zeros(component.shape, np.int32)
    for s, part in enumerate(np.array_split(order, n), start=1):
        slab[tuple(coords[part].T)] = s
    clicks = []
    for s in range(1, n + 1):
        clicks.append(_centre_of_deepest(slab == s, sp, open_faces))
    # the most interior opens the organ's first region (of equally deep ones, the deepest with the border open)
    has_open = open_faces is not None and any(any(f) for f in open_faces)
    opened = interior_distance(component, sp, open_faces) if has_open else dist
    clicks.sort(key=lambda c: (-dist[tuple(c.astype(int))], -opened[tuple(c.astype(int))]))
    return clicks


def _negative_clicks(
    component: np.ndarray,
    box: tuple[slice, slice, slice],
    full_mask: np.ndarray,
    sp: np.ndarray,
    n: int,
    margin_mm: float,
    rng: np.random.Generator | None,
) -> list[np.ndarray]:
    """``n`` voxels (full-grid indices) in the shell ``margin_mm`` outside the component, spread apart.

    Voxels of ``full_mask`` (the organ's other components) are never chosen.
    """
    width = float(sp.max())  # the shell is one (coarsest) voxel thick
    pad = [int(math.ceil((margin_mm + 2.0 * width) / s)) + 1 for s in sp]
    lo = [max(0, b.start - p) for b, p in zip(box, pad, strict=True)]
    hi = [min(n_ax, b.stop + p) for b, n_ax, p in zip(box, full_mask.shape, pad, strict=True)]
    local = np.zeros([h - low for low, h in zip(lo, hi, strict=True)], dtype=bool)
    inner = tuple(slice(b.start - low, b.stop - low) for b, low in zip(box, lo, strict=True))
    local[inner] = component
    outside = ndimage.distance_transform_edt(~local, sampling=sp)
    elsewhere = full_mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]  # other components
    shell = (outside >= margin_mm) & (outside < margin_mm + width) & ~elsewhere  # margin..margin + 1 voxel
    if not shell.any():  # the organ fills its surroundings up to the image border: take any outside voxel
        shell = (outside > 0) & ~elsewhere
    candidates = np.argwhere(shell)
    if len(candidates) == 0:
        return []
    pts_mm = candidates * sp
    organ_mm = np.argwhere(local) * sp
    axis = _principal_axis(organ_mm)
    if rng is None:
        first = int(np.argmax(pts_mm @ axis))  # the end of the longest axis
    else:
        first = int(rng.integers(len(candidates)))
    chosen = [first]
    nearest = np.linalg.norm(pts_mm - pts_mm[first], axis=1)
    for _ in range(min(n, len(candidates)) - 1):  # farthest-point sampling
        nxt = int(np.argmax(nearest))
        if nearest[nxt] <= 0:
            break
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(pts_mm - pts_mm[nxt], axis=1))
    offset = np.array(lo, dtype=np.float64)
    return [candidates[i].astype(np.float64) + offset for i in chosen]


def prompts_from_mask(
    mask: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    n_positive: int | None = 1,
    n_negative: int = 0,
    rng: np.random.Generator | None = None,
    negative_margin_mm: float = 5.0,
) -> list[Click]:
    """Clicks that reproduce an organ given as a mask (another tool's label, an earlier prediction).

    Args:
        mask: organ mask ``(I, J, K)`` on the image grid (bool, or non-zero = organ).
        spacing: voxel size in mm along i, j, k.
        n_positive: positive clicks; ``None`` chooses by size (:func:`auto_positive_count`). Fewer are given
            when the component has fewer voxels.
        n_negative: negative clicks just outside the organ.
        rng: draws the first negative click (the others are spread from it); ``None`` starts at the end of
            the organ's longest axis, so the result is deterministic. Positive clicks never depend on it.
        negative_margin_mm: distance of the negative clicks from the organ boundary in mm.

    Returns:
        ``[(ijk, positive), ...]``: positive clicks first (the most interior one first), then negative
        ones; empty when ``mask`` is empty.
    """
    sp = _spacing(spacing)
    mask = _as_mask(mask)
    found = _largest_component(mask)
    if found is None:
        return []
    component, box = found
    offset = box_offset(box).astype(np.float64)
    if n_positive is None:
        n_positive = auto_positive_count(component, sp)
    faces = faces_on_border(box, mask.shape)
    clicks: list[Click] = [
        (p + offset, True) for p in _positive_clicks(component, sp, max(1, n_positive), faces)
    ]
    if n_negative > 0:
        negatives = _negative_clicks(component, box, mask, sp, n_negative, negative_margin_mm, rng)
        clicks += [(p, False) for p in negatives]
    return clicks


def prompts_from_confident_region(
    prediction: np.ndarray,
    confidence_map: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    threshold: float = 0.9,
    n_positive: int | None = 1,
    n_negative: int = 0,
    rng: np.random.Generator | None = None,
    negative_margin_mm: float = 5.0,
) -> list[Click]:
    """Clicks from the confident part of an earlier prediction (SAM-Match's prompt generation).

    The voxels that the earlier model predicted (probability above 0.5, or mask set) *and* whose voxel
    confidence reaches ``threshold`` become the organ mask of :func:`prompts_from_mask`; the promptable model
    then segments the whole organ from these clicks. Negative clicks are placed outside the whole
    prediction, not only outside its confident part.

    Args:
        prediction: probability (float, ``(I, J, K)``) or mask (bool) of the earlier prediction.
        confidence_map: voxel confidence in 0..1, same shape (e.g.
            :meth:`~pesf.interactive.OrganResult.full_confidence_map`).
        spacing: voxel size in mm.
        threshold: minimum voxel confidence.
        n_positive, n_negative, rng, negative_margin_mm: as in :func:`prompts_from_mask`.

    Returns:
        ``[(ijk, positive), ...]``; empty when no predicted voxel is confident enough.
    """
    prediction = np.asarray(prediction)
    confidence_map = np.asarray(confidence_map)
    if prediction.shape != confidence_map.shape:
        raise ValueError(f"prediction {prediction.shape} and confidence map {confidence_map.shape} differ")
    predicted = prediction if prediction.dtype == bool else prediction > 0.5
    confident = predicted & (confidence_map >= threshold)
    clicks = prompts_from_mask(confident, spacing, n_positive, 0)
    if clicks and n_negative > 0:
        negatives = prompts_from_mask(predicted, spacing, 1, n_negative, rng, negative_margin_mm)
        clicks += [c for c in negatives if not c[1]]
    return clicks


def prompts_from_points(organ_prompt: OrganPrompt) -> list[Click]:
    """The clicks a user gave for one organ (a prompt file, see :func:`pesf.io.load_prompts`), in order."""
    return [
        (np.asarray(p.position_ijk, dtype=np.float64).copy(), bool(p.positive)) for p in organ_prompt.points
    ]
