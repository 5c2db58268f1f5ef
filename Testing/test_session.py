"""The interactive session: geometry of clicks and paste-back, caching, undo, growth, label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ball_model import BallModel

from pesf.errors import PesfError
from pesf.interactive import InteractiveSession, SessionConfig
from pesf.interactive.roi import make_region
from pesf.io.volume import Volume


def _rotation(angle: float, axis: int) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    a, b = [i for i in range(3) if i != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


GRIDS = {
    "axis-aligned LPS": dict(direction=np.eye(3), spacing=[0.8, 0.8, 2.0]),
    "RAS flipped": dict(direction=np.diag([-1.0, -1.0, 1.0]), spacing=[1.5, 1.5, 1.5]),
    "permuted axes": dict(
        direction=np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]]), spacing=[2.0, 1.0, 3.0]
    ),
    "oblique": dict(direction=_rotation(0.35, 2) @ _rotation(0.2, 0), spacing=[1.2, 0.9, 2.5]),
}


def _volume(shape=(90, 80, 50), **geometry) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.uniform(-100, 300, shape).astype(np.float32), origin=[12.5, -40.0, 88.0], **geometry)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_click_lands_at_its_physical_position(grid):
    """A ball drawn around the click in region space comes back centred on the click in the input grid."""
    vol = _volume(**GRIDS[grid])
    session = InteractiveSession(BallModel(radius=8), vol, SessionConfig(confidence_runs=0, refine=None))
    click = np.array([45.0, 37.0, 24.0])
    res = session.add_click("organ", click)
    idx = np.argwhere(res.full_mask())
    assert len(idx) > 0
    pts = vol.index_to_lps(idx)
    centre = vol.index_to_lps(click)
    # centroid within a fraction of a voxel, radius close to 8 region voxels of 1.5 mm
    assert np.linalg.norm(pts.mean(axis=0) - centre) < 0.5 * vol.spacing.min()
    radius = np.linalg.norm(pts - centre, axis=1).max()
    assert 8 * 1.5 - 2 * vol.spacing.max() < radius < 8 * 1.5 + vol.spacing.max()
    # the crop is the organ's neighbourhood, not the whole grid
    assert np.prod(res.probability.shape) < 0.5 * np.prod(vol.shape)


def test_second_click_in_region_reuses_embedding_and_undo_restores():
    vol = _volume(**GRIDS["axis-aligned LPS"])
    model = BallModel(radius=6)
    session = InteractiveSession(model, vol)
    first = session.add_click("liver", (45, 40, 25))
    assert model.image_encoder.calls == 1
    second = session.add_click("liver", (48, 40, 25), positive=False)
    assert model.image_encoder.calls == 1, "a click inside a cached region must not re-run the encoder"
    assert second.voxel_count < first.voxel_count
    assert second.timings["encode_s"] == 0.0
    # another organ's first click reuses the region only near its centre (the framing the model knows)
    session.add_click("spleen", (46, 40, 25))
    assert model.image_encoder.calls == 1
    restored = session.undo("liver")
    assert restored.voxel_count == first.voxel_count
    np.testing.assert_array_equal(restored.full_mask(), first.full_mask())
    session.undo("liver")
    assert session.result("liver").voxel_count == 0
    with pytest.raises(PesfError, match="nothing to undo"):
        session.undo("liver")


def test_first_click_of_an_organ_gets_a_region_centred_on_it():
    """Inside a cached region but off its centre, an organ's first click opens a region centred on the click
    (models are trained with regions centred on the first click); its later clicks reuse that region."""
    vol = _volume(**GRIDS["axis-aligned LPS"])
    model = BallModel(radius=6)
    session = InteractiveSession(model, vol, SessionConfig(confidence_runs=0))
    session.add_click("liver", (45, 40, 25))
    session.add_click("kidney", (30, 40, 25))
    assert model.image_encoder.calls == 2
    kidney = session._organs["kidney"]
    region = session._regions[kidney.regions[0]]
    centre = vol.index_to_lps(np.array([30.0, 40.0, 25.0]))
    np.testing.assert_allclose(region.lps_to_index(centre), [64.0, 64.0, 64.0], atol=1e-6)
    session.add_click("kidney", (33, 40, 25), positive=False)
    assert model.image_encoder.calls == 2 and kidney.regions == session._organs["kidney"].regions


def test_click_far_away_opens_new_region():
    vol = _volume(shape=(200, 200, 60), **GRIDS["axis-aligned LPS"])
    model = BallModel(radius=6)
    session = InteractiveSession(model, vol)
    session.add_click("a", (20, 20, 30))
    session.add_click("a", (180, 180, 30))
    assert model.image_encoder.calls == 2
    mask = session.result("a").full_mask()
    assert mask[20, 20, 30] and mask[180, 180, 30]


def test_click_outside_image_is_refused_and_state_kept():
    vol = _volume(**GRIDS["axis-aligned LPS"])
    session = InteractiveSession(BallModel(), vol)
    session.add_click("a", (10, 10, 10))
    with pytest.raises(PesfError, match="outside the image"):
        session.add_click("a", (10, 10, 60))
    assert session.n_clicks("a") == 1


def test_failed_decode_leaves_previous_result():
    vol = _volume(**GRIDS["axis-aligned LPS"])
    model = BallModel()
    session = InteractiveSession(model, vol)
    before = session.add_click("a", (40, 40, 25))

    def broken(*args, **kwargs):
        raise RuntimeError("decoder failed")

    model.mask_decoder.forward = broken
    with pytest.raises(RuntimeError):
        session.add_click("a", (42, 40, 25))
    assert session.n_clicks("a") == 1
    np.testing.assert_array_equal(session.result("a").full_mask(), before.full_mask())


def test_large_organ_grows_into_overlapping_regions():
    """An organ longer than one 192 mm region is followed into neighbour regions."""
    vol = _volume(shape=(60, 60, 200), direction=np.eye(3), spacing=[2.0, 2.0, 2.0])  # 400 mm along S
    model = BallModel(radius=70)  # 105 mm ball reaches the region's border along every axis
    grown = InteractiveSession(model, vol, SessionConfig(confidence_runs=0, max_regions_per_organ=4))
    single = InteractiveSession(model, vol, SessionConfig(confidence_runs=0, grow=False))
    click = (30, 30, 100)
    g = grown.add_click("aorta", click)
    s = single.add_click("aorta", click)
    assert s.n_regions == 1 and g.n_regions > 1
    extent = lambda m: np.ptp(np.argwhere(m)[:, 2]) * 2.0  # noqa: E731
    assert extent(g.full_mask()) > extent(s.full_mask()) + 30


def test_grown_regions_are_centred_on_their_seed_and_dropped_when_they_disagree():
    """A grown region is centred on its seed point (a positive point in the organ near the face it grows
    through, the framing of a click); one whose mask disagrees with the mask it grew from is dropped."""
    vol = _volume(shape=(60, 60, 200), direction=np.eye(3), spacing=[2.0, 2.0, 2.0])
    session = InteractiveSession(BallModel(radius=70), vol, SessionConfig(confidence_runs=0))
    session.add_click("aorta", (30, 30, 100))
    state = session._organs["aorta"]
    assert len(state.regions) > 1
    for key in state.regions[1:]:
        (seed,) = state.auto_points[key]
        np.testing.assert_allclose(session._regions[key].lps_to_index(seed.lps), [64.0] * 3, atol=1e-6)

    class Elsewhere(BallModel):
        """The first decode is a ball that fills the region; later ones segment a far corner only."""

        def __init__(self) -> None:
            super().__init__(radius=70)
            decode = self.mask_decoder.forward
            self.decodes = 0

            def forward(*args, **kwargs):
                self.decodes += 1
                low, iou = decode(*args, **kwargs)
                if self.decodes > 1:
                    low = torch.full_like(low, -10.0)
                    low[..., :4, :4, :4] = 10.0
                return low, iou

            self.mask_decoder.forward = forward

    model = Elsewhere()
    session = InteractiveSession(model, vol, SessionConfig(confidence_runs=0))
    result = session.add_click("aorta", (30, 30, 100))
    assert model.decodes > 1, "the organ tried to grow"
    assert result.n_regions == 1 and session._organs["aorta"].auto_points == {}


def test_a_sliver_at_the_border_does_not_seed_growth():
    region = make_region(_volume(**GRIDS["axis-aligned LPS"]), torch.zeros(90, 80, 50), np.zeros(3), 32)
    mask = np.zeros((32, 32, 32), dtype=bool)
    mask[10:20, 10:20, 10:20] = True
    mask[14, 14, 20:] = True  # a one-voxel line to the face k = 31
    assert InteractiveSession._interior_point(mask, 2, 1, region) is None
    mask[12:18, 12:18, 20:] = True  # the organ itself goes on through the face
    point = InteractiveSession._interior_point(mask, 2, 1, region)
    assert point is not None and region.lps_to_index(point)[2] >= 24


def test_a_click_in_another_organ_s_region_gets_its_own_region():
    """Off the centre of another organ's region, an organ's later click gets a region centred on it."""
    vol = _volume(shape=(200, 80, 50), **{k: v for k, v in GRIDS["axis-aligned LPS"].items()})
    model = BallModel(radius=6)
    session = InteractiveSession(model, vol, SessionConfig(confidence_runs=0))
    session.add_click("liver", (40, 40, 25))
    session.add_click("kidney", (180, 40, 25))
    assert model.image_encoder.calls == 2
    session.add_click("kidney", (60, 40, 25))  # inside the liver's region, off its centre
    assert model.image_encoder.calls == 3
    kidney = session._organs["kidney"]
    assert len(kidney.regions) == 2 and not set(kidney.regions) & set(session._organs["liver"].regions)


def test_a_corrective_click_beyond_the_organ_s_regions_frames_it_with_the_first_click():
    """A later click outside the organ's regions opens a region that also holds the organ's first click
    when it can (the click at least ``reuse_margin`` voxels inside), so the model sees both."""
    vol = _volume(shape=(60, 60, 200), direction=np.eye(3), spacing=[2.0, 2.0, 2.0])
    config = SessionConfig(confidence_runs=0, grow=False)
    session = InteractiveSession(BallModel(radius=6), vol, config)
    session.add_click("aorta", (30, 30, 40))
    result = session.add_click("aorta", (30, 30, 120))
    state = session._organs["aorta"]
    assert result.n_regions == 2
    region = session._regions[state.regions[1]]
    first, second = (vol.index_to_lps(np.array(c, dtype=float)) for c in ((30, 30, 40), (30, 30, 120)))
    assert region.contains(first) and region.contains(second, config.reuse_margin)
    assert not region.contains(second, config.reuse_margin + 1)  # moved as far towards the first as allowed
    mask = result.full_mask()
    assert mask[30, 30, 40] and mask[30, 30, 120]


def test_confidence_map_and_score():
    vol = _volume(**GRIDS["axis-aligned LPS"])
    session = InteractiveSession(
        BallModel(radius=12), vol, SessionConfig(confidence_runs=4, perturb_sigma=2.0)
    )
    res = session.add_click("a", (45, 40, 25))
    conf = res.full_confidence_map()
    assert conf.shape == vol.shape and conf.min() >= 0 and conf.max() <= 1
    # disagreement only near the boundary: interior and far background are certain
    assert conf[45, 40, 25] == 1.0 and conf[0, 0, 0] == 1.0
    assert conf.min() < 1.0
    assert 0.3 < res.confidence < 1.0 and res.confidence_source == "perturbation"


def test_label_map_values_and_overlap():
    vol = _volume(**GRIDS["axis-aligned LPS"])
    session = InteractiveSession(BallModel(radius=6), vol, SessionConfig(confidence_runs=0))
    session.add_click("left", (40, 40, 25))
    session.add_click("right", (46, 40, 25))
    lm = session.label_map({"left": 3, "right": 7})
    assert lm.shape == vol.shape and set(np.unique(lm)) == {0, 3, 7}
    assert lm[40, 40, 25] == 3 and lm[46, 40, 25] == 7


@pytest.mark.parametrize("grid", list(GRIDS))
def test_resample_paths_agree(grid):
    """The separable path (aligned grids) and grid_sample (any grid) compute the same interpolation."""
    rng = np.random.default_rng(1)
    import torch

    src = torch.from_numpy(rng.normal(size=(20, 24, 18)).astype(np.float32))
    m = GRIDS[grid]["direction"] * 0.7
    t = np.array([3.2, 4.1, 2.7])
    from pesf.interactive import resample as rs

    fast = rs.resample_affine(src, m, t, (16, 15, 14), fill=-5.0)
    ref = rs._resample_grid_sample(src, m, t, (16, 15, 14), fill=-5.0)
    # compare where the source position lies between voxel centres (c in [0, n-1] on every axis);
    # beyond that, grid_sample's zero padding blends with the fill while the separable path does not
    strict = rs.inside_mask(m, t - 0.5, (16, 15, 14), tuple(n - 1 for n in src.shape))
    assert int(strict.sum()) > 100
    assert torch.allclose(fast[strict], ref[strict], atol=1e-4)
    assert torch.all(fast[~rs.inside_mask(m, t, (16, 15, 14), src.shape)] == -5.0)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_resample_border_reads_the_edge_voxel(grid):
    """With border=0.5 a position up to half a voxel beyond the outermost voxel centres reads the edge
    voxel."""
    from pesf.interactive import resample as rs

    rng = np.random.default_rng(2)
    src = torch.from_numpy(rng.normal(size=(20, 24, 18)).astype(np.float32))
    m = GRIDS[grid]["direction"] * 0.7
    shape = (40, 42, 36)
    # output centre onto the source centre, a little off: the output reaches beyond the source on every side
    t = (np.array(src.shape) - 1) / 2 - m @ ((np.array(shape) - 1) / 2) + np.array([0.13, -0.21, 0.08])
    fast = rs.resample_affine(src, m, t, shape, fill=-5.0, border=0.5)
    ref = rs._resample_grid_sample(src, m, t, shape, fill=-5.0, border=0.5)
    inside = rs.inside_mask(m, t, shape, src.shape)  # -0.5 <= index <= n - 0.5
    ring = inside & ~rs.inside_mask(m, t - 0.5, shape, tuple(n - 1 for n in src.shape))
    assert int(ring.sum()) > 20
    assert torch.allclose(fast[inside], ref[inside], atol=1e-4)
    assert torch.all(fast[~inside] == -5.0) and torch.all(ref[~inside] == -5.0)
    assert not torch.any(fast[ring] == -5.0)
    # along one axis: index -0.5 reads voxel 0, index n - 0.5 reads voxel n - 1
    line = torch.arange(1.0, 5.0)[:, None, None].expand(4, 1, 1).contiguous()
    out = rs.resample_affine(line, np.eye(3), np.array([-0.5, 0.0, 0.0]), (5, 1, 1), fill=-9.0, border=0.5)
    assert out.flatten().tolist() == [1.0, 1.5, 2.5, 3.5, 4.0]
    out = rs.resample_affine(line, np.eye(3), np.array([-0.5, 0.0, 0.0]), (5, 1, 1), fill=-9.0)
    assert out.flatten().tolist() == [-9.0, 1.5, 2.5, 3.5, -9.0]


def test_a_few_slice_scan_fills_a_region_layer_per_slice_thickness():
    """A 3-slice scan (1 mm slices) centred in a 1.5 mm region: three region layers read the scan, not one."""
    array = np.zeros((60, 50, 3), dtype=np.float32)
    array[..., 0], array[..., 1], array[..., 2] = 100.0, 200.0, 400.0
    vol = Volume(array, origin=[0.0, 0.0, 0.0], spacing=[0.8, 0.8, 1.0], direction=np.eye(3))
    region = make_region(vol, torch.from_numpy(array), vol.index_to_lps(np.array([30.0, 25.0, 1.0])), 32, 1.5)
    layers = np.flatnonzero(region.inside.any(dim=0).any(dim=0).numpy())  # RAS region: axis 2 is superior
    assert layers.tolist() == [15, 16, 17]
    image = region.image[0, 0]
    values = [float(image[16, 16, k]) for k in layers]
    # the region is z-normalised: compare the layers' order and spacing, 100 < 200 < 400 HU
    assert values[0] < values[1] < values[2]
    assert (values[2] - values[1]) == pytest.approx(2 * (values[1] - values[0]), rel=1e-4)
    outside = image[:, :, [k for k in range(32) if k not in layers]]
    assert torch.all(outside == outside.flatten()[0])  # the fill beyond the scan's extent


@pytest.mark.parametrize("grid", ["axis-aligned LPS", "oblique"])
def test_resample_border_per_axis_extrudes_along_one_axis(grid):
    """A border given per source axis reads the edge slices on beyond the source along that axis only (both
    resampling paths): a few-slice scan extruded along its slice axis."""
    from pesf.interactive import resample as rs

    rng = np.random.default_rng(3)
    src = torch.from_numpy(rng.normal(size=(20, 24, 3)).astype(np.float32))
    m = GRIDS[grid]["direction"] * 0.7
    shape = (30, 34, 20)
    t = (np.array(src.shape) - 1) / 2 - m @ ((np.array(shape) - 1) / 2)
    border = [0.5, 0.5, 1000.0]
    fast = rs.resample_affine(src, m, t, shape, fill=-5.0, border=border)
    ref = rs._resample_grid_sample(src, m, t, shape, fill=-5.0, border=border)
    read = rs.inside_mask(m, t, shape, src.shape, border=border)
    scan = rs.inside_mask(m, t, shape, src.shape)
    assert int((read & ~scan).sum()) > 1000  # read beyond the three slices
    assert torch.allclose(fast[read], ref[read], atol=1e-4)
    assert torch.all(fast[~read] == -5.0) and not torch.any(fast[read] == -5.0)
    if grid == "axis-aligned LPS":  # output axis 2 follows the slices: beyond them the edge slice repeats
        lows = [k for k in range(shape[2]) if not scan[:, :, k].any()]
        assert lows and torch.equal(fast[:, :, lows[0]], fast[:, :, 0])
        assert torch.allclose(fast[:, :, 0], fast[:, :, 1])
    with pytest.raises(ValueError, match="negative"):
        rs.resample_affine(src, m, t, shape, border=[0.5, -1.0, 0.5])


@pytest.mark.parametrize("setting", ["metadata", "config on", "config off", "thick scan"])
def test_a_few_slice_scan_is_extruded_for_a_model_trained_so(setting):
    """A model whose metadata says it was trained on extruded slabs (``"thin_scans": "extrude"``) sees a
    few-slice scan read on beyond its edge slices along its thinnest axis; ``thin_scan_extrude`` overrides
    the metadata, and a thick scan is never extruded. Only the scan's own slices are segmented."""
    thickness = 60.0 if setting == "thick scan" else 3.0
    vol = _volume(shape=(90, 80, 3), direction=np.eye(3), spacing=[0.8, 0.8, thickness / 3])
    model = BallModel(radius=8)
    model.metadata = {} if setting == "config on" else {"thin_scans": "extrude"}
    extrude = {"config on": True, "config off": False}.get(setting)
    seen = []
    model.image_encoder.register_forward_hook(lambda module, args, out: seen.append(args[0][0, 0].clone()))
    session = InteractiveSession(
        model, vol, SessionConfig(confidence_runs=0, refine=None, thin_scan_extrude=extrude)
    )
    result = session.add_click("organ", (45, 40, 1))
    region = seen[0]
    layers = np.flatnonzero(session._regions[0].inside.any(dim=0).any(dim=0).numpy())
    beyond = region[:, :, [k for k in range(region.shape[2]) if k not in layers]]
    extruded = setting in ("metadata", "config on")
    assert (float(beyond.std()) > 0.1) == extruded  # the scan's slices repeated, or the fill
    if extruded:
        torch.testing.assert_close(region[:, :, 0], region[:, :, int(layers.min())])
    assert result.voxel_count > 0 and result.full_mask().shape == vol.shape


@pytest.mark.parametrize("thickness_mm", [10.0, 40.0])
def test_first_click_on_a_few_slice_scan_reads_the_mask_with_an_offset(thickness_mm):
    """On a scan at most ``thin_scan_mm`` thick, the decodes of an organ's first click have
    ``thin_scan_offset`` added to their logits (a wider mask, and the confidence read from the same logits);
    the model's own logits stay its mask prompt, and the second click is decoded without the offset. A
    thicker scan gets no offset at all."""
    vol = _volume(shape=(90, 80, 5), direction=np.eye(3), spacing=[0.8, 0.8, thickness_mm / 5])
    thin = thickness_mm <= SessionConfig().thin_scan_mm
    sessions = {
        offset: InteractiveSession(
            BallModel(radius=8), vol, SessionConfig(confidence_runs=2, refine=None, thin_scan_offset=offset)
        )
        for offset in (0.0, 1.5)
    }
    first = {k: s.add_click("organ", (45, 40, 2)) for k, s in sessions.items()}

    def logits(result):  # on the whole grid, NaN beyond the result's crop
        out = np.full(vol.shape, np.nan, dtype=np.float32)
        out[result.bbox] = result.logits
        return out

    base, shifted = logits(first[0.0]), logits(first[1.5])
    inside = base > -10  # where the ball model's logits are its own (not the paste-back's fill)
    assert inside.sum() > 1000
    np.testing.assert_allclose(shifted[inside] - base[inside], 1.5 if thin else 0.0, atol=1e-5)
    if thin:
        assert first[1.5].voxel_count > first[0.0].voxel_count
        states = {k: s._organs["organ"] for k, s in sessions.items()}
        key = states[0.0].regions[0]
        torch.testing.assert_close(states[1.5].low_res[key], states[0.0].low_res[key])  # the prompt
        maps = {k: r.full_confidence_map() for k, r in first.items()}
        assert maps[1.5][45, 40, 2] == 1.0 and not np.array_equal(maps[0.0], maps[1.5])
    else:
        assert first[1.5].voxel_count == first[0.0].voxel_count
    second = {k: s.add_click("organ", (47, 40, 2)) for k, s in sessions.items()}
    np.testing.assert_allclose(logits(second[1.5]), logits(second[0.0]), atol=1e-5)
