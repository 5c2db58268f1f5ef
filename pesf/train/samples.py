"""Training samples: one organ of one case cut into a 128^3 region, as SAM-Med3D trains, with augmentation.

A sample is the region the model would see at inference (:func:`pesf.interactive.roi.make_region`: a cube at
1.5 mm in RAS orientation, z-normalised with the statistics of its voxels above 0), the organ's mask on that
region (``target``) and the voxels whose label is trusted (``known``): inside the image, and not where a
rejected or unannotated organ may lie, unless they belong to the sample's own organ.

The region's centre is drawn inside the organ's bounding box so that the organ is not always centred but stays
whole in the region; an organ larger than the region is centred on a random voxel of it instead. With the
augmentation's ``click_center_prob`` the region is centred on a voxel deep inside the organ instead, and that
voxel is the sample's first click (``first_click``), the framing of inference, where a region is centred on
the user's first click.

Augmentation (random spacing, pose, elastic displacement and intensity, see :mod:`pesf.train.augment`,
re-exported here) is applied when resampling, so the image, the target and the known mask are cut from the
source with one and the same map. Clicks are simulated in region index coordinates with
:class:`pesf.eval.clicks.ClickSimulator` (the same simulated user as the benchmarks).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pesf.errors import PesfError
from pesf.eval.clicks import ClickSimulator, box_offset, deep_voxel
from pesf.eval.metrics import bounding_box
from pesf.interactive.resample import axis_permutation, inside_mask, resample_affine, scan_border
from pesf.interactive.roi import ROI_DIRECTION, make_region, normalize_intensity
from pesf.io.volume import Volume
from pesf.train.augment import (
    AugmentConfig,
    augment_intensity,
    axis_rotation,
    elastic_field,
    random_pose,
    synthesize_contrast,
)

__all__ = [
    "AugmentConfig",
    "TrainingSample",
    "prepare_sample",
    "simulate_clicks",
    "synthetic_target",
    "synthetic_sample",
]

_MARGIN_VOXELS = 2  # the organ keeps this many region voxels from the region faces when it fits
_UNKNOWN_THRESHOLD = 1e-3  # any partial overlap with an unknown organ makes a region voxel unknown


@dataclass
class TrainingSample:
    """One region with its organ.

    Attributes:
        image: normalised region ``(1, 1, S, S, S)`` float32.
        target: organ mask ``(1, 1, S, S, S)`` float32 in ``{0, 1}``.
        known: ``(1, 1, S, S, S)`` bool, True where the label is trusted.
        organ: organ name.
        case_id: case identifier.
        spacing: region spacing in mm (the click simulator's spacing).
        to_lps: 4x4 affine from region index to LPS mm (before any elastic displacement).
        augmentations: names of the augmentations applied, for logs.
        first_click: region index ``(3,)`` of the first click the simulated user must give (the region's
            centre, when the region was centred on a click), or ``None`` to let the user choose it.
    """

    image: torch.Tensor
    target: torch.Tensor
    known: torch.Tensor
    organ: str
    case_id: str
    spacing: float = 1.5
    to_lps: np.ndarray = field(default_factory=lambda: np.eye(4))
    augmentations: tuple[str, ...] = ()
    first_click: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _RegionGrid:
    """A region's voxel grid: voxel ``p`` lies at ``origin + direction @ (spacing * p)`` (LPS mm)."""

    center: np.ndarray
    direction: np.ndarray
    spacing: float
    size: int

    @property
    def origin(self) -> np.ndarray:
        return self.center - self.direction @ np.full(3, self.spacing * (self.size // 2))

    @property
    def to_lps(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.direction * self.spacing
        m[:3, 3] = self.origin
        return m

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.size)

    def index_map(self, vol: Volume) -> tuple[np.ndarray, np.ndarray]:
        """``(m, t)`` with ``vol`` index = ``m @ region_index + t``."""
        a = np.linalg.inv(vol.direction * vol.spacing[None, :])
        return a @ (self.direction * self.spacing), a @ (self.origin - vol.origin)


def _footprint(
    m: np.ndarray, t: np.ndarray, size: int, shape: tuple[int, ...], reach: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Index box ``[lo, hi)`` of the source voxels a region reads, with a margin that keeps cropping exact.

    ``reach`` (region voxels) widens the box for points displaced from the region's voxel centres.
    """
    corners = np.array(list(itertools.product((0, size - 1), repeat=3)), dtype=np.float64)
    c = corners @ m.T + t
    pad = 1.0 + reach * np.abs(m).sum(axis=1)
    shape_arr = np.asarray(shape)
    lo = np.clip(np.floor(c.min(axis=0) - pad), 0, shape_arr - 1).astype(np.int64)
    hi = np.clip(np.floor(c.max(axis=0) + pad) + 2, lo + 1, shape_arr).astype(np.int64)
    return lo, hi


def _crop(array: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
    part = array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    return torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32))


def _affine_sample(
    vol: Volume, arrays: list[np.ndarray], grid: _RegionGrid, extrude: int | None = None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Arrays on ``vol``'s grid resampled onto the region (trilinear, 0 outside), and where they were read.

    With ``extrude`` (an axis of ``vol``) the arrays are read on beyond the edge slices along it (``inside``
    is still ``vol``'s extent).

    Returns:
        ``(arrays, inside)``: ``inside`` where the region voxel lies within the source grid's extent
        (``-0.5 <= index <= n - 0.5``; in the half-voxel ring beyond the outermost voxel centres the edge
        voxel is read, as :func:`make_region` reads the image).
    """
    m, t = grid.index_map(vol)
    lo, hi = _footprint(m, t, grid.size, vol.shape)
    n = tuple(int(v) for v in hi - lo)
    border = scan_border(extrude)
    out = [resample_affine(_crop(a, lo, hi), m, t - lo, grid.shape, fill=0.0, border=border) for a in arrays]
    return out, inside_mask(m, t - lo, grid.shape, n)


def _warped_sample(
    vol: Volume, arrays: list[np.ndarray], grid: _RegionGrid, disp: torch.Tensor | None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Like :func:`_affine_sample` at region indices displaced by ``disp`` ``(S, S, S, 3)``, in one pass.

    One ``grid_sample`` reads every array at the same points, so image and masks stay aligned whatever the
    direction and displacement (points outside the source grid read 0).
    """
    m, t = grid.index_map(vol)
    reach = 0.0 if disp is None else float(disp.abs().max())
    lo, hi = _footprint(m, t, grid.size, vol.shape, reach)
    crops = torch.stack([_crop(a, lo, hi) for a in arrays])[None]
    n = (hi - lo).astype(np.float64)
    # grid_sample reads normalised coordinates u = s * source_index - 1 (align_corners=True), ordered
    # (x, y, z) = (last, middle, first) source axis: fold both into the affine map of region indices
    scale = 2.0 / np.maximum(n - 1.0, 1.0)
    rev = np.eye(3)[::-1]
    a = rev @ (scale[:, None] * m)
    b = rev @ (scale * (t - lo) - 1.0)
    points = _index_grid(grid.size)
    if disp is not None:
        points = points + disp
    norm = torch.addmm(
        torch.from_numpy(b.astype(np.float32)),
        points.reshape(-1, 3),
        torch.from_numpy(a.T.astype(np.float32)),
    ).reshape(points.shape)
    out = F.grid_sample(crops, norm[None], mode="bilinear", padding_mode="border", align_corners=True)[0]
    # inside the source grid's extent: -0.5 <= index <= n - 0.5 on every axis (the half-voxel ring beyond
    # the outermost voxel centres reads the edge voxel, as resample_affine with border=0.5); 0 beyond
    low, high = rev @ (-0.5 * scale - 1.0), rev @ ((n - 0.5) * scale - 1.0)
    offset = norm.sub_(torch.from_numpy((0.5 * (low + high)).astype(np.float32))).abs_()
    inside = (offset <= torch.from_numpy((0.5 * (high - low) + 1e-5).astype(np.float32))).all(dim=-1)
    return list((out * inside).unbind(0)), inside


@functools.lru_cache(maxsize=2)
def _index_grid(size: int) -> torch.Tensor:
    """Region voxel indices ``(S, S, S, 3)`` (cached: never modify it in place)."""
    axis = torch.arange(size, dtype=torch.float32)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


def _choose_center(
    label: Volume,
    mask: np.ndarray,
    direction: np.ndarray,
    spacing: float,
    size: int,
    rng: np.random.Generator,
    jitter: bool,
) -> np.ndarray:
    """LPS centre of the region, drawn inside the organ's box.

    Along region axes where the organ fits (with a small margin), the centre keeps it whole. When the organ
    is larger than the region along some axis, the centre is a random organ voxel (with ``jitter``; else the
    organ voxel nearest the middle of its box), moved along those axes just enough to keep the region within
    the organ's extent, so the region holds as much organ as it can.
    """
    nz = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    lo = np.array([n[0] for n in nz], dtype=np.float64) - 0.5
    hi = np.array([n[-1] for n in nz], dtype=np.float64) + 0.5
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
    q = label.index_to_lps(corners) @ direction  # organ box corners in region-axis coordinates (mm)
    q_lo, q_hi = q.min(axis=0), q.max(axis=0)
    below = (size // 2 - _MARGIN_VOXELS) * spacing  # reach of the region before / after its centre
    above = (size - 1 - size // 2 - _MARGIN_VOXELS) * spacing
    low = np.maximum(q_lo, q_hi - above)
    high = np.minimum(q_hi, q_lo + below)
    fits = low <= high
    if jitter:
        center = low + rng.random(3) * np.maximum(high - low, 0.0)
    else:
        center = 0.5 * (q_lo + q_hi)
    if not fits.all():
        voxels = np.flatnonzero(mask)
        if jitter:
            pick = voxels[rng.integers(voxels.size)]
        else:
            ijk = np.stack(np.unravel_index(voxels, mask.shape), axis=1)
            mid = label.lps_to_index(direction @ center)
            pick = voxels[np.argmin(np.sum(((ijk - mid) * label.spacing) ** 2, axis=1))]
        organ_q = (
            label.index_to_lps(np.array(np.unravel_index(pick, mask.shape), dtype=np.float64)) @ direction
        )
        # along those axes, keep the region within the organ's extent: the organ voxel stays inside it
        organ_q = np.clip(organ_q, q_lo + below, np.maximum(q_hi - above, q_lo + below))
        center = np.where(fits, center, organ_q)
    return direction @ center


_CLICK_CENTER_VOXELS = 64**3  # organ boxes up to this size are measured on every voxel


def _click_center(label: Volume, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """LPS centre of a voxel deep inside the organ, as a user's (and the benchmark user's) first click.

    The voxel is drawn among those at least a random fraction (0.6 to 0.95) of the organ's largest distance
    to its boundary. The distances of an organ whose box exceeds :data:`_CLICK_CENTER_VOXELS` are measured on
    every second (third, ...) voxel, which keeps a sample of a large organ on a fine grid fast.
    """
    box = bounding_box(mask)
    step = max(1, math.ceil((mask[box].size / _CLICK_CENTER_VOXELS) ** (1.0 / 3.0)))
    fraction = rng.uniform(0.6, 0.95)
    ijk = deep_voxel(mask[box][::step, ::step, ::step], label.spacing * step, fraction, rng)
    if ijk is None:  # a thin organ the subsampled grid misses: every voxel after all
        ijk, step = deep_voxel(mask[box], label.spacing, fraction, rng), 1
    return label.index_to_lps((ijk * step + box_offset(box)).astype(np.float64))


def _slab(
    image: Volume, center: np.ndarray, rng: np.random.Generator, range_mm: tuple[float, float]
) -> tuple[Volume, int]:
    """``image`` cut to a slab of slices that holds the LPS point ``center``, and the slice axis.

    The slices are along the scan's slice axis: the axis of the coarsest spacing when one is coarser than the
    others (a sagittal or coronal acquisition of thick slices too), else the axis closest to the patient's
    superior axis (an axial scan's slices).
    """
    spacing = np.asarray(image.spacing, dtype=np.float64)
    if spacing.max() > 1.2 * spacing.min() and np.sum(spacing == spacing.max()) == 1:
        axis = int(np.argmax(spacing))
    else:
        axis = int(np.argmax(np.abs(image.direction[2])))
    n = image.shape[axis]
    thickness = math.exp(rng.uniform(math.log(range_mm[0]), math.log(range_mm[1])))
    count = int(min(n, max(1, round(thickness / float(image.spacing[axis])))))
    k = int(np.clip(round(float(image.lps_to_index(center)[axis])), 0, n - 1))
    first = int(np.clip(k - rng.integers(count), 0, n - count))
    cut = [slice(None)] * 3
    cut[axis] = slice(first, first + count)
    corner = np.zeros(3)
    corner[axis] = first
    slab = Volume(image.array[tuple(cut)], image.index_to_lps(corner), image.spacing, image.direction)
    return slab, axis


def _region_tensors(
    image: Volume,
    label: Volume,
    masks: list[np.ndarray],
    grid: _RegionGrid,
    disp: torch.Tensor | None,
    extrude: int | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Normalised region image ``(1, 1, S, S, S)``, the masks resampled, and where the label can be trusted.

    The last is the region voxels inside both the image's and the label's extent. With ``extrude`` (an image
    axis; no displacement) the image is read on beyond its edge slices along that axis, as
    :func:`make_region` reads a few-slice scan for a model trained so; the trusted voxels stay within it.

    Without displacement and in the canonical orientation the image goes through :func:`make_region` itself;
    flips and 90° rotations use the same axis-wise resampling; oblique or displaced grids are sampled in one
    pass per source grid.
    """
    if extrude is not None and disp is not None:
        raise ValueError("an extruded slab is not warped")
    if disp is None and (extrude is not None or axis_permutation(grid.direction) is not None):
        if np.allclose(grid.direction, ROI_DIRECTION, atol=1e-12):
            m, t = grid.index_map(image)
            lo, hi = _footprint(m, t, grid.size, image.shape)
            cropped = Volume(
                image.array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]],
                image.index_to_lps(lo),
                image.spacing,
                image.direction,
            )
            region = make_region(
                cropped, _crop(image.array, lo, hi), grid.center, grid.size, grid.spacing, extrude
            )
            inside = region.inside
            normalised = region.image
        else:
            (data,), inside = _affine_sample(image, [image.array], grid, extrude)
            normalised = normalize_intensity(data)[None, None].contiguous()
        resampled, inside_label = _affine_sample(label, masks, grid)
        return normalised, resampled, inside & inside_label
    if label.same_geometry(image):
        channels, inside = _warped_sample(image, [image.array, *masks], grid, disp)
        data, resampled = channels[0], channels[1:]
    else:
        (data,), inside = _warped_sample(image, [image.array], grid, disp)
        resampled, inside_label = _warped_sample(label, masks, grid, disp)
        inside = inside & inside_label
    return normalize_intensity(data)[None, None].contiguous(), resampled, inside


# ---------------------------------------------------------------------------------------------- samples


def prepare_sample(
    image: Volume,
    label: Volume,
    value: int,
    unknown: np.ndarray | None,
    rng: np.random.Generator,
    *,
    roi_size: int = 128,
    spacing: float = 1.5,
    augment: bool = True,
    case_id: str = "",
    organ: str = "",
    config: AugmentConfig | None = None,
    jitter: bool = True,
) -> TrainingSample:
    """Cut the training sample of one organ out of a case.

    Args:
        image: the case's image.
        label: its label map (any grid; usually the image's).
        value: the organ's label value.
        unknown: bool array on ``label``'s grid, True where a rejected or unannotated organ may lie, or
            ``None``.
        rng: all random choices (centre, augmentation) come from it; the same state gives the same sample.
        roi_size: voxels per region side.
        spacing: region spacing in mm without augmentation.
        augment: ``False`` applies no augmentation.
        case_id, organ: carried into the sample.
        config: augmentation probabilities and strengths (default :class:`AugmentConfig`).
        jitter: draw the centre at random in the organ's box; ``False`` centres the box (validation).

    Raises:
        PesfError: when the label has no voxel of ``value`` or the organ vanishes at the region spacing.
    """
    mask = np.asarray(label.array) == value
    if not mask.any():
        raise PesfError(
            f"case {case_id or '?'}: the label has no voxel of {organ or 'the organ'} (value {value})"
        )
    if unknown is not None and np.shape(unknown) != label.shape:
        raise ValueError(f"unknown mask {np.shape(unknown)} is not on the label grid {label.shape}")
    cfg = (config or AugmentConfig()) if augment else AugmentConfig.none()
    applied: list[str] = []

    region_spacing = float(spacing)
    if rng.random() < cfg.spacing_prob:
        low, high = cfg.spacing_range
        region_spacing = math.exp(rng.uniform(math.log(low), math.log(high)))
        applied.append("spacing")
    direction = ROI_DIRECTION @ random_pose(rng, cfg, applied)
    free = jitter and cfg.click_center_prob > 0 and rng.random() < cfg.click_center_prob
    if free:
        center = _click_center(label, mask, rng)
    else:
        center = _choose_center(label, mask, direction, region_spacing, roi_size, rng, jitter)
    grid = _RegionGrid(center, direction, region_spacing, int(roi_size))
    disp = elastic_field(rng, cfg, grid.size) if rng.random() < cfg.elastic_prob else None
    if cfg.label_contrast_prob > 0 and rng.random() < cfg.label_contrast_prob and label.same_geometry(image):
        painted = synthesize_contrast(image.array, label.array, rng, cfg.remap_points)
        image = Volume(painted, image.origin, image.spacing, image.direction)
        applied.append("label_contrast")
    source = image
    extrude = None
    if cfg.coverage_prob > 0 and rng.random() < cfg.coverage_prob:
        image, axis = _slab(image, center, rng, cfg.coverage_range)
        applied.append("coverage")
        if image.shape[axis] * float(image.spacing[axis]) <= cfg.extrude_mm:
            extrude, disp = axis, None  # read on beyond its edge slices, as a session reads a few-slice scan
            applied.append("extrude")

    masks = [mask] if unknown is None else [mask, np.asarray(unknown, dtype=bool)]
    region, resampled, inside = _region_tensors(image, label, masks, grid, disp, extrude)
    if disp is not None and not bool((resampled[0] > 0).any()):  # the warp pushed a tiny organ out
        disp = None
        region, resampled, inside = _region_tensors(image, label, masks, grid, disp, extrude)
    if disp is not None:
        applied.append("elastic")
    fraction = resampled[0]
    if "coverage" in applied:  # the organ is asked for only where the (cut) scan is
        fraction = torch.where(inside, fraction, torch.zeros(()))
        if not bool((fraction > 0).any()):  # the slab missed the organ: the whole scan after all
            applied.remove("coverage")
            if extrude is not None:
                applied.remove("extrude")
            region, resampled, inside = _region_tensors(source, label, masks, grid, disp)
            fraction = resampled[0]
    target = fraction > 0.5
    if not target.any():  # an organ thinner than the region spacing: keep its best-covered voxels
        peak = float(fraction.max())
        if peak <= 0.0:
            raise PesfError(f"case {case_id or '?'}: {organ or 'the organ'} is too small for the region")
        target = fraction >= 0.5 * peak
    known = inside
    if unknown is not None:
        known = known & (resampled[1] <= _UNKNOWN_THRESHOLD)
    known = known | target
    region = augment_intensity(region, rng, cfg, applied)
    return TrainingSample(
        image=region,
        target=target.to(torch.float32)[None, None].contiguous(),
        known=known[None, None].contiguous(),
        organ=organ,
        case_id=case_id,
        spacing=region_spacing,
        to_lps=grid.to_lps,
        augmentations=tuple(applied),
        first_click=np.full(3, float(roi_size // 2)) if free else None,
    )


def simulate_clicks(
    target: torch.Tensor,
    pred: torch.Tensor | None,
    simulator: ClickSimulator,
    spacing: float = 1.5,
) -> tuple[np.ndarray, np.ndarray]:
    """The next simulated click in region index coordinates.

    Args:
        target: organ mask ``(X, Y, Z)`` bool.
        pred: current prediction ``(X, Y, Z)`` bool, or ``None`` before the first click.
        simulator: the simulated user (its seed makes the clicks reproducible).
        spacing: region spacing in mm.

    Returns:
        ``(coords, labels)``: ``(1, 3)`` float32 region indices and ``(1,)`` int64 label (1 positive, 0
        negative). The first click is positive, deep inside the organ; later clicks correct the largest error
        region (positive on a missed part, negative on a false positive). When the prediction is already
        perfect, a positive click deep inside the organ is returned (it confirms, it changes nothing).
    """
    gt = target.detach().cpu().numpy().astype(bool)
    sp = (float(spacing),) * 3
    click = None
    if pred is not None:
        click = simulator.next_click(gt, pred.detach().cpu().numpy().astype(bool), sp)
    if click is None:
        click = simulator.first_click(gt, sp)
    ijk, positive = click
    return ijk.astype(np.float32)[None], np.array([1 if positive else 0], dtype=np.int64)


# ---------------------------------------------------------------------------------------------- synthetic


def _smooth_noise(rng: np.random.Generator, coarse: int, size: int) -> torch.Tensor:
    """Zero-mean, unit-scale smooth noise ``(S, S, S)``: random values on a coarse grid, upsampled."""
    values = torch.from_numpy(rng.standard_normal((1, 1, coarse, coarse, coarse)).astype(np.float32))
    return F.interpolate(values, size=(size,) * 3, mode="trilinear", align_corners=True)[0, 0]


def _blob_field(
    rng: np.random.Generator, coords: torch.Tensor, center: np.ndarray, radius: float
) -> torch.Tensor:
    """A random smooth blob as a field below 1 inside: a rotated ellipsoid, its surface perturbed by noise."""
    axes = radius * rng.uniform(0.6, 1.4, size=3)
    rot = axis_rotation(rng.normal(size=3), rng.uniform(0, math.pi))
    shape = torch.from_numpy((rot / axes[None, :]).T.astype(np.float32))  # region to unit-ball frame
    rel = coords - torch.from_numpy(center.astype(np.float32))[:, None, None, None]
    local = torch.einsum("ab,bxyz->axyz", shape, rel)
    return local.pow(2).sum(0).sqrt() + 0.25 * _smooth_noise(rng, 6, coords.shape[-1])


def synthetic_target(rng: np.random.Generator, roi_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic target: a random smooth blob with its own intensity on a textured background.

    The background holds smooth texture at two scales and up to three distractor blobs of other intensities;
    the target blob has its own mean and texture. Shapes and textures are computed at half resolution and
    upsampled together (they are smooth), then thresholded at full resolution. The image is normalised as
    :func:`make_region` does.

    Returns:
        ``(image, target)``, both ``(1, 1, S, S, S)`` float32; the target is never empty.
    """
    size = int(roi_size)
    low = max(size // 2, 8)
    axis = torch.linspace(0.0, size - 1.0, low)  # half-resolution grid, in region voxels
    coords = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))
    center = size / 2 + rng.uniform(-0.2, 0.2, size=3) * size
    channels = [
        40.0 * _smooth_noise(rng, 4, low) + 15.0 * _smooth_noise(rng, 16, low),  # background texture
        10.0 * _smooth_noise(rng, 8, low),  # fine texture of the blobs
        _blob_field(rng, coords, center, rng.uniform(0.05, 0.2) * size),
    ]
    others = int(rng.integers(0, 4))
    for _ in range(others):
        channels.append(
            _blob_field(rng, coords, rng.uniform(0.1, 0.9, size=3) * size, rng.uniform(0.04, 0.15) * size)
        )
    up = F.interpolate(torch.stack(channels)[None], size=(size,) * 3, mode="trilinear", align_corners=True)[0]
    texture, fine, fields = up[0], up[1], up[2:]
    target = fields[0] < 1.0
    target[tuple(int(round(c)) for c in center)] = True
    image = 100.0 + texture
    for k in range(others):
        value = float(rng.uniform(-50.0, 300.0))
        image = torch.where((fields[k + 1] < 1.0) & ~target, value + fine, image)
    contrast = float(rng.choice([-1.0, 1.0]) * rng.uniform(60.0, 160.0))
    image = torch.where(target, 100.0 + contrast + fine, image)
    return normalize_intensity(image)[None, None].contiguous(), target.to(torch.float32)[None, None]


def synthetic_sample(rng: np.random.Generator, roi_size: int = 128) -> TrainingSample:
    """:func:`synthetic_target` as a :class:`TrainingSample` (every voxel known)."""
    image, target = synthetic_target(rng, roi_size)
    return TrainingSample(
        image=image,
        target=target,
        known=torch.ones_like(target, dtype=torch.bool),
        organ="synthetic",
        case_id="synthetic",
        augmentations=("synthetic",),
    )
