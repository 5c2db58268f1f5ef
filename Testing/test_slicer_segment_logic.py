"""PESF Segment's Logic on slicer-core: a real MRML scene, volumes read through storage nodes, real markups
and segmentations. Geometry is checked exactly with the ball model (a ball of known radius around each
positive click); the real model runs from a seeded ``tiny`` checkpoint."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from ball_model import BallModel
from slicer_scene import SlicerTestApp, load_volume

from pesf.interactive import InteractiveSession, SessionConfig
from pesf.io import read_labelmap, read_volume, write_volume
from pesf.io.volume import Volume, ras_to_lps
from pesf.train.store import CaseStore

# isort: split
# (after slicer_scene, which puts the modules' folders on sys.path as Slicer does)
from PESFSegmentLib import (
    ModelChoice,
    PESFSegmentLogic,
    SegmentEvent,
    activeTrainedModel,
    curation,
    dependencies,
    setActiveTrainedModel,
)
from PESFSegmentLib.export import segmentMask
from PESFSegmentLib.geometry import indexToRas, rasToIndex, volumeFromNode
from PESFSegmentLib.worker import CONFIDENCE, MASK, Click, InferenceWorker

TIMEOUT = 120.0


class FlakyBallModel(BallModel):
    """The ball model whose decoder raises while ``fail`` is set (a failing inference)."""

    def __init__(self, radius: float = 6.0) -> None:
        super().__init__(radius=radius)
        self.fail = False
        decode = self.mask_decoder.forward

        def forward(*args, **kwargs):
            if self.fail:
                raise RuntimeError("decoder out of memory")
            return decode(*args, **kwargs)

        self.mask_decoder.forward = forward


@pytest.fixture
def app():
    app = SlicerTestApp.create()
    yield app
    app.close()


@pytest.fixture
def ct_node(app, samples):
    return load_volume(app.scene, samples.ct_image, "A_ct")


@pytest.fixture
def events():
    return []


def make_logic(app, volume_node, model, events, version="ball", sessionConfig=None):
    logic = PESFSegmentLogic(
        app.scene, eventCallback=lambda event, info: events.append((event, info)), sessionConfig=sessionConfig
    )
    logic.setModelLoader(lambda: model, version)
    logic.setInputVolume(volume_node)
    return logic


@pytest.fixture
def ball_logic(app, ct_node, events):
    logic = make_logic(app, ct_node, BallModel(radius=6), events)
    yield logic
    logic.cleanup()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from pesf.models import build_model, save_checkpoint

    return save_checkpoint(build_model("tiny", seed=0), tmp_path_factory.mktemp("models") / "tiny.pt")


def errors(events):
    return [info for event, info in events if event == SegmentEvent.ERROR]


def mask_of(logic, organ):
    state = logic.organ(organ)
    return segmentMask(logic.segmentationNode, state.segmentId, logic.volumeNode)


def centroid_ras(logic, organ):
    return indexToRas(logic.volumeNode, np.argwhere(mask_of(logic, organ)).mean(axis=0))


# --------------------------------------------------------------------------- geometry at the edges


def test_volume_node_becomes_the_engine_volume(ct_node, samples):
    """Voxels [k,j,i] -> [i,j,k] and IJK-to-RAS -> LPS geometry equal what the engine reads from the file."""
    volume, reference = volumeFromNode(ct_node), read_volume(samples.ct_image)
    assert np.array_equal(volume.array, reference.array)
    assert volume.same_geometry(reference, tol=1e-5)


@pytest.mark.parametrize("flipped", [False, True], ids=["proper", "improper direction"])
def test_oblique_volume_node_has_the_file_geometry(app, oblique_factory, tmp_path, flipped):
    """An oblique, anisotropic volume: every voxel of the node sits where the file puts its value.

    Slicer makes an improper (left-handed) grid right-handed by reversing an axis, so for that case the
    voxels are compared by physical position rather than by index.
    """
    oblique = oblique_factory(flipped=flipped)
    write_volume(oblique, tmp_path / "oblique.nrrd")
    node = load_volume(app.scene, tmp_path / "oblique.nrrd")
    volume = volumeFromNode(node)
    ijk = np.argwhere(np.ones(volume.shape, bool)).astype(float)
    in_file = np.rint(oblique.lps_to_index(volume.index_to_lps(ijk))).astype(int)
    assert np.allclose(oblique.lps_to_index(volume.index_to_lps(ijk)), in_file, atol=1e-4)
    assert np.array_equal(volume.array.ravel(), oblique.array[tuple(in_file.T)])
    if not flipped:
        assert volume.same_geometry(oblique, tol=1e-5)
    ras = indexToRas(node, [[3.0, 4.0, 5.0]])
    assert np.allclose(ras_to_lps(ras), volume.index_to_lps([[3.0, 4.0, 5.0]]), atol=1e-4)
    assert np.allclose(rasToIndex(node, ras), [[3.0, 4.0, 5.0]], atol=1e-6)


@pytest.mark.parametrize("where", ["sample CT", "oblique NRRD"])
def test_points_placed_in_ras_become_the_right_voxels(app, ct_node, events, where, oblique_factory, tmp_path):
    """The segment of one positive point is a ball centred on the point (centroid within half a voxel)."""
    radius = 6
    if where == "sample CT":
        node, ijk = ct_node, np.array([61.3, 48.7, 14.2])
    else:  # the oblique, anisotropic, left-handed grid of the engine tests, large enough for the ball
        grid = oblique_factory(flipped=True)
        shape = (64, 48, 24)
        array = (np.arange(np.prod(shape)) % 997).reshape(shape).astype(np.int16)
        write_volume(Volume(array, grid.origin, grid.spacing, grid.direction), tmp_path / "oblique.nrrd")
        node, ijk = load_volume(app.scene, tmp_path / "oblique.nrrd"), np.array([31.6, 22.3, 11.8])
    # the model's ball as it is (the refinement would let the image move its boundary)
    logic = make_logic(app, node, BallModel(radius=radius), events, sessionConfig=SessionConfig(refine=None))
    try:
        logic.addOrgan("liver")
        point = indexToRas(node, ijk)
        logic.addPrompt("liver", point)
        assert logic.waitForResults(TIMEOUT)
        assert not errors(events)
        clicks = logic.worker._applied["liver"]
        assert np.allclose(clicks[0].lps, ras_to_lps(point))
        centre_index = rasToIndex(node, centroid_ras(logic, "liver"))
        assert np.all(np.abs(centre_index - ijk) < 0.5), (centre_index, ijk)
        ras_radius = np.linalg.norm(
            indexToRas(node, np.argwhere(mask_of(logic, "liver"))) - point, axis=1
        ).max()
        spacing = np.array(node.GetSpacing())
        assert radius * 1.5 - spacing.max() <= ras_radius <= radius * 1.5 + spacing.max()
    finally:
        logic.cleanup()


# --------------------------------------------------------------------------- segments, tags, review


def test_segment_created_with_tags_terminology_and_table_row(ball_logic, ct_node, events):
    state = ball_logic.addOrgan("Left kidney")
    assert state.name == "kidney_left" and state.entry.labelValue == 3
    ball_logic.addPrompt("kidney_left", indexToRas(ct_node, [60, 50, 15]))
    assert ball_logic.waitForResults(TIMEOUT)
    segment = ball_logic.segmentationNode.GetSegmentation().GetSegment(state.segmentId)
    assert segment.GetName() == "Left kidney"
    assert (
        "SCT^64033007^Kidney" in segment.GetTerminology() and "SCT^7771000^Left" in segment.GetTerminology()
    )
    tags = {
        name: curation.readTag(segment, name)
        for name in (
            curation.TAG_ORGAN,
            curation.TAG_STATUS,
            curation.TAG_SOURCE,
            curation.TAG_MODEL_VERSION,
            curation.TAG_CLICKS,
        )
    }
    assert tags == {
        curation.TAG_ORGAN: "kidney_left",
        curation.TAG_STATUS: "pending",
        curation.TAG_SOURCE: "clicks",
        curation.TAG_MODEL_VERSION: "ball",
        curation.TAG_CLICKS: "1",
    }
    confidence = float(curation.readTag(segment, curation.TAG_CONFIDENCE))
    assert 0.0 <= confidence <= 1.0 and confidence == pytest.approx(state.confidence, abs=1e-3)
    display = ball_logic.segmentationNode.GetDisplayNode()
    assert display.GetSegmentOpacity3D(state.segmentId) == pytest.approx(curation.PENDING_OPACITY)
    table = ball_logic.tableNode
    assert table.GetNumberOfRows() == 1
    row = [table.GetCellText(0, c) for c in range(table.GetNumberOfColumns())]
    assert row[:3] == ["Left kidney", "pending", f"{state.confidence:.3f}"]
    assert float(row[3]) == pytest.approx(state.volumeMl, abs=0.01) and state.volumeMl > 0
    assert [e for e, _ in events].count(SegmentEvent.SEGMENT_UPDATED) == 1


def test_accept_reject_change_display_status_and_threshold(ball_logic, ct_node):
    for organ, ijk in [("liver", [40, 50, 15]), ("spleen", [90, 50, 15])]:
        ball_logic.addOrgan(organ)
        ball_logic.addPrompt(organ, indexToRas(ct_node, ijk))
    assert ball_logic.waitForResults(TIMEOUT)
    seg, display = ball_logic.segmentationNode, ball_logic.segmentationNode.GetDisplayNode()
    ball_logic.acceptOrgan("liver")
    liver = seg.GetSegmentation().GetSegment("liver")
    assert curation.readTag(liver, curation.TAG_STATUS) == "accepted"
    assert display.GetSegmentVisibility("liver") and display.GetSegmentOpacity3D("liver") == pytest.approx(
        1.0
    )
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic
    assert segmentations.GetSegmentStatus(liver) == segmentations.Completed
    ball_logic.rejectOrgan("spleen")
    assert not display.GetSegmentVisibility("spleen")
    assert curation.readTag(seg.GetSegmentation().GetSegment("spleen"), curation.TAG_STATUS) == "rejected"
    assert ball_logic.tableNode.GetCellText(1, 1) == "rejected"
    # the rejected organ leaves the confidence map; pending organs above the threshold get accepted
    ball_logic.setOrganStatus("spleen", "pending")
    assert ball_logic.acceptAboveThreshold(1.01) == []
    assert ball_logic.acceptAboveThreshold(0.0) == ["spleen"]
    assert [s.name for s in ball_logic.acceptedOrgans()] == ["liver", "spleen"]


def test_new_point_sends_an_accepted_organ_back_to_review(ball_logic, ct_node):
    ball_logic.addOrgan("liver")
    ball_logic.addPrompt("liver", indexToRas(ct_node, [60, 50, 15]))
    assert ball_logic.waitForResults(TIMEOUT)
    ball_logic.acceptOrgan("liver")
    ball_logic.addPrompt("liver", indexToRas(ct_node, [64, 50, 15]))
    assert ball_logic.waitForResults(TIMEOUT)
    assert ball_logic.organ("liver").status == "pending" and ball_logic.organ("liver").clicks == 2


def test_undo_move_and_negative_points(ball_logic, ct_node, events):
    ball_logic.addOrgan("liver")
    first = indexToRas(ct_node, [60, 50, 15])
    ball_logic.addPrompt("liver", first)
    assert ball_logic.waitForResults(TIMEOUT)
    one = mask_of(ball_logic, "liver")
    ball_logic.addPrompt("liver", indexToRas(ct_node, [66, 50, 15]))
    assert ball_logic.waitForResults(TIMEOUT)
    assert mask_of(ball_logic, "liver").sum() > one.sum()
    assert ball_logic.undoLastPrompt("liver")
    assert ball_logic.waitForResults(TIMEOUT)
    assert np.array_equal(mask_of(ball_logic, "liver"), one)
    # moving the point (as dragging it does) moves the segment
    node = ball_logic.promptsNode("liver")
    moved = indexToRas(ct_node, [50, 40, 15])
    node.SetNthControlPointPosition(0, *moved)
    assert ball_logic.waitForResults(TIMEOUT)
    assert np.linalg.norm(centroid_ras(ball_logic, "liver") - moved) < max(ct_node.GetSpacing())
    # a point placed in a view takes its polarity from the Widget (toggle and modifier key)
    ball_logic.polarityProvider = lambda: False
    node.AddControlPoint(*moved)
    assert ball_logic.waitForResults(TIMEOUT)
    assert node.GetNthControlPointDescription(1) == "negative" and node.GetNthControlPointLabel(1) == "-"
    assert not mask_of(ball_logic, "liver").any()
    assert not errors(events)


# --------------------------------------------------------------------------- the worker thread


def test_worker_processes_jobs_in_order_on_one_thread(ct_node):
    """Jobs run in submission order on one persistent thread; the result equals a direct session."""
    volume = volumeFromNode(ct_node)
    seen = []
    worker = InferenceWorker(
        resultCallback=lambda r: seen.append((r.kind, r.organ, r.jobId, threading.get_ident()))
    )
    model = BallModel(radius=5)
    worker.setModel(lambda: model, "ball")
    worker.setImage(volume)
    clicks = [
        Click(tuple(volume.index_to_lps(ijk)), True) for ijk in ([50, 50, 15], [56, 50, 15], [62, 52, 15])
    ]
    for n in range(1, 4):  # one point at a time, as a user places them
        worker.wait(worker.setPrompts("liver", clicks[:n]), TIMEOUT)
    worker.setPrompts("spleen", clicks[2:])
    assert worker.wait(timeout=TIMEOUT)
    results = worker.results()
    worker.stop()
    masks = [r for r in results if r.kind == MASK]
    assert [(r.organ, len(r.clicks)) for r in masks] == [
        ("liver", 1),
        ("liver", 2),
        ("liver", 3),
        ("spleen", 1),
    ]
    assert [r.jobId for r in masks] == sorted(r.jobId for r in masks)
    assert all(kind in (MASK, CONFIDENCE, "model") for kind, *_ in seen)
    assert len({thread for *_, thread in seen}) == 1 and seen[0][3] != threading.get_ident()
    assert model.image_encoder.calls <= 2  # the model stays warm: cached region embeddings
    direct = InteractiveSession(BallModel(radius=5), volume, SessionConfig())
    for click in clicks:
        expected = direct.add_click_lps("liver", np.array(click.lps), True)
    assert np.array_equal(masks[2].result.full_mask(), expected.full_mask())


def test_worker_keeps_only_the_newest_of_queued_prompts(ct_node):
    volume = volumeFromNode(ct_node)
    gate = threading.Event()
    worker = InferenceWorker()
    worker.setModel(lambda: gate.wait(TIMEOUT) and BallModel(radius=5), "ball")
    worker.setImage(volume)
    lps = [tuple(volume.index_to_lps([50 + 2 * n, 50, 15])) for n in range(4)]
    for n in range(4):  # a point dragged across the view while the model is busy
        worker.setPrompts("liver", [Click(lps[n])])
    gate.set()
    assert worker.wait(timeout=TIMEOUT)
    masks = [r for r in worker.results() if r.kind == MASK]
    worker.stop()
    assert len(masks) == 1 and masks[0].clicks == (Click(lps[3]),)


def test_failing_inference_leaves_the_previous_segment(app, ct_node, events):
    model = FlakyBallModel(radius=6)
    logic = make_logic(app, ct_node, model, events)
    try:
        state = logic.addOrgan("liver")
        logic.addPrompt("liver", indexToRas(ct_node, [60, 50, 15]))
        assert logic.waitForResults(TIMEOUT)
        before = mask_of(logic, "liver")
        segment = logic.segmentationNode.GetSegmentation().GetSegment(state.segmentId)
        tags_before = (
            curation.readTag(segment, curation.TAG_CLICKS),
            curation.readTag(segment, curation.TAG_CONFIDENCE),
        )
        model.fail = True
        logic.addPrompt("liver", indexToRas(ct_node, [70, 50, 15]))
        assert logic.waitForResults(TIMEOUT)
        messages = errors(events)
        assert len(messages) == 1 and messages[0]["organ"] == "liver"
        assert "decoder out of memory" in messages[0]["message"] and "\n" not in messages[0]["message"]
        assert np.array_equal(mask_of(logic, "liver"), before)
        assert (
            curation.readTag(segment, curation.TAG_CLICKS),
            curation.readTag(segment, curation.TAG_CONFIDENCE),
        ) == tags_before
        assert state.clicks == 1 and logic.worker.alive
        model.fail = False  # the next point works again, with every point of the organ
        logic.addPrompt("liver", indexToRas(ct_node, [50, 50, 15]))
        assert logic.waitForResults(TIMEOUT)
        assert state.clicks == 3 and mask_of(logic, "liver").sum() > before.sum()
    finally:
        logic.cleanup()


# --------------------------------------------------------------------------- confidence map, model, export


def test_confidence_map_is_a_foreground_layer(ball_logic, ct_node, app):
    ball_logic.addOrgan("liver")
    ball_logic.addPrompt("liver", indexToRas(ct_node, [60, 50, 15]))
    assert ball_logic.waitForResults(TIMEOUT)
    node = ball_logic.confidenceMap.node
    values = ball_logic.confidenceMap.array()
    assert values.shape == volumeFromNode(ct_node).shape
    assert values.min() < 1.0 and values.max() == pytest.approx(1.0)
    assert np.allclose(volumeFromNode(node).origin, volumeFromNode(ct_node).origin)
    ball_logic.showConfidenceMap(True, 0.35)
    composites = app.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(i)
        assert composite.GetForegroundVolumeID() == node.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.35)
    ball_logic.rejectOrgan("liver")
    assert ball_logic.confidenceMap.array().min() == pytest.approx(1.0)
    ball_logic.showConfidenceMap(False)
    assert composites.GetItemAsObject(0).GetForegroundVolumeID() is None


def test_real_model_from_a_checkpoint_and_shared_trained_version(
    app, ct_node, events, tiny_checkpoint, tmp_path
):
    logic = PESFSegmentLogic(app.scene, eventCallback=lambda event, info: events.append((event, info)))
    try:
        logic.setModel(ModelChoice.checkpoint(tiny_checkpoint))
        logic.setInputVolume(ct_node)
        logic.addOrgan("liver")
        logic.addPrompt("liver", indexToRas(ct_node, [60, 50, 15]))
        assert logic.waitForResults(TIMEOUT)
        assert not errors(events)
        state = logic.organ("liver")
        assert state.modelVersion == "tiny.pt" and state.clicks == 1
        assert state.confidence is not None and 0.0 <= state.confidence <= 1.0
        assert SegmentEvent.MODEL_LOADED in [e for e, _ in events]
        # PESF Train's "Use this version": the shared setting switches the model; organs are segmented again
        workspace = tmp_path / "ws"
        workspace.mkdir()
        setActiveTrainedModel(app.scene, workspace, "v7", str(tiny_checkpoint))
        choice = activeTrainedModel(app.scene)
        assert (choice.source, choice.version) == ("trained", "v7")
        assert activeTrainedModel(SlicerTestApp.create().scene, workspace).version == "v7"  # from the file
        logic.setModel(choice)
        assert logic.waitForResults(TIMEOUT)
        assert logic.organ("liver").modelVersion == "v7" and logic.modelVersion == "v7"
    finally:
        logic.cleanup()
    with pytest.raises(ValueError, match="does not exist"):
        ModelChoice.checkpoint(tmp_path / "missing.pt")


def test_the_bundled_default_segments_an_mr_volume_with_its_mr_weights(app, events, samples):
    """The bundled default names its MR weights: on an MR volume the segment records ``default-mr``."""
    mr_node = load_volume(app.scene, samples.mr_image, "C_mr")
    logic = PESFSegmentLogic(app.scene, eventCallback=lambda event, info: events.append((event, info)))
    try:
        logic.setModel(ModelChoice.bundled())
        logic.setInputVolume(mr_node)
        logic.addOrgan("liver")
        label, _ = read_labelmap(samples.mr_label, like=read_volume(samples.mr_image))
        inside = np.argwhere(label.array == 5)  # the liver in TotalSegmentator's total_mr labels
        logic.addPrompt("liver", indexToRas(mr_node, inside[len(inside) // 2]))
        assert logic.waitForResults(TIMEOUT)
        assert not errors(events)
        state = logic.organ("liver")
        assert logic.modelVersion == "default" and state.modelVersion == "default-mr"
        assert state.confidence is not None and mask_of(logic, "liver").any()
    finally:
        logic.cleanup()


@pytest.mark.parametrize("extension", [".nii.gz", ".nrrd", ".seg.nrrd"])
def test_export_geometry_equals_the_volume(ball_logic, ct_node, samples, tmp_path, extension):
    for organ, ijk in [("liver", [40, 50, 15]), ("spleen", [90, 50, 15]), ("stomach", [60, 30, 15])]:
        ball_logic.addOrgan(organ)
        ball_logic.addPrompt(organ, indexToRas(ct_node, ijk))
    assert ball_logic.waitForResults(TIMEOUT)
    ball_logic.acceptOrgan("liver")
    ball_logic.acceptOrgan("stomach")
    path = ball_logic.exportAccepted(tmp_path / f"accepted{extension}")
    reference = sitk.ReadImage(str(samples.ct_image))
    labels, segments = read_labelmap(path, like=read_volume(samples.ct_image))
    if extension != ".seg.nrrd":
        image = sitk.ReadImage(str(path))
        assert image.GetSize() == reference.GetSize()
        assert np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
        assert np.allclose(image.GetSpacing(), reference.GetSpacing())
        assert np.allclose(image.GetDirection(), reference.GetDirection())
    else:
        assert {s.name for s in segments.values()} == {"Liver", "Stomach"}
        assert "10200004" in str(segments[1].terminology)
    assert set(np.unique(labels.array)) == {0, 1, 5}  # standard values: liver 1, stomach 5; spleen pending
    assert np.array_equal(labels.array == 1, mask_of(ball_logic, "liver"))
    assert np.array_equal(labels.array == 5, mask_of(ball_logic, "stomach"))


def test_send_to_training_writes_a_case_the_trainer_reads(ball_logic, ct_node, tmp_path):
    for organ, ijk in [("liver", [40, 50, 15]), ("spleen", [90, 50, 15]), ("stomach", [60, 30, 15])]:
        ball_logic.addOrgan(organ)
        ball_logic.addPrompt(organ, indexToRas(ct_node, ijk))
    assert ball_logic.waitForResults(TIMEOUT)
    ball_logic.acceptOrgan("liver")
    ball_logic.rejectOrgan("spleen")
    record = ball_logic.sendToTraining(tmp_path / "workspace")
    store = CaseStore(tmp_path / "workspace")
    stored = store.get(record.case_id)
    assert record.case_id == "A_ct"
    assert {n: r.status for n, r in stored.organs.items()} == {
        "liver": "accepted",
        "spleen": "rejected",
        "stomach": "pseudo",
    }
    assert stored.organs["stomach"].confidence == pytest.approx(
        ball_logic.organ("stomach").confidence, abs=1e-6
    )
    assert stored.organs["stomach"].author == "pesf-model ball" and stored.organs["liver"].n_clicks == 1
    label = store.load_label(record.case_id)
    assert label.same_geometry(read_volume(ct_node.GetStorageNode().GetFileName()))
    assert np.array_equal(label.array == 1, mask_of(ball_logic, "liver"))
    assert np.array_equal(label.array == 5, mask_of(ball_logic, "stomach"))
    assert not np.any(label.array == 2)
    assert np.array_equal(store.load_unknown(record.case_id), mask_of(ball_logic, "spleen"))
    assert {(c, r.name) for c, r in store.samples()} == {("A_ct", "liver"), ("A_ct", "stomach")}
    from pesf.errors import PesfError

    with pytest.raises(PesfError, match="already exists"):
        ball_logic.sendToTraining(tmp_path / "workspace")
    assert ball_logic.sendToTraining(tmp_path / "workspace", overwrite=True).revision == 2


def test_a_saved_segmentation_is_taken_over(app, ct_node, events):
    first = make_logic(app, ct_node, BallModel(radius=6), events)
    first.addOrgan("liver")
    first.addPrompt("liver", indexToRas(ct_node, [60, 50, 15]))
    assert first.waitForResults(TIMEOUT)
    first.acceptOrgan("liver")
    segmentation, table = first.segmentationNode, first.tableNode
    first.cleanup()
    second = PESFSegmentLogic(app.scene)
    try:
        second.setModelLoader(lambda: BallModel(radius=6), "ball")
        second.setInputVolume(ct_node, segmentation)
        state = second.organ("liver")
        assert (state.status, state.clicks, state.modelVersion) == ("accepted", 1, "ball")
        assert second.tableNode is table and table.GetNumberOfRows() == 1
        second.addPrompt("liver", indexToRas(ct_node, [66, 50, 15]))
        assert second.waitForResults(TIMEOUT)
        assert second.organ("liver").clicks == 2
    finally:
        second.cleanup()


def test_dependencies_are_checked_without_importing_them():
    requirements = dependencies.readRequirements()
    assert "monai>=1.3" in requirements and not any(r.startswith("torch") for r in requirements)
    assert dependencies.missingRequirements() == []
    assert dependencies.missingRequirements(["no-such-package-pesf>=1", "numpy>=1"]) == [
        "no-such-package-pesf>=1"
    ]
    assert not dependencies.requirementSatisfied("numpy>=999")
    assert dependencies.torchSatisfied()
    assert dependencies._simpleSatisfies("2.1.0+cpu", ">=2.1,<3") and not dependencies._simpleSatisfies(
        "1.13", ">=2.1"
    )


def test_logic_reports_bad_input_as_one_message(app):
    logic = PESFSegmentLogic(app.scene)
    try:
        with pytest.raises(ValueError, match="Select an input volume"):
            logic.addOrgan("liver")
        with pytest.raises(ValueError, match="Select an input volume"):
            logic.setInputVolume(None)
        empty = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
        with pytest.raises(ValueError, match="has no voxels"):
            logic.setInputVolume(empty)
    finally:
        logic.cleanup()
