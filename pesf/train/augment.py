"""Augmentation of training samples: random region geometry, elastic displacement and intensity changes.

Augmentation stands in for more patients (the default model is trained on few). Geometry is applied when
resampling (:mod:`pesf.train.samples`), so the image, the target and the known mask are cut from the source
with one and the same map:

* spacing — a random region spacing (default 1.2–2.0 mm instead of 1.5, drawn by
  :func:`~pesf.train.samples.prepare_sample`): organs seen at other sizes;
* orientation — random flips and 90° rotations of the region axes, and a small rotation about a random axis
  (an oblique region direction, resampled through ``grid_sample``): :func:`random_pose`;
* elastic — a smooth random displacement field (random offsets on a coarse 4^3 grid, upsampled trilinearly)
  applied identically to image, target and known mask: :func:`elastic_field`;
* intensity — on the normalised image: random scale and shift, gamma, Gaussian noise, and a random
  intensity remapping (a piecewise-linear transfer curve through random values at the image's quantiles,
  not necessarily monotonic: tissues swap brightness as they do between CT and MR sequences, so the model
  learns shapes and edges rather than one modality's grey values): :func:`augment_intensity`;
* contrast from the labels — the scan is repainted before the region is cut: every labelled structure gets
  its own random brightness (keeping a reduced copy of its texture), the unlabelled tissue goes through a
  random transfer curve, and air stays dark, as in MR. Unlike the remapping, which moves all tissues of one
  CT density together (kidney, spleen and liver alike), neighbouring organs of the same density then differ,
  so the model cannot lean on CT's ordering of organ brightness: :func:`synthesize_contrast`;
* coverage — the scan is cut to a slab of slices around the region's centre (from a few millimetres, as a
  few-slice acquisition, to several centimetres): the region reads the fill value beyond it, and the
  organ is only asked for where the slab is, as for an organ at the edge of a scan's range. A slab at most
  ``extrude_mm`` thick is instead read on beyond its edge slices (extruded along its slice axis, and not
  warped), as a session reads a few-slice scan with a model trained so (its metadata says
  ``"thin_scans": "extrude"``); the organ is still asked for only within the slab;
* placement — by default the region frames the organ whole when it fits, and stays within the organ's
  extent when it does not; with ``click_center_prob`` the region is instead centred on a first click deep
  inside the organ, which the simulated user then gives, as inference centres a region on the user's first
  click.

Each has a probability and a strength in :class:`AugmentConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "AugmentConfig",
    "augment_intensity",
    "axis_rotation",
    "elastic_field",
    "random_pose",
    "remap_intensity",
    "synthesize_contrast",
]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and strengths of the augmentations (region voxels and normalised intensities).

    Defaults keep most samples close to what inference sees (RAS, 1.5 mm) while varying size, pose, shape and
    contrast enough to stand in for more patients. :meth:`none` disables everything.
    """

    spacing_prob: float = 0.5
    spacing_range: tuple[float, float] = (1.2, 2.0)  # mm, drawn log-uniformly
    flip_prob: float = 0.2  # per region axis
    rot90_prob: float = 0.2  # 90, 180 or 270 degrees about one random region axis
    rotate_prob: float = 0.3
    rotate_max_deg: float = 15.0  # about a random axis
    elastic_prob: float = 0.3
    elastic_grid: int = 4  # control points per side
    elastic_std_voxels: float = 2.5  # standard deviation of the control-point offsets
    scale_shift_prob: float = 0.5
    scale_range: tuple[float, float] = (0.9, 1.1)
    shift_range: tuple[float, float] = (-0.1, 0.1)
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_prob: float = 0.2
    noise_std_max: float = 0.1
    remap_prob: float = 0.0  # a random (non-monotonic) intensity transfer curve
    remap_points: int = 6  # control points of the curve, at evenly spaced quantiles of the image
    click_center_prob: float = 0.5  # centre the region on a deep organ voxel, the sample's first click
    coverage_prob: float = 0.0  # keep only a slab of the scan's slices around the region's centre
    coverage_range: tuple[float, float] = (3.0, 60.0)  # mm of slab, drawn log-uniformly
    extrude_mm: float = 0.0  # a slab at most this thick is extruded (its edge slices read on beyond it)
    # train on a synthetic target instead (a random blob; samples.synthetic_target)
    synthetic_prob: float = 0.0
    # repaint the scan from its label map first, when that is on the scan's grid (synthesize_contrast)
    label_contrast_prob: float = 0.0

    @classmethod
    def from_overrides(cls, overrides: dict | None) -> AugmentConfig:
        """The defaults with some fields replaced (a training config's ``augmentation`` object).

        Raises:
            ValueError: naming an unknown field or a value of the wrong kind.
        """
        if not overrides:
            return cls()
        if not isinstance(overrides, dict):
            raise ValueError(f"must be an object of augmentation settings, not {type(overrides).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(
                f"unknown augmentation setting(s) {', '.join(unknown)} (known: {', '.join(known)})"
            )
        values = {}
        for name, value in overrides.items():
            default = getattr(cls, name)
            if isinstance(default, tuple):
                ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) for v in value)
                ok = (
                    ok and 0 <= value[0] <= value[1] if name != "shift_range" else ok and value[0] <= value[1]
                )
                if not ok:
                    raise ValueError(f"{name} must be a pair [low, high] with low <= high (got {value!r})")
                if name == "coverage_range" and value[0] <= 0:
                    raise ValueError(f"coverage_range must be millimetres above 0 (got {value!r})")
                values[name] = (float(value[0]), float(value[1]))
            else:
                if name == "remap_points" and (not _number(value) or int(value) != value or value < 2):
                    raise ValueError(f"remap_points must be a whole number of at least 2 (got {value!r})")
                if not _number(value) or value < 0 or (name.endswith("_prob") and value > 1):
                    kind = "a probability in [0, 1]" if name.endswith("_prob") else "a number of at least 0"
                    raise ValueError(f"{name} must be {kind} (got {value!r})")
                values[name] = type(default)(value)
        return cls(**values)

    @classmethod
    def none(cls) -> AugmentConfig:
        """A configuration with every probability 0."""
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name.endswith("_prob")})


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix about unit ``axis`` by ``angle`` radians (Rodrigues)."""
    x, y, z = axis / np.linalg.norm(axis)
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def random_pose(rng: np.random.Generator, cfg: AugmentConfig, applied: list[str]) -> np.ndarray:
    """A random orthogonal matrix: columns are the region axes in the canonical (RAS) frame."""
    pose = np.eye(3)
    flips = rng.random(3) < cfg.flip_prob
    if flips.any():
        pose = pose @ np.diag(np.where(flips, -1.0, 1.0))
        applied.append("flip")
    if rng.random() < cfg.rot90_prob:
        axis = np.eye(3)[rng.integers(3)]
        pose = pose @ np.rint(axis_rotation(axis, math.pi / 2 * int(rng.integers(1, 4))))
        applied.append("rot90")
    if rng.random() < cfg.rotate_prob:
        axis = rng.normal(size=3)
        angle = math.radians(rng.uniform(-cfg.rotate_max_deg, cfg.rotate_max_deg))
        pose = pose @ axis_rotation(axis, angle)
        applied.append("rotate")
    return pose


def elastic_field(rng: np.random.Generator, cfg: AugmentConfig, size: int) -> torch.Tensor:
    """A smooth random displacement ``(S, S, S, 3)`` in region voxels: coarse random offsets, upsampled."""
    g = max(int(cfg.elastic_grid), 2)
    coarse = rng.normal(0.0, cfg.elastic_std_voxels, size=(1, 3, g, g, g)).astype(np.float32)
    disp = F.interpolate(torch.from_numpy(coarse), size=(size,) * 3, mode="trilinear", align_corners=True)
    return disp[0].permute(1, 2, 3, 0).contiguous()


def augment_intensity(
    image: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig, applied: list[str]
) -> torch.Tensor:
    """Intensity remapping, gamma (both keeping mean and standard deviation), scale/shift and noise."""
    if rng.random() < cfg.remap_prob:
        image = remap_intensity(image, rng, cfg.remap_points)
        applied.append("remap")
    if rng.random() < cfg.gamma_prob:
        gamma = math.exp(rng.uniform(math.log(cfg.gamma_range[0]), math.log(cfg.gamma_range[1])))
        mean, std = image.mean(), image.std()
        low, high = image.min(), image.max()
        span = (high - low).clamp_min(1e-6)
        image = ((image - low) / span).pow(gamma) * span + low
        image = (image - image.mean()) / image.std().clamp_min(1e-6) * std + mean
        applied.append("gamma")
    if rng.random() < cfg.scale_shift_prob:
        image = image * rng.uniform(*cfg.scale_range) + rng.uniform(*cfg.shift_range)
        applied.append("scale_shift")
    if rng.random() < cfg.noise_prob:
        std = rng.uniform(0.0, cfg.noise_std_max)
        image = image + torch.from_numpy(rng.standard_normal(image.shape, dtype=np.float32)) * std
        applied.append("noise")
    return image.to(torch.float32).contiguous()


def remap_intensity(image: torch.Tensor, rng: np.random.Generator, points: int) -> torch.Tensor:
    """``image`` through a random piecewise-linear transfer curve, with its mean and standard deviation kept.

    The curve's ``points`` control points sit at evenly spaced quantiles of the image (0 to 1, so every
    tissue class gets its own segment) and take independent uniform random values: the curve is usually
    not monotonic, so which tissue is brighter changes, as between CT and the MR sequences.
    """
    flat = image.reshape(-1)
    sample = flat[:: max(1, flat.numel() // 200_000)].to(torch.float32)
    knots = torch.quantile(sample, torch.linspace(0.0, 1.0, points))
    knots = torch.cummax(knots, dim=0).values + torch.arange(points, dtype=torch.float32) * 1e-4
    values = torch.from_numpy(rng.uniform(0.0, 1.0, points).astype(np.float32))
    x = flat.to(torch.float32).clamp(float(knots[0]), float(knots[-1]))
    seg = torch.searchsorted(knots, x, right=True).clamp(1, points - 1)
    x0, x1 = knots[seg - 1], knots[seg]
    y0, y1 = values[seg - 1], values[seg]
    out = (y0 + (x - x0) / (x1 - x0) * (y1 - y0)).reshape(image.shape)
    std = out.std()
    if float(std) < 1e-6:  # a flat curve: keep the image
        return image
    return (out - out.mean()) / std * image.std() + image.mean()


AIR_HU = -500.0
"""Voxels of a CT below this are air (or lung) and stay dark in :func:`synthesize_contrast`."""


def synthesize_contrast(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, points: int = 6
) -> np.ndarray:
    """A new contrast for a scan, painted from its label map (float32, same shape; values in ``[0, 1]``).

    The tissue (for a CT: the voxels at or above :data:`AIR_HU`) first goes through a random transfer curve
    (:func:`remap_intensity`, after a slight blur) scaled to ``[0.1, 1]``; then every labelled structure
    (label value other than 0) takes its own random brightness in ``[0.1, 1]`` and keeps its texture scaled
    by a random factor in ``[0.3, 1]``. Air is 0, as it is dark in MR (and left out of the region's
    normalisation, which uses the voxels above 0). Structures of one CT density so differ from each other,
    as organs do between MR sequences. It repaints the whole scan: about 0.1 s per training sample for the
    sample CT's 1.4 M voxels.

    Args:
        image: the scan's voxels (for a CT in HU).
        label: its label map on the same grid (0 unlabelled).
        rng: all random choices.
        points: control points of the tissue's transfer curve.
    """
    x = np.asarray(image, dtype=np.float32)
    lab = np.asarray(label)
    if lab.shape != x.shape:
        raise ValueError(f"label {lab.shape} and image {x.shape} differ in shape")
    tissue = x >= AIR_HU if float(x.min()) < AIR_HU else np.ones(x.shape, dtype=bool)
    out = np.zeros(x.shape, dtype=np.float32)
    if not tissue.any():
        return out
    smooth = ndimage.gaussian_filter(x, 0.75)  # the curve's steep segments would amplify CT's noise
    curve = remap_intensity(torch.from_numpy(smooth[tissue]), rng, points).numpy()
    low, high = float(curve.min()), float(curve.max())
    curve = 0.1 + 0.9 * (curve - low) / max(high - low, 1e-6)
    values, inverse = np.unique(lab[tissue], return_inverse=True)
    counts = np.bincount(inverse, minlength=len(values))
    means = np.bincount(inverse, weights=curve, minlength=len(values)) / np.maximum(counts, 1)
    brightness = rng.uniform(0.1, 1.0, len(values))
    texture = rng.uniform(0.3, 1.0, len(values))
    unlabelled = values == 0
    brightness[unlabelled], texture[unlabelled] = means[unlabelled], 1.0
    painted = brightness[inverse] + texture[inverse] * (curve - means[inverse])
    out[tissue] = np.clip(painted, 0.02, 1.0)
    return out
