"""Clicks that always count: the model's mask refined by a geodesic grow from seeds.

A promptable model may answer a click by barely changing its mask (a corrective click's voxel can even stay
wrong), and on scans unlike its training data it tends to return a confident core of the organ and stop
short of the rest. From an organ's first click on (``from_click``), the session therefore refines the
model's mask as *Grow from seeds* would, with the model's answer as the seeds:

* **organ seeds** — the mask deeper inside its boundary than ``inner_mm``, or than ``inner_fraction`` of the
  mask's greatest depth where that is less (so a vessel keeps its centre line), the fraction growing by
  ``inner_fraction_step`` with every click after the first up to ``inner_fraction_max`` (the more the user
  has to correct, the less of the model's interior is taken as given); and a ball of ``click_mm`` around
  every positive click;
* **background seeds** — outside the mask, where the model is sure (foreground logit below
  ``-background_logit``) and more than ``background_gap_mm`` away, or wherever more than ``outer_mm`` away;
  the faces of the working box that lie inside the image; and a ball around every negative click;
* around every click after the first, the seeds of the other label within ``free_mm`` are lifted, so a
  positive click can claim tissue the model left out and a negative click can give back tissue it took; a
  positive one also lifts the background seeds in the tissue it lies in, as far as its ball reaches at a
  path cost below ``lift_cost`` (the grow's own cost, below) within ``lift_mm`` (:func:`tissue_reach`), so
  it can claim a part of the organ that the model was sure of wrongly beyond ``free_mm`` where no edge lies
  between; below ``lift_cost_missed`` instead where the model's mask, prompted with the click, still leaves
  it out (its sure background is then the less to be trusted: on structures it never learned);
* every other voxel takes the label of the seed it is best connected to: the one with the shortest path
  when a step between neighbours costs the intensity difference (the image's scale divided out), the
  shortest-path form of Slicer's grow-cut (``vtkImageGrowCutSegment``).

Where the model is unsure beyond its mask (logits between ``-background_logit`` and 0), the image decides how
far the organ goes; where it is sure, the band left to the image is ``background_gap_mm`` wide.

The model can also be sure and wrong: on a modality or a structure it never learned it may answer a first
click with a core of the organ and be sure of the background in the rest (the sample MR's right kidney: Dice
0.47 after one click, Grow from seeds 0.86). At an organ's first click, the session therefore also grows the
organ from the click alone, as *Grow from seeds* would (:func:`click_grow`: a ball of ``click_mm`` around the
click seeds the organ, the faces inside the image of a box ``candidate_margin_mm`` wider than the click seed
the background), and shows that grow instead (:func:`grow_instead`) where it is larger than the refined mask
and the image bounds it more sharply: the mean intensity step across its boundary
(:func:`boundary_contrast`) more than ``candidate_contrast`` times the refined mask's in the same box. An
organ whose first click took it is checked the same way at every later click, its grow then from all its
clicks (negative ones seed the background; ``candidate_later``: ``"check"``). Both conditions are needed: a
grow that stops in a bone's bright cortex is sharply bounded but small, and the refined mask of an organ the
model knows is larger. ``candidate_contrast`` 1.1 and the size condition were fixed before the dev run (the
first-click features of both the dev structures and the evaluation table's had been looked at), and kept
by a rule written before: ``refine_dev.py --seeds 4`` not lower after 1, 3 and 5 clicks and higher by 0.003
after one of them, the proxy (below) not lower. ``refine_dev.py``: 0.6056 / 0.6713 / 0.7253 -> 0.6179 /
0.6802 / 0.7287 (the MR's colon 0.375 / 0.585 / 0.732 -> 0.622 / 0.809 / 0.818, its pancreas +0.12 after one
click; the left iliac artery -0.03 after one and three clicks, the MR's aorta -0.02 after five); the proxy
0.406 / 0.582 / 0.664 -> 0.407 / 0.593 / 0.670. Not kept by the same rule: the check at every click of every
organ (0.6179 / 0.6553 / 0.6787), at the first click only (0.6179 / 0.6707 / 0.7257), and an organ whose first
click took the grow keeping it at every later click unchecked (``"always"``: 0.6179 / 0.6784 / 0.7250).

On an MR image both grows (the refinement's and the clicks' own) run on the intensities smoothed by a Gaussian
of ``smooth_blocks_mr`` blocks (sigma; the session sets ``smooth_blocks`` to it when
:func:`~pesf.models.variants.guess_modality` calls the image an MR), a step's difference still divided by the
unsmoothed image's standard deviation: noise adds up along a path inside an organ, and smoothing lowers it
more than the edges between tissues. The contrast check reads the image unsmoothed. Kept by a rule written
before, on new simulated users (click seeds 4-7, since seeds 0-3 had been looked at): the nine MR structures of
``refine_dev.py`` not lower after 1, 3 and 5 clicks and higher by 0.01 after three or five: 0.574 / 0.690 /
0.742 -> 0.591 / 0.713 / 0.777 (seeds 0-3: 0.581 / 0.707 / 0.746 -> 0.592 / 0.727 / 0.766). CT images are
refined unsmoothed (``smooth_blocks`` 0): there 0.6 also raised ``refine_dev.py`` (seeds 4-7: 0.6145 / 0.6679 /
0.7161 -> 0.6248 / 0.6967 / 0.7387), but lowered the proxy's never-learned structures after five clicks
(0.672 -> 0.656).

The working box is the mask, the clicks and every voxel the model is unsure of (logit above
``-background_logit``; ``cover_unsure``), widened by ``margin_mm``. Its faces inside the image are background
seeds, so a box of the mask alone would cut a large organ off ``margin_mm`` beyond a core the model found:
on three 3 mm slices of the sample CT through the liver, the liver then reached Dice 0.41 / 0.38 / 0.70 after
1 / 3 / 5 clicks, and 0.49 / 0.73 / 0.87 with the box holding what the model is unsure of. Where nothing else
seeds the background (the model unsure of the whole image), all the box's faces are seeded. Grids finer than
``grid_mm`` (the model's own resolution is 1.5 mm) are refined on blocks of whole voxels about ``grid_mm``
wide (2 voxels at 0.6-0.85 mm, 3 at 0.42-0.56 mm), and a box of more than ``max_blocks`` blocks on coarser
ones, so a click's cost stays bounded. Only the blocks whose label changed are written back, so the model's
fine boundary stays wherever the refinement agrees with it.

The widths were chosen on structures that are not in the evaluation table (simulated clicks, seed 0): ten
structures of the sample CT (kidney_right, urinary_bladder, duodenum, iliopsoas_right, femur_right,
vertebrae_L1, gluteus_medius_left, adrenal_gland_right, colon, small_bowel), five thin ones of it
(portal vein, iliac artery and vein, spinal cord, a rib), nine structures of the sample MR that the table
does not score (gallbladder, pancreas, colon, vertebrae, aorta, inferior vena cava, autochthon, duodenum,
spinal cord) and the brain MR's edema. Mean Dice after clicks 1 / 3 / 5 over these 25 structures: model
alone 0.491 / 0.534 / 0.540; refined from the second click with fixed widths (inner 6 mm, outer 9 mm, the
previous default) 0.491 / 0.618 / 0.659; as described here but with a box of the mask alone (no
``cover_unsure``, ``max_blocks`` 64^3) 0.550 / 0.649 / 0.713 (Slicer's grow-cut 0.379 / 0.595 / 0.612).
``python Testing/Benchmarks/refine_dev.py`` reruns this comparison on the 24 of these structures that the
repository holds (all but the brain MR's edema): model alone 0.503 / 0.539 / 0.546, as described here
0.564 / 0.657 / 0.712 (0.563 / 0.653 / 0.719 with a box of the mask alone), grow-cut 0.383 / 0.585 / 0.604,
all with the CT weights (``default-7``; with the default model's MR weights on the MR, as sessions now
segment it, 0.614 / 0.685 / 0.741 with the clicks' own grow below, 0.609 / 0.674 / 0.743 before it with
``lift_cost_missed``, 0.609 / 0.672 / 0.740 before that, and
0.610 / 0.665 / 0.728 with the earlier ``default-mr-2``);
``--refine FIELD=VALUE`` adds a variant's row. ``cover_unsure`` and ``max_blocks`` were chosen on these and
on few-slice slabs of the sample CT (``Testing/Benchmarks/slab_dev.py``, 13 structures: 0.576 / 0.756 /
0.857 -> 0.583 / 0.816 / 0.880). With the larger boxes, 64^3 blocks were too coarse (the five thin
structures lost 0.07 after five clicks). 80^3 blocks refine a click of the worst case of
``Testing/Benchmarks/bench_session.py`` in 0.9 s instead of 1.5 s, but coarsen a large organ's box: the
sample CT's liver in ``pesf demo`` reached 0.847 after four clicks instead of 0.877 (``refine_dev.py``
0.001-0.003 lower).

``lift_cost`` was chosen on ``refine_dev.py --seeds 4`` and on the structures a model never learned: its ten
A structures segmented by a proxy trained without them (``Resources/Models/recipe/dev-holdout``). Kept by a
rule written before: ``refine_dev.py`` not lower after 1, 3 and 5 clicks, and the proxy higher by 0.01 after
3 or 5. ``refine_dev.py``: 0.6056 / 0.6687 / 0.7252 -> 0.6056 / 0.6702 / 0.7253; the proxy 0.406 / 0.556 /
0.613 -> 0.406 / 0.563 / 0.631. A cost of 0.3 did more on the proxy (0.406 / 0.590 / 0.667) but lowered
``refine_dev.py`` after five clicks (0.7240); 1 lowered it after three (0.608). ``lift_cost_missed`` (0.3
where the model's logit at the click is below 0) was kept by the same rule: ``refine_dev.py`` 0.6056 / 0.6702 /
0.7253 -> 0.6056 / 0.6713 / 0.7253, the proxy 0.406 / 0.563 / 0.631 -> 0.406 / 0.582 / 0.664. Gates tried
before it by the same rule and not kept: the logit at the click below -4 or -8 (the proxy 0.565 / 0.633 and
0.563 / 0.631: its clicks are rarely that sure), or below -1 (``refine_dev.py`` 0.7250 after five clicks), and
0.3 wherever it lifts at most 0.5, 1.5 or 4 times the model's mask (``refine_dev.py`` 0.724 after five).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

__all__ = [
    "REFINED_LOGIT",
    "RefineConfig",
    "boundary_contrast",
    "click_grow",
    "geodesic_grow",
    "grow_instead",
    "mark_turned",
    "refine_mask",
    "tissue_reach",
]

ORGAN = 1
BACKGROUND = 2
REFINED_LOGIT = 2.0
"""|logit| given to a voxel the refinement turned (probability 0.88), in the session's result and in the
confidence module's input."""


def mark_turned(logits: torch.Tensor, turned: torch.Tensor) -> torch.Tensor:
    """``logits`` (changed in place and returned) set to ``+-REFINED_LOGIT`` where ``turned`` (same shape; +1
    where the refinement turned a voxel on, -1 off, 0 kept, or an average of those) is above 0.5 or below
    -0.5: the confidence module's input for a refined mask, in the session and in its training examples."""
    logits[turned > 0.5] = REFINED_LOGIT
    logits[turned < -0.5] = -REFINED_LOGIT
    return logits


@dataclass(frozen=True)
class RefineConfig:
    """Widths (mm) and thresholds of the refinement of clicks; see the module description."""

    inner_mm: float = 12.0
    inner_fraction: float = 0.7
    inner_fraction_step: float = 0.1
    inner_fraction_max: float = 0.9
    background_logit: float = 4.0
    background_gap_mm: float = 3.0
    outer_mm: float = 40.0
    free_mm: float = 15.0
    click_mm: float = 3.0
    margin_mm: float = 10.0
    grid_mm: float = 1.5
    max_blocks: int = 96**3  # a larger working box is refined on coarser blocks (a bounded cost per click)
    from_click: int = 1  # the organ's first click that is refined (2: corrective clicks only)
    cover_unsure: bool = True  # the working box holds every voxel the model is unsure of
    lift_cost: float = 0.15  # a positive corrective click's tissue: path cost below this (0: only free_mm)
    lift_mm: float = 60.0  # ... and within this distance of the click
    lift_cost_missed: float = 0.3  # ... below this where the model's mask leaves the click out (0: lift_cost)
    candidate_contrast: float = 1.1  # the clicks' grow is shown where larger and this much sharper (0: never)
    candidate_margin_mm: float = 40.0  # ... grown in the positive clicks' box widened by this
    candidate_later: str = "check"  # later clicks: "never", "check" / "always" where the first took it, "all"
    smooth_blocks: float = 0.0  # the grows' image smoothed by a Gaussian of this sigma in blocks (0: not)
    smooth_blocks_mr: float = 0.6  # ... on an MR image (the session's guess of its modality)

    def __post_init__(self) -> None:
        if self.from_click < 1:
            raise ValueError(f"from_click counts an organ's clicks from 1, got {self.from_click}")
        if min(self.candidate_contrast, self.candidate_margin_mm) < 0:
            raise ValueError(
                "candidate_contrast and candidate_margin_mm must be at least 0, got "
                f"{self.candidate_contrast} and {self.candidate_margin_mm}"
            )
        if min(self.smooth_blocks, self.smooth_blocks_mr) < 0:
            raise ValueError(
                "smooth_blocks and smooth_blocks_mr are a Gaussian's sigma in blocks, at least 0, got "
                f"{self.smooth_blocks} and {self.smooth_blocks_mr}"
            )
        if self.candidate_later not in ("never", "check", "always", "all"):
            raise ValueError(
                f"candidate_later is 'never', 'check', 'always' or 'all', got {self.candidate_later!r}"
            )
        if min(self.lift_cost, self.lift_mm, self.lift_cost_missed) < 0:
            raise ValueError(
                "lift_cost, lift_mm and lift_cost_missed must be at least 0, got "
                f"{self.lift_cost}, {self.lift_mm} and {self.lift_cost_missed}"
            )


def geodesic_grow(intensity: np.ndarray, seeds: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Label every voxel with the seed it is best connected to (6-neighbour shortest paths).

    A step between neighbours costs their intensity difference, divided by ``scale`` (by default the
    intensities' standard deviation), plus 0.001 (so that within a flat area the nearer seed wins).

    Args:
        intensity: ``(I, J, K)`` image.
        seeds: ``(I, J, K)`` integer labels, 0 where unseeded; at least one voxel seeded.
        scale: what an intensity difference is divided by.

    Returns:
        The ``(I, J, K)`` label map (``seeds``' dtype); voxels no seed reaches keep 0.
    """
    values = np.asarray(intensity, dtype=np.float64)
    labels = seeds.copy()
    free = seeds == 0
    if not free.any() or free.all():
        return labels
    # only the unseeded voxels and the seeds beside them take part: a path from a seed deeper inside its
    # seeded area costs no less than one from its edge
    nodes = ndimage.binary_dilation(free)
    node_seeds = seeds[nodes]
    sources = np.flatnonzero(node_seeds)
    if sources.size == 0:
        return labels
    graph = _graph(values, nodes, scale or float(values.std()) or 1.0)
    _, _, nearest = dijkstra(graph, directed=False, indices=sources, min_only=True, return_predecessors=True)
    labels[nodes] = np.where(nearest >= 0, node_seeds[np.maximum(nearest, 0)], 0)
    return labels


def _graph(values: np.ndarray, nodes: np.ndarray, scale: float):
    """The 6-neighbour graph of the ``nodes`` voxels (numbered in C order), a step costing the intensity
    difference divided by ``scale``, plus 0.001 (sparse, for :func:`scipy.sparse.csgraph.dijkstra`)."""
    shape = values.shape
    index = np.full(shape, -1, dtype=np.int64)
    index[nodes] = np.arange(int(nodes.sum()))
    rows, cols, weights = [], [], []
    for axis in range(3):
        if shape[axis] < 2:
            continue
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        pair = nodes[tuple(a)] & nodes[tuple(b)]
        rows.append(index[tuple(a)][pair])
        cols.append(index[tuple(b)][pair])
        weights.append(np.abs(values[tuple(a)][pair] - values[tuple(b)][pair]) / scale + 1e-3)
    n = int(nodes.sum())
    return coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    ).tocsr()


def tissue_reach(
    intensity: np.ndarray, source: np.ndarray, limit: float, scale: float | None = None
) -> np.ndarray:
    """The voxels a path from ``source`` reaches at a cost below ``limit``, a step between neighbours costing
    as in :func:`geodesic_grow` (the intensity difference divided by ``scale``, by default the intensities'
    standard deviation, plus 0.001): the tissue the source lies in, up to its first edge."""
    values = np.asarray(intensity, dtype=np.float64)
    out = np.zeros(values.shape, dtype=bool)
    if not source.any():
        return out
    scale = scale or float(values.std()) or 1.0
    # a path's cost is at least its two ends' intensity difference: only voxels within limit * scale of the
    # source's intensities can be reached, and only through such voxels
    band = limit * scale
    start = values[source]
    nodes = source | ((values > start.min() - band) & (values < start.max() + band))
    cost = dijkstra(
        _graph(values, nodes, scale),
        directed=False,
        indices=np.flatnonzero(source[nodes]),
        min_only=True,
        limit=limit,
    )
    out[nodes] = cost < limit
    return out


def refine_mask(
    image: np.ndarray,
    mask: np.ndarray,
    mask_box: tuple[slice, ...],
    spacing: Sequence[float] | np.ndarray,
    clicks: Sequence[tuple[np.ndarray, bool]],
    config: RefineConfig | None = None,
    logits: np.ndarray | None = None,
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Refine ``mask`` with its organ's clicks (the first one is where the organ started).

    Args:
        image: the whole ``(I, J, K)`` image.
        mask: the model's boolean mask, a crop ``image[mask_box]`` (empty when nothing is segmented).
        mask_box: where ``mask`` lies in the image grid.
        spacing: voxel size in mm.
        clicks: ``(ijk, positive)`` per click in order, ``ijk`` voxel indices (rounded here).
        config: widths; default :class:`RefineConfig`.
        logits: the model's foreground logits on the same crop as ``mask`` (``mask`` is where they are
            above 0); without them the model counts as sure of every voxel outside its mask. Outside the
            crop the model counts as sure of the background.

    Returns:
        ``(box, refined)``: the working box (slices of the image grid) and the refined mask inside it, or
        ``None`` when there is nothing to refine (fewer clicks than ``config.from_click``).
    """
    cfg = config or RefineConfig()
    if not clicks or len(clicks) < cfg.from_click:
        return None
    if logits is not None and logits.shape != mask.shape:
        raise ValueError(f"logits {logits.shape} and mask {mask.shape} differ in shape")
    shape = np.array(image.shape)
    sp = np.asarray(spacing, dtype=np.float64)
    voxels = _click_voxels(clicks, shape)
    offset = np.array([s.start or 0 for s in mask_box], dtype=np.int64)
    lo = voxels.min(axis=0)
    hi = voxels.max(axis=0) + 1
    # the box holds the mask, and with cover_unsure every voxel the model is unsure of
    held = [mask] if mask.size else []
    if cfg.cover_unsure and logits is not None:
        held.append(logits > -cfg.background_logit)
    for array in held:
        if array.any():
            nz = [np.flatnonzero(array.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
            lo = np.minimum(lo, offset + [n[0] for n in nz])
            hi = np.maximum(hi, offset + [n[-1] + 1 for n in nz])
    pad = np.ceil(cfg.margin_mm / sp).astype(np.int64)
    lo, hi = np.maximum(lo - pad, 0), np.minimum(hi + pad, shape)
    box = _slices(lo, hi)

    # blocks of whole voxels about grid_mm wide (1 voxel on grids at least that coarse), coarser in a box
    # of more than max_blocks of them (the finest block side grows first)
    factor = _block_factor(sp, lo, hi, cfg)
    fine = image[box].astype(np.float32, copy=False)
    fine_mask = np.zeros(tuple(int(b - a) for a, b in zip(lo, hi, strict=True)), dtype=bool)
    # the model's sureness of the background: -inf where it is taken as sure
    fine_logit = np.full(fine_mask.shape, -np.inf, dtype=np.float32)
    if mask.size:  # the model's mask (and logits) pasted into the working box (it may reach beyond it: cut)
        src_lo, src_hi = np.maximum(offset, lo), np.minimum(offset + mask.shape, hi)
        if np.all(src_hi > src_lo):
            dst, src = _slices(src_lo - lo, src_hi - lo), _slices(src_lo - offset, src_hi - offset)
            fine_mask[dst] = mask[src]
            if logits is not None:
                fine_logit[dst] = logits[src]
    coarse_img = _block_pool(fine, factor)
    coarse_mask = _block_pool(fine_mask, factor) > 0.5
    coarse_logit = _block_pool(fine_logit, factor, F.max_pool3d)  # a block is as sure as its least sure voxel
    csp = sp * factor
    seeds = np.zeros(coarse_mask.shape, dtype=np.uint8)
    depth = _distance(coarse_mask, csp)
    inner = cfg.inner_mm
    if coarse_mask.any():
        fraction = min(
            cfg.inner_fraction + cfg.inner_fraction_step * (len(clicks) - 1), cfg.inner_fraction_max
        )
        inner = min(inner, fraction * float(depth.max()))
    seeds[coarse_mask & (depth > inner)] = ORGAN
    away = _distance(~coarse_mask, csp)
    sure = (away > cfg.background_gap_mm) & (coarse_logit < -cfg.background_logit)
    seeds[~coarse_mask & (sure | (away > cfg.outer_mm))] = BACKGROUND
    # the faces inside the image; all of them when nothing else seeds the background (the model is unsure
    # of the whole image, and the box is the image)
    no_background = not (seeds == BACKGROUND).any() and all(positive for _, positive in clicks)
    _seed_faces(seeds, lo, hi, shape, every=no_background)
    local = (voxels - lo) // factor
    for n, (centre, (_, positive)) in enumerate(zip(local, clicks, strict=True)):
        if n > 0:  # a corrective click: the other label's seeds around it are lifted
            other = BACKGROUND if positive else ORGAN
            seeds[_ball(seeds.shape, centre, cfg.free_mm, csp) & (seeds == other)] = 0
            if positive and cfg.lift_cost > 0:  # and the background seeds in the tissue it lies in
                lift = (seeds == BACKGROUND) & _ball(seeds.shape, centre, cfg.lift_mm, csp)
                if lift.any():
                    # the model, prompted here, still leaving the click out: its sure background is less
                    # to be trusted, and the click's tissue is taken further
                    missed = cfg.lift_cost_missed > 0 and coarse_logit[tuple(centre)] < 0
                    cost = cfg.lift_cost_missed if missed else cfg.lift_cost
                    seeds[lift & _tissue_lift(coarse_img, centre, csp, cfg, cost)] = 0
    for centre, (_, positive) in zip(local, clicks, strict=True):
        seeds[_ball(seeds.shape, centre, cfg.click_mm, csp)] = ORGAN if positive else BACKGROUND
    grown = _smooth_grow(coarse_img, seeds, cfg)
    changed = grown != coarse_mask
    if not changed.any():
        return box, fine_mask.copy()
    up = tuple(slice(0, n) for n in fine_mask.shape)
    changed_fine = _upsample(changed, factor)[up]
    grown_fine = _upsample(grown, factor)[up]
    return box, np.where(changed_fine, grown_fine, fine_mask)


def click_grow(
    image: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    clicks: Sequence[tuple[np.ndarray, bool]],
    cfg: RefineConfig,
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray]:
    """The organ grown from the clicks alone, as *Grow from seeds* grows it: organ seeds a ball of ``click_mm``
    around every positive click, background seeds one around every negative click and the faces inside the
    image of the positive clicks' box widened by ``candidate_margin_mm`` (all its faces where that box is the
    image). On blocks about ``grid_mm`` wide (coarser past ``max_blocks``), smoothed by ``smooth_blocks`` as the
    refinement's grow is.

    Returns:
        ``(box, grown, factor, blocks)``: the box (slices of the image grid), the grown organ on its blocks,
        the block size in voxels per axis, and the image's mean over each block.
    """
    shape = np.array(image.shape)
    spacing = np.asarray(spacing, dtype=np.float64)
    voxels = _click_voxels(clicks, shape)
    points = np.array(
        [v for v, (_, positive) in zip(voxels, clicks, strict=True) if positive] or list(voxels)
    )
    pad = np.ceil(cfg.candidate_margin_mm / spacing).astype(np.int64)
    lo, hi = np.maximum(points.min(axis=0) - pad, 0), np.minimum(points.max(axis=0) + pad + 1, shape)
    factor = _block_factor(spacing, lo, hi, cfg)
    box = _slices(lo, hi)
    img = _block_pool(image[box].astype(np.float32, copy=False), factor)
    seeds = np.zeros(img.shape, dtype=np.uint8)
    # the faces inside the image; all of them where the box is the image
    _seed_faces(seeds, lo, hi, shape, every=not (np.any(lo > 0) or np.any(hi < shape)))
    csp = spacing * factor
    for centre, (_, positive) in zip((voxels - lo) // factor, clicks, strict=True):
        seeds[_ball(seeds.shape, centre, cfg.click_mm, csp)] = ORGAN if positive else BACKGROUND
    return box, _smooth_grow(img, seeds, cfg), factor, img


def boundary_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """The mean intensity difference between 6-neighbours across ``mask``'s boundary, divided by ``image``'s
    standard deviation (0 without a boundary): how sharply the image bounds the mask."""
    scale = float(image.std()) or 1.0
    steps = []
    for axis in range(3):
        if image.shape[axis] < 2:
            continue
        a, b = [slice(None)] * 3, [slice(None)] * 3
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        edge = mask[tuple(a)] != mask[tuple(b)]
        steps.append(np.abs(image[tuple(a)] - image[tuple(b)])[edge])
    values = np.concatenate(steps) if steps else np.zeros(0)
    return float(values.mean()) / scale if values.size else 0.0


def grow_instead(
    image: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    clicks: Sequence[tuple[np.ndarray, bool]],
    box: tuple[slice, ...],
    refined: np.ndarray,
    config: RefineConfig | None = None,
    force: bool = False,
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The clicks' own grow (:func:`click_grow`) as ``(box, mask)`` where it is larger than the mask
    ``refined`` (on ``box`` of the image grid) and the image bounds it more sharply (its
    :func:`boundary_contrast` above ``candidate_contrast`` times ``refined``'s, both on the grow's blocks and
    box), or always with ``force``; the box is then the union of both boxes. ``None`` where it is not."""
    cfg = config or RefineConfig()
    gbox, grown, factor, img = click_grow(image, spacing, clicks, cfg)
    glo, ghi = np.array([s.start for s in gbox]), np.array([s.stop for s in gbox])
    grown_fine = _upsample(grown, factor)[_slices(np.zeros(3, dtype=np.int64), ghi - glo)]
    lo, hi = np.array([s.start for s in box]), np.array([s.stop for s in box])
    ulo, uhi = np.minimum(lo, glo), np.maximum(hi, ghi)
    union = np.zeros(tuple(uhi - ulo), dtype=bool)
    if not force:
        if int(grown_fine.sum()) <= int(refined.sum()):
            return None
        union[_slices(lo - ulo, hi - ulo)] = refined
        model = _block_pool(union[_slices(glo - ulo, ghi - ulo)], factor) > 0.5
        if boundary_contrast(img, grown) <= cfg.candidate_contrast * boundary_contrast(img, model):
            return None
        union[:] = False
    union[_slices(glo - ulo, ghi - ulo)] = grown_fine
    return _slices(ulo, uhi), union


def _smooth_grow(image: np.ndarray, seeds: np.ndarray, cfg: RefineConfig) -> np.ndarray:
    """The organ (boolean) of :func:`geodesic_grow` on ``image`` smoothed by a Gaussian of ``cfg.smooth_blocks``
    voxels (sigma), a step's intensity difference still divided by the unsmoothed image's standard deviation,
    so smoothing lowers the cost of noise inside a tissue more than that of the edges between tissues."""
    values = np.asarray(image, dtype=np.float64)
    scale = float(values.std()) or 1.0
    if cfg.smooth_blocks > 0:
        values = ndimage.gaussian_filter(values, cfg.smooth_blocks)
    return geodesic_grow(values, seeds, scale) == ORGAN


def _tissue_lift(
    image: np.ndarray, centre: np.ndarray, spacing: np.ndarray, cfg: RefineConfig, cost: float
) -> np.ndarray:
    """The voxels of ``image`` that the ball of ``cfg.click_mm`` around ``centre`` reaches at a path cost
    below ``cost``, searched on a crop about the click that grows, twice as wide, while the reach
    touches its faces, up to ``cfg.lift_mm`` (a click's tissue is usually much smaller; the caller keeps the
    voxels within ``lift_mm``)."""
    scale = float(image.std()) or 1.0
    shape = np.array(image.shape)
    radius = min(2 * cfg.free_mm, cfg.lift_mm)
    while True:
        reach = np.ceil(radius / spacing).astype(np.int64)
        lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, shape)
        near = _slices(lo, hi)
        start = _ball(tuple(hi - lo), centre - lo, cfg.click_mm, spacing)
        reached = tissue_reach(image[near], start, cost, scale)
        open_faces = [
            reached.take(0 if side == 0 else -1, axis=axis).any()
            for axis in range(3)
            for side, inside in ((0, lo[axis] > 0), (1, hi[axis] < shape[axis]))
            if inside
        ]
        if radius >= cfg.lift_mm or not any(open_faces):
            break
        radius = min(2 * radius, cfg.lift_mm)
    out = np.zeros(image.shape, dtype=bool)
    out[near] = reached
    return out


def _click_voxels(clicks: Sequence[tuple[np.ndarray, bool]], shape: np.ndarray) -> np.ndarray:
    """The clicks' voxel indices, rounded and clipped to the image (``(N, 3)`` int64)."""
    voxels = [np.clip(np.rint(np.asarray(c, dtype=np.float64)), 0, shape - 1) for c, _ in clicks]
    return np.array(voxels).astype(np.int64)


def _seed_faces(seeds: np.ndarray, lo: np.ndarray, hi: np.ndarray, shape: np.ndarray, every: bool) -> None:
    """Seed the background on two voxel layers of the faces of the box ``[lo, hi)`` (``seeds``' blocks) that
    lie inside the image, or of all its faces with ``every``; not on axes of fewer than 5 blocks."""
    for axis in range(3):
        for side, inside in ((0, lo[axis] > 0), (1, hi[axis] < shape[axis])):
            if (inside or every) and seeds.shape[axis] >= 5:
                face = [slice(None)] * 3
                face[axis] = slice(0, 2) if side == 0 else slice(-2, None)
                seeds[tuple(face)] = BACKGROUND


def _block_factor(spacing: np.ndarray, lo: np.ndarray, hi: np.ndarray, cfg: RefineConfig) -> np.ndarray:
    """Voxels per block along each axis: blocks about ``cfg.grid_mm`` wide (1 voxel on grids at least that
    coarse), coarser in a box ``[lo, hi)`` of more than ``cfg.max_blocks`` of them (the finest side first)."""
    factor = np.maximum(1, np.floor(cfg.grid_mm / spacing + 0.3)).astype(np.int64)
    while np.prod(-(-(hi - lo) // factor)) > cfg.max_blocks:
        axis = int(np.argmin(np.where(factor < hi - lo, factor * spacing, np.inf)))
        factor[axis] += 1
    return factor


def _slices(lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _block_pool(array: np.ndarray, factor: np.ndarray, pool=F.avg_pool3d) -> np.ndarray:
    """Mean (or ``pool``, e.g. ``F.max_pool3d``) over blocks of ``factor`` voxels, as float32 (the last blocks
    along an axis may be partial)."""
    x = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32)
    if np.all(factor == 1):
        return x.numpy()
    f = tuple(int(v) for v in factor)
    return pool(x[None, None], f, f, ceil_mode=True)[0, 0].numpy()


def _upsample(array: np.ndarray, factor: np.ndarray) -> np.ndarray:
    for axis, f in enumerate(factor):
        if f > 1:
            array = np.repeat(array, int(f), axis=axis)
    return array


def _distance(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in mm from each voxel of ``mask`` to the nearest voxel outside it (the box's faces do not
    count: the mask may go on beyond them)."""
    if not mask.any():
        return np.zeros(mask.shape)
    if mask.all():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(mask, sampling=spacing)


def _ball(shape: tuple[int, ...], centre: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Voxels within ``radius_mm`` of ``centre`` (always the centre voxel itself)."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing, strict=True))
    return d2 <= radius_mm**2 + 1e-6
