"""Tests for pesf.train.samples: training regions from the sample CT, augmentation, clicks, synthetic targets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from pesf.errors import PesfError
from pesf.eval.clicks import ClickSimulator
from pesf.interactive.roi import ROI_DIRECTION, make_region, normalize_intensity
from pesf.io.volume import Volume
from pesf.train import samples as samples_module
from pesf.train.augment import AIR_HU, remap_intensity, synthesize_contrast
from pesf.train.samples import (
    AugmentConfig,
    TrainingSample,
    prepare_sample,
    simulate_clicks,
    synthetic_sample,
    synthetic_target,
)

ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6, "aorta": 52}
NONE = AugmentConfig.none()


def only(**probs: float) -> AugmentConfig:
    """A configuration with every augmentation off except the given probabilities."""
    return dataclasses.replace(NONE, **probs)


def region_points(sample: TrainingSample, mask: torch.Tensor) -> np.ndarray:
    """LPS points ``(N, 3)`` of the region voxels in ``mask`` ``(S, S, S)``."""
    idx = np.argwhere(mask.numpy()).astype(np.float64)
    return idx @ sample.to_lps[:3, :3].T + sample.to_lps[:3, 3]


def nearest_label(label: Volume, points: np.ndarray) -> np.ndarray:
    """Label value of the voxel nearest each LPS point (-1 outside the label grid)."""
    ijk = np.rint(label.lps_to_index(points)).astype(np.int64)
    ok = np.all((ijk >= 0) & (ijk < np.array(label.shape)), axis=1)
    out = np.full(len(points), -1, dtype=np.int64)
    out[ok] = label.array[tuple(ijk[ok].T)]
    return out


def organ_centroid(label: Volume, value: int) -> np.ndarray:
    return label.index_to_lps(np.argwhere(label.array == value).mean(axis=0))


def check_shapes(sample: TrainingSample, size: int = 128) -> None:
    shape = (1, 1, size, size, size)
    assert sample.image.shape == shape and sample.image.dtype == torch.float32
    assert sample.target.shape == shape and sample.target.dtype == torch.float32
    assert sample.known.shape == shape and sample.known.dtype == torch.bool
    assert set(torch.unique(sample.target).tolist()) <= {0.0, 1.0}
    assert torch.isfinite(sample.image).all()
    assert sample.target.sum() > 0
    assert bool(sample.known[sample.target > 0].all())


# ---------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("organ", sorted(ORGANS))
def test_target_lies_on_the_organ(ct_volume, ct_labels, organ) -> None:
    value = ORGANS[organ]
    sample = prepare_sample(
        ct_volume, ct_labels, value, None, np.random.default_rng(0), augment=False, organ=organ, case_id="A"
    )
    check_shapes(sample)
    assert sample.organ == organ and sample.case_id == "A" and sample.augmentations == ()
    assert sample.spacing == 1.5
    target = sample.target[0, 0] > 0
    # nearly every target voxel is the organ in the label (the rest: sub-voxel boundary differences)
    values = nearest_label(ct_labels, region_points(sample, target))
    assert np.mean(values == value) > 0.9
    # the organ volume is preserved (the liver is larger than the region and is cut)
    organ_ml = (ct_labels.array == value).sum() * np.prod(ct_labels.spacing) / 1000
    target_ml = int(target.sum()) * 1.5**3 / 1000
    if organ == "liver":
        assert 0.5 * organ_ml < target_ml < organ_ml
    else:
        assert target_ml == pytest.approx(organ_ml, rel=0.1)
        centroid = region_points(sample, target).mean(axis=0)
        assert np.linalg.norm(centroid - organ_centroid(ct_labels, value)) < 2.0


def test_unaugmented_image_is_make_region(ct_volume, ct_labels) -> None:
    sample = prepare_sample(ct_volume, ct_labels, 1, None, np.random.default_rng(3), augment=False)
    center = sample.to_lps[:3, :3] @ np.full(3, 64.0) + sample.to_lps[:3, 3]
    region = make_region(ct_volume, torch.from_numpy(ct_volume.array.astype(np.float32)), center)
    assert torch.allclose(sample.image, region.image, atol=1e-5)
    # no unknown organ: known is the inside, the half-voxel ring at the image border included (it reads the
    # edge voxels of image and label)
    assert torch.equal(sample.known[0, 0], region.inside)


@pytest.mark.parametrize("flip", [False, True])
def test_one_pass_sampling_matches_make_region(ct_volume, ct_labels, flip) -> None:
    pose = np.diag([1.0, -1.0, 1.0]) if flip else np.eye(3)
    center = ct_volume.index_to_lps(np.array([60.3, 50.2, 14.7]))
    grid = samples_module._RegionGrid(center, ROI_DIRECTION @ pose, 1.5, 128)
    mask = ct_labels.array == 5
    image, (fraction,), trusted = samples_module._region_tensors(ct_volume, ct_labels, [mask], grid, None)
    (raw, warped_fraction), inside = samples_module._warped_sample(
        ct_volume, [ct_volume.array, mask], grid, None
    )
    assert torch.equal(trusted, inside)
    assert torch.allclose(fraction, warped_fraction, atol=1e-4)
    assert torch.allclose(image, normalize_intensity(raw)[None, None], atol=1e-3)


def test_jitter_moves_the_organ_but_keeps_it_whole(ct_volume, ct_labels) -> None:
    centroids, counts = [], []
    for seed in range(4):
        sample = prepare_sample(ct_volume, ct_labels, 2, None, np.random.default_rng(seed), augment=False)
        target = sample.target[0, 0] > 0
        centroids.append(np.argwhere(target.numpy()).mean(axis=0))
        counts.append(int(target.sum()))
    spread = np.ptp(np.array(centroids), axis=0)
    assert spread.max() > 10  # region voxels: the organ is not always centred
    assert max(counts) - min(counts) < 0.05 * max(counts)  # ... and never cut
    fixed = [
        prepare_sample(ct_volume, ct_labels, 2, None, np.random.default_rng(s), augment=False, jitter=False)
        for s in range(2)
    ]
    assert torch.equal(fixed[0].target, fixed[1].target)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_organ_larger_than_region(ct_volume, ct_labels, seed) -> None:
    # at 1.0 mm the region is 128 mm wide; the liver spans about 195 x 186 mm
    sample = prepare_sample(
        ct_volume, ct_labels, 5, None, np.random.default_rng(seed), spacing=1.0, augment=False
    )
    check_shapes(sample)
    target = sample.target[0, 0] > 0
    assert target.float().mean() > 0.2
    # the organ goes on beyond the region along its first two axes (cut by a face of the region)
    assert bool(target[0].any() or target[-1].any()) and bool(target[:, 0].any() or target[:, -1].any())
    values = nearest_label(ct_labels, region_points(sample, target))
    assert np.mean(values == 5) > 0.9


def test_organ_at_the_image_border(ct_volume, ct_labels) -> None:
    # the slab is 90 mm thick: every region reaches beyond it; the spleen touches both slab faces
    sample = prepare_sample(ct_volume, ct_labels, 1, None, np.random.default_rng(0), augment=False)
    check_shapes(sample)
    known = sample.known[0, 0]
    points = region_points(sample, torch.ones(known.shape, dtype=torch.bool)).reshape(128, 128, 128, 3)
    ijk = ct_volume.lps_to_index(points)
    outside = torch.from_numpy(np.any((ijk < -0.5) | (ijk > np.array(ct_volume.shape) - 0.5), axis=-1))
    assert outside.any() and not known[outside].any()
    assert torch.unique(sample.image[0, 0][outside]).numel() == 1  # padding: one constant value


def test_organ_touching_the_image_face() -> None:
    shape = (60, 60, 40)
    image = np.full(shape, 40, dtype=np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    label[:10, 20:40, 10:30] = 7  # touches the i = 0 face
    image[label == 7] = 200
    vol = Volume(image, origin=(5.0, -3.0, 11.0), spacing=(2.0, 2.0, 2.0))
    lab = vol.with_array(label)
    for seed in range(3):
        sample = prepare_sample(vol, lab, 7, None, np.random.default_rng(seed), augment=False)
        check_shapes(sample)
        target = sample.target[0, 0] > 0
        assert int(target.sum()) * 1.5**3 == pytest.approx(10 * 20 * 20 * 8.0, rel=0.1)
        assert (sample.known[0, 0] == ~torch.from_numpy(np.zeros(1, bool))).float().mean() < 1
        inside_target = sample.image[0, 0][target]
        assert (
            float(inside_target.mean()) > float(sample.image[0, 0][~target & sample.known[0, 0]].mean()) + 1
        )


def test_label_on_another_grid(ct_volume, ct_labels) -> None:
    lo = np.array([5, 10, 0])
    cropped = Volume(ct_labels.array[5:60, 10:70, :], ct_labels.index_to_lps(lo), ct_labels.spacing)
    cropped.direction = ct_labels.direction
    for cfg in (NONE, only(rotate_prob=1.0)):
        full = prepare_sample(ct_volume, ct_labels, 1, None, np.random.default_rng(4), config=cfg)
        part = prepare_sample(ct_volume, cropped, 1, None, np.random.default_rng(4), config=cfg)
        assert torch.equal(full.target, part.target)
        assert bool((full.known | ~part.known).all())  # known only where both grids are
        assert part.known.sum() < full.known.sum()


# ---------------------------------------------------------------------------------------------- known


def test_known_excludes_the_unknown_organs(ct_volume, ct_labels) -> None:
    unknown = np.isin(ct_labels.array, [1, 6])  # spleen and stomach rejected
    sample = prepare_sample(ct_volume, ct_labels, 5, unknown, np.random.default_rng(1), augment=False)
    plain = prepare_sample(ct_volume, ct_labels, 5, None, np.random.default_rng(1), augment=False)
    assert torch.equal(sample.target, plain.target) and torch.equal(sample.image, plain.image)
    known = sample.known[0, 0]
    everything = torch.ones(known.shape, dtype=torch.bool)
    values = nearest_label(ct_labels, region_points(sample, everything)).reshape(known.shape)
    values = torch.from_numpy(values)
    assert not known[((values == 1) | (values == 6)) & ~(sample.target[0, 0] > 0)].any()
    assert known[values == 5].float().mean() > 0.95
    assert known[values == 0].float().mean() > 0.95  # background stays known, but near the unknown organs
    assert bool((plain.known & ~sample.known).any())
    assert bool((sample.known <= plain.known).all())


def test_own_organ_stays_known_inside_an_unknown_mask(ct_volume, ct_labels) -> None:
    unknown = np.ones(ct_labels.shape, dtype=bool)  # e.g. a dilated rejected neighbour covering everything
    sample = prepare_sample(ct_volume, ct_labels, 2, unknown, np.random.default_rng(0), augment=False)
    assert torch.equal(sample.known, sample.target > 0)


# ---------------------------------------------------------------------------------------------- augmentation


def test_determinism(ct_volume, ct_labels) -> None:
    full = AugmentConfig(
        **{f.name: 1.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_prob")}
    )
    for cfg in (AugmentConfig(), full):
        a, b, c = (
            prepare_sample(
                ct_volume, ct_labels, 3, None, np.random.default_rng(seed), config=cfg, roi_size=64
            )
            for seed in (11, 11, 12)
        )
        assert a.augmentations == b.augmentations
        assert (
            torch.equal(a.image, b.image)
            and torch.equal(a.target, b.target)
            and torch.equal(a.known, b.known)
        )
        assert not torch.equal(a.image, c.image)
    assert set(a.augmentations) == {
        "spacing",
        "flip",
        "rot90",
        "rotate",
        "elastic",
        "gamma",
        "scale_shift",
        "noise",
        "remap",
        "label_contrast",
        "coverage",
    }


def test_no_augmentation_when_disabled(ct_volume, ct_labels) -> None:
    full = AugmentConfig(
        **{f.name: 1.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_prob")}
    )
    sample = prepare_sample(
        ct_volume, ct_labels, 3, None, np.random.default_rng(0), augment=False, config=full
    )
    assert sample.augmentations == () and sample.spacing == 1.5
    assert np.allclose(sample.to_lps[:3, :3], ROI_DIRECTION * 1.5)


def _liver_stats(sample: TrainingSample) -> tuple[float, float]:
    values = sample.image[0, 0][sample.target[0, 0] > 0]
    return float(values.mean()), float(values.std())


@pytest.fixture(scope="module")
def liver_stats(ct_volume, ct_labels) -> tuple[float, float]:
    """Mean and standard deviation of the normalised intensity in an unaugmented liver target."""
    return _liver_stats(prepare_sample(ct_volume, ct_labels, 5, None, np.random.default_rng(5), config=NONE))


@pytest.mark.parametrize(
    "probs",
    [
        {"elastic_prob": 1.0},
        {"rotate_prob": 1.0},
        {"rot90_prob": 1.0},
        {"flip_prob": 1.0},
        {"spacing_prob": 1.0},
        {"rotate_prob": 1.0, "elastic_prob": 1.0, "flip_prob": 1.0, "spacing_prob": 1.0},
    ],
    ids=["elastic", "rotate", "rot90", "flip", "spacing", "all_geometry"],
)
def test_geometric_augmentation_keeps_image_and_target_aligned(
    ct_volume, ct_labels, liver_stats, probs
) -> None:
    plain_mean, plain_std = liver_stats
    for seed in (5, 6) if len(probs) > 1 else (6,):
        sample = prepare_sample(
            ct_volume, ct_labels, 5, None, np.random.default_rng(seed), config=only(**probs)
        )
        check_shapes(sample)
        mean, std = _liver_stats(sample)
        assert abs(mean - plain_mean) < 0.1
        assert std < plain_std * 1.5  # a misalignment by 2 voxels gives about 2.4 times
    # a structure defined by the image itself (bone) must coincide with the image after the same warp
    bone = ct_labels.with_array((ct_volume.array > 250).astype(np.uint8))
    sample = prepare_sample(ct_volume, bone, 1, None, np.random.default_rng(7), config=only(**probs))
    target = sample.target[0, 0] > 0
    image = sample.image[0, 0]
    threshold = torch.quantile(
        image[sample.known[0, 0]].float(), 1 - target.float().sum() / sample.known.sum()
    )
    bright = image >= threshold
    dice = 2 * float((bright & target).sum()) / float(bright.sum() + target.sum())
    assert dice > 0.7  # about 0.79 aligned, 0.3-0.45 when misaligned by 2 voxels


def test_elastic_changes_the_shape_not_the_place(ct_volume, ct_labels) -> None:
    plain = prepare_sample(ct_volume, ct_labels, 2, None, np.random.default_rng(9), config=NONE)
    warped = prepare_sample(
        ct_volume, ct_labels, 2, None, np.random.default_rng(9), config=only(elastic_prob=1.0)
    )
    assert warped.augmentations == ("elastic",)
    a, b = plain.target[0, 0] > 0, warped.target[0, 0] > 0
    assert not torch.equal(a, b)
    dice = 2 * float((a & b).sum()) / float(a.sum() + b.sum())
    assert 0.5 < dice < 0.99


def test_intensity_augmentation_keeps_geometry(ct_volume, ct_labels) -> None:
    plain = prepare_sample(ct_volume, ct_labels, 6, None, np.random.default_rng(2), config=NONE)
    probs = {"gamma_prob": 1.0, "scale_shift_prob": 1.0, "noise_prob": 1.0}
    bright = prepare_sample(ct_volume, ct_labels, 6, None, np.random.default_rng(2), config=only(**probs))
    assert bright.augmentations == ("gamma", "scale_shift", "noise")
    assert torch.equal(plain.target, bright.target) and torch.equal(plain.known, bright.known)
    assert not torch.equal(plain.image, bright.image)
    corr = torch.corrcoef(torch.stack([plain.image.flatten(), bright.image.flatten()]))[0, 1]
    assert corr > 0.9


def plain_and_augmented(ct_volume, ct_labels, value: int, seed: int, **probs: float):
    """The sample of organ ``value`` without augmentation and with only ``probs``, from the same seed: the
    intensity augmentations change the image and nothing else."""
    plain = prepare_sample(ct_volume, ct_labels, value, None, np.random.default_rng(seed), config=NONE)
    changed = prepare_sample(
        ct_volume, ct_labels, value, None, np.random.default_rng(seed), config=only(**probs)
    )
    assert torch.equal(plain.target, changed.target) and torch.equal(plain.known, changed.known)
    assert not torch.equal(plain.image, changed.image)
    return plain, changed


def test_intensity_remap_swaps_tissue_brightness_and_keeps_the_statistics(ct_volume, ct_labels) -> None:
    plain, remapped = plain_and_augmented(ct_volume, ct_labels, 6, 2, remap_prob=1.0)
    assert remapped.augmentations == ("remap",)
    swapped = 0
    for seed in range(6):
        image = remap_intensity(plain.image, np.random.default_rng(seed), 6)
        assert image.shape == plain.image.shape and image.dtype == torch.float32
        assert float(image.mean()) == pytest.approx(float(plain.image.mean()), abs=1e-3)
        assert float(image.std()) == pytest.approx(float(plain.image.std()), rel=1e-3)
        assert torch.equal(image, remap_intensity(plain.image, np.random.default_rng(seed), 6))  # same seed
        # a tissue brighter than another before may be darker after: the curve is not always monotonic
        x, y = plain.image.flatten()[::97], image.flatten()[::97]
        y_by_x = y[torch.argsort(x)]
        swapped += int(bool((y_by_x[1:] < y_by_x[:-1] - 0.5).any()))
    assert swapped >= 3


def test_contrast_from_the_labels_gives_organs_of_one_density_their_own_brightness(
    ct_volume, ct_labels
) -> None:
    image, label = ct_volume.array, ct_labels.array
    air = image < AIR_HU
    kidney, spleen = label == 2, label == 1  # of one CT density (mean HU within 30 of each other here)
    assert abs(float(image[kidney].mean()) - float(image[spleen].mean())) < 30
    gaps = []
    for seed in range(8):
        painted = synthesize_contrast(image, label, np.random.default_rng(seed))
        assert painted.shape == image.shape and painted.dtype == np.float32
        assert np.array_equal(painted, synthesize_contrast(image, label, np.random.default_rng(seed)))
        assert np.all(painted[air] == 0) and float(painted[~air].min()) > 0.019 and float(painted.max()) <= 1
        # every structure keeps its shape: a structure is more uniform than the scan around it
        assert float(painted[kidney].std()) < float(painted[~air].std())
        gaps.append(abs(float(painted[kidney].mean()) - float(painted[spleen].mean())))
    assert np.mean(gaps) > 0.15  # brightness drawn in [0.1, 1] per structure: mean gap 0.3
    with pytest.raises(ValueError, match="shape"):
        synthesize_contrast(image, label[:-1], np.random.default_rng(0))


def test_contrast_from_the_labels_in_a_training_sample(ct_volume, ct_labels) -> None:
    plain, painted = plain_and_augmented(ct_volume, ct_labels, 2, 4, label_contrast_prob=1.0)
    assert painted.augmentations == ("label_contrast",)
    # the organ stands out from its surroundings as it did (the region is normalised as any scan is)
    for sample in (plain, painted):
        inner = sample.target[0, 0] > 0
        ring = torch.from_numpy(ndimage.binary_dilation(inner.numpy(), iterations=3)) & ~inner
        assert abs(float(sample.image[0, 0][inner].mean()) - float(sample.image[0, 0][ring].mean())) > 0.1
    assert AugmentConfig.from_overrides({"label_contrast_prob": 0.5}).label_contrast_prob == 0.5
    with pytest.raises(ValueError, match="label_contrast_prob"):
        AugmentConfig.from_overrides({"label_contrast_prob": 1.5})


def test_remap_points_must_be_a_whole_number_of_at_least_two() -> None:
    assert AugmentConfig.from_overrides({"remap_points": 4}).remap_points == 4
    for bad in (1, 2.5, "6"):
        with pytest.raises(ValueError, match="remap_points"):
            AugmentConfig.from_overrides({"remap_points": bad})


def test_spacing_augmentation_rescales_the_organ(ct_volume, ct_labels) -> None:
    sample = prepare_sample(
        ct_volume, ct_labels, 3, None, np.random.default_rng(0), config=only(spacing_prob=1.0)
    )
    assert 1.2 <= sample.spacing <= 2.0
    organ_ml = (ct_labels.array == 3).sum() * 27 / 1000
    assert int(sample.target.sum()) * sample.spacing**3 / 1000 == pytest.approx(organ_ml, rel=0.12)


def test_bad_input(ct_volume, ct_labels, one_line_error) -> None:
    with pytest.raises(PesfError) as excinfo:
        prepare_sample(ct_volume, ct_labels, 250, None, np.random.default_rng(0), case_id="A", organ="brain")
    one_line_error(excinfo, "A", "brain", "250")
    with pytest.raises(ValueError, match="unknown"):
        prepare_sample(ct_volume, ct_labels, 5, np.zeros((3, 3, 3), bool), np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------- clicks


def test_simulated_clicks_on_a_region(ct_volume, ct_labels) -> None:
    sample = prepare_sample(ct_volume, ct_labels, 1, None, np.random.default_rng(0), augment=False)
    target = sample.target[0, 0] > 0
    sim = ClickSimulator(seed=0)
    coords, labels = simulate_clicks(target, None, sim, spacing=sample.spacing)
    assert coords.shape == (1, 3) and coords.dtype == np.float32 and labels.tolist() == [1]
    assert target[tuple(coords[0].astype(int))]
    # a prediction missing the upper half of the organ: positive click there
    missing = target.clone()
    rows = torch.nonzero(target)[:, 2]
    missing[:, :, int(rows.float().median()) :] = False
    coords, labels = simulate_clicks(target, missing, sim)
    assert (
        labels.tolist() == [1]
        and target[tuple(coords[0].astype(int))]
        and not missing[tuple(coords[0].astype(int))]
    )
    # a prediction with a large false positive: negative click in it
    extra = target.clone()
    extra[:20, :20, :20] = True
    coords, labels = simulate_clicks(target, extra, sim)
    assert labels.tolist() == [0] and np.all(coords[0] < 20)
    # nothing to correct: a harmless positive click inside the organ
    coords, labels = simulate_clicks(target, target.clone(), sim)
    assert labels.tolist() == [1] and target[tuple(coords[0].astype(int))]


def test_simulated_clicks_are_reproducible(ct_volume, ct_labels) -> None:
    sample = prepare_sample(ct_volume, ct_labels, 6, None, np.random.default_rng(0), augment=False)
    target = sample.target[0, 0] > 0
    a = [simulate_clicks(target, None, ClickSimulator(seed=s))[0] for s in (4, 4, 5)]
    assert np.array_equal(a[0], a[1])


# ---------------------------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_synthetic_target_has_its_own_intensity(seed) -> None:
    image, target = synthetic_target(np.random.default_rng(seed), roi_size=64)
    assert image.shape == target.shape == (1, 1, 64, 64, 64)
    mask = target[0, 0] > 0
    assert mask.any() and mask.float().mean() < 0.5
    dilated = torch.nn.functional.max_pool3d(target, 7, stride=1, padding=3)[0, 0] > 0
    shell = dilated & ~mask
    contrast = abs(float(image[0, 0][mask].mean() - image[0, 0][shell].mean()))
    assert contrast > 0.5 * float(image.std())
    again, _ = synthetic_target(np.random.default_rng(seed), roi_size=64)
    assert torch.equal(image, again)


def test_synthetic_sample_is_all_known() -> None:
    sample = synthetic_sample(np.random.default_rng(0), roi_size=32)
    assert sample.known.all() and sample.target.sum() > 0 and sample.organ == "synthetic"


def test_augmentation_overrides_from_a_training_config(ct_volume, ct_labels) -> None:
    """A training config's ``augmentation`` object replaces the named defaults only; with every pose
    probability 0 the regions stay in the canonical orientation."""
    cfg = AugmentConfig.from_overrides(
        {"flip_prob": 0, "rot90_prob": 0.0, "rotate_prob": 0, "spacing_range": [1.4, 1.6]}
    )
    assert (cfg.flip_prob, cfg.rot90_prob, cfg.rotate_prob) == (0.0, 0.0, 0.0)
    assert cfg.spacing_range == (1.4, 1.6) and cfg.elastic_prob == AugmentConfig().elastic_prob
    assert AugmentConfig.from_overrides(None) == AugmentConfig()
    for seed in range(4):
        sample = prepare_sample(ct_volume, ct_labels, 5, None, np.random.default_rng(seed), config=cfg)
        assert not {"flip", "rot90", "rotate"} & set(sample.augmentations)
        assert np.allclose(sample.to_lps[:3, :3] / sample.spacing, ROI_DIRECTION)
        assert 1.4 <= sample.spacing <= 1.6
    for bad, message in [({"flip": 1}, "unknown"), ({"noise_prob": -1}, "probability"), ([1], "object")]:
        with pytest.raises(ValueError, match=message):
            AugmentConfig.from_overrides(bad)


@pytest.mark.parametrize("value", [5, 6])
def test_click_centred_regions(ct_volume, ct_labels, value) -> None:
    """With ``click_center_prob`` 1 the region is centred on a voxel deep inside the organ, large (liver) or
    small, and that voxel is the sample's first click, as inference centres a region on the first click;
    the default framing leaves the first click to the simulated user."""
    cfg = dataclasses.replace(NONE, click_center_prob=1.0)
    mask = ct_labels.array == value
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=ct_labels.spacing)[1:-1, 1:-1, 1:-1]
    centres = []
    for seed in range(4):
        sample = prepare_sample(ct_volume, ct_labels, value, None, np.random.default_rng(seed), config=cfg)
        np.testing.assert_array_equal(sample.first_click, [64.0, 64.0, 64.0])
        assert sample.target[0, 0, 64, 64, 64] > 0
        centre = sample.to_lps[:3, 3] + sample.to_lps[:3, :3] @ np.full(3, 64.0)
        ijk = np.round(ct_labels.lps_to_index(centre)).astype(int)
        assert depth[tuple(ijk)] >= 0.6 * depth.max() - 1e-6  # deep inside, as a first click
        centres.append(centre)
    assert np.ptp(np.array(centres), axis=0).max() > 0  # not always the same voxel
    framed = prepare_sample(ct_volume, ct_labels, value, None, np.random.default_rng(0), config=NONE)
    assert framed.first_click is None
    validation = prepare_sample(
        ct_volume, ct_labels, value, None, np.random.default_rng(0), config=cfg, jitter=False
    )
    assert validation.first_click is None  # validation regions stay centred on the organ's box


def test_coverage_cuts_the_scan_to_a_slab(ct_volume, ct_labels) -> None:
    """With ``coverage_prob`` 1 the scan is cut to a slab of slices around the region's centre: the known
    voxels span at most the slab (plus interpolation), the organ is asked for only inside it, and a slab
    thinner than the organ leaves part of it out; ranges must be positive millimetres."""
    cfg = dataclasses.replace(NONE, coverage_prob=1.0, coverage_range=(3.0, 12.0))
    full = prepare_sample(ct_volume, ct_labels, 5, None, np.random.default_rng(0), config=NONE)
    for seed in range(4):
        sample = prepare_sample(ct_volume, ct_labels, 5, None, np.random.default_rng(seed), config=cfg)
        assert "coverage" in sample.augmentations
        known, target = sample.known[0, 0], sample.target[0, 0] > 0
        rows = torch.nonzero(known.any(0).any(0)).flatten()  # region axis 2 is superior
        reach = float(rows.max() - rows.min() + 1) * sample.spacing
        assert reach <= 12.0 + 2 * float(ct_volume.spacing[2]) + 2 * sample.spacing
        assert target.any() and not (target & ~known).any()
        assert int(target.sum()) < int((full.target > 0).sum())
    with pytest.raises(ValueError, match="above 0"):
        AugmentConfig.from_overrides({"coverage_range": [0, 5]})


def test_coverage_slab_follows_the_slice_axis_of_a_thick_slice_scan() -> None:
    """A sagittal scan of 6 mm slices (the thick axis is left-right) is cut along that axis, not superior."""
    array = np.zeros((12, 80, 80), dtype=np.float32)
    vol = Volume(array, origin=[0.0, 0.0, 0.0], spacing=[6.0, 1.0, 1.0], direction=np.eye(3))
    for seed in range(5):
        rng = np.random.default_rng(seed)
        slab, axis = samples_module._slab(
            vol, vol.index_to_lps(np.array([6.0, 40.0, 40.0])), rng, (6.0, 18.0)
        )
        assert axis == 0 and slab.shape[1:] == (80, 80) and 1 <= slab.shape[0] <= 3
    axial = Volume(np.zeros((80, 80, 12), dtype=np.float32), [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], np.eye(3))
    slab, axis = samples_module._slab(
        axial, np.array([40.0, 40.0, 6.0]), np.random.default_rng(0), (3.0, 3.0)
    )
    assert axis == 2 and slab.shape == (80, 80, 3)  # isotropic: the axis nearest superior


def test_click_centre_of_a_thin_organ_in_a_large_box() -> None:
    """A thin structure whose box is large (a rib-like diagonal line) is missed by the subsampled depth
    grid; its click-centred region is still centred on one of its voxels."""
    from pesf.train.samples import _click_center

    mask = np.zeros((200, 201, 200), dtype=bool)
    i = np.arange(200)
    mask[i, (i + 1) % 200, i] = True  # the box starts at 0 on every axis; never on a grid of every 4th voxel
    label = Volume(mask.astype(np.uint8), spacing=[0.8, 0.8, 1.0])
    for seed in range(3):
        ijk = np.round(label.lps_to_index(_click_center(label, mask, np.random.default_rng(seed)))).astype(
            int
        )
        assert mask[tuple(ijk)]


def test_a_thin_slab_is_extruded_and_the_organ_asked_for_only_within_it(ct_volume, ct_labels) -> None:
    """With ``extrude_mm`` a slab at most that thick is read on beyond its edge slices (every region layer
    beyond it repeats the nearest edge layer) and is not warped; the organ is still asked for only within the
    slab, as without extrusion. A thicker slab is not extruded."""
    cfg = dataclasses.replace(
        NONE, coverage_prob=1.0, coverage_range=(3.0, 3.0), extrude_mm=30.0, elastic_prob=1.0
    )
    plain = dataclasses.replace(cfg, extrude_mm=0.0)
    for seed in range(3):
        sample = prepare_sample(ct_volume, ct_labels, 5, None, np.random.default_rng(seed), config=cfg)
        flat = prepare_sample(ct_volume, ct_labels, 5, None, np.random.default_rng(seed), config=plain)
        assert {"coverage", "extrude"} <= set(sample.augmentations) and "elastic" not in sample.augmentations
        assert "extrude" not in flat.augmentations
        known, target = sample.known[0, 0], sample.target[0, 0] > 0
        layers = torch.nonzero(known.any(0).any(0)).flatten()  # region axis 2 is superior
        assert 1 <= len(layers) <= 4 and target.any() and not (target & ~known).any()
        image = sample.image[0, 0]
        low, high = int(layers.min()), int(layers.max())
        torch.testing.assert_close(image[:, :, 0], image[:, :, low - 2])  # below: the lowest slice repeated
        torch.testing.assert_close(image[:, :, -1], image[:, :, high + 2])  # above: the highest
        assert float(image[:, :, 0].std()) > 0.1  # the anatomy, not a fill
        beyond = flat.image[0, 0][:, :, 0]
        assert float(beyond.std()) < 1e-5  # without extrusion the fill
    thick = dataclasses.replace(cfg, coverage_range=(40.0, 40.0))
    sample = prepare_sample(ct_volume, ct_labels, 5, None, np.random.default_rng(0), config=thick)
    assert "coverage" in sample.augmentations and "extrude" not in sample.augmentations
