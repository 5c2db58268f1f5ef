"""PESF Segment's Logic: prompts in, segments, confidence and review state out, all as MRML nodes.

Usable without the Widget (tests, PESF Studio, scripts)::

    logic = PESFSegmentLogic(scene)
    logic.setModel(ModelChoice.bundled())
    logic.setInputVolume(volumeNode)
    logic.addOrgan("liver")
    logic.addPrompt("liver", ras=(10.0, -40.0, 95.0))
    logic.waitForResults()           # a GUI polls processResults() from a timer instead
    logic.acceptOrgan("liver")
    logic.exportAccepted("/tmp/liver.nii.gz")

Inference runs on the :class:`~.worker.InferenceWorker` thread; :meth:`PESFSegmentLogic.processResults` applies
its results to the scene and must run on the thread that owns the scene (Slicer's GUI thread). The Logic
reports what happened through ``eventCallback(event, info)`` with a :class:`SegmentEvent`.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable
from pathlib import Path

import slicer

from . import curation, export, prompts
from .confidencemap import ConfidenceMap
from .curation import ACCEPTED, PENDING, REJECTED, OrganState
from .geometry import ijkToRasArray, maskToOrientedImage, volumeFromNode
from .modelchoice import ModelChoice
from .organs import applyOrganToSegment, organEntry
from .organtable import createOrganTable, removeOrganRow, setOrganRow
from .translation import _
from .worker import CONFIDENCE, ERROR, MASK, MODEL, InferenceWorker, WorkerResult

__all__ = ["PESFSegmentLogic", "SegmentEvent"]

logger = logging.getLogger(__name__)

_PROMPTS_ROLE = "PESF.prompts"
_TABLE_ROLE = "PESF.organTable"
_POINT_EVENTS = ("PointPositionDefinedEvent", "PointModifiedEvent", "PointRemovedEvent")


class SegmentEvent(enum.Enum):
    """What :class:`PESFSegmentLogic` reports to its ``eventCallback`` (``info`` holds the details)."""

    ORGAN_ADDED = "organAdded"  # organ
    SEGMENT_UPDATED = "segmentUpdated"  # organ
    CONFIDENCE_UPDATED = "confidenceUpdated"  # organ, confidence
    STATUS_CHANGED = "statusChanged"  # organ, status
    MODEL_LOADED = "modelLoaded"  # version, message
    ERROR = "error"  # message (one line for the user), organ (or None)


class PESFSegmentLogic:
    """Point-prompted organ segmentation of one volume at a time, with review and export.

    Args:
        scene: the MRML scene (default ``slicer.mrmlScene``).
        eventCallback: ``callback(event: SegmentEvent, info: dict)``, called on the scene's thread.
        sessionConfig: the engine's ``SessionConfig`` for new sessions.
    """

    def __init__(
        self,
        scene=None,
        eventCallback: Callable[[SegmentEvent, dict], None] | None = None,
        sessionConfig=None,
    ):
        if scene is None:
            scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise ValueError("PESFSegmentLogic needs an MRML scene")
        self.scene = scene
        self.eventCallback = eventCallback
        #: called when a point is placed without a polarity; returns True for a positive point
        self.polarityProvider: Callable[[], bool] = lambda: True
        self.worker = InferenceWorker(sessionConfig=sessionConfig)
        self.model: ModelChoice | None = None
        self.modelVersion = ""
        self.volumeNode = None
        self.segmentationNode = None
        self.tableNode = None
        self.confidenceMap: ConfidenceMap | None = None
        self.organs: dict[str, OrganState] = {}
        self._confidenceCrops: dict[str, tuple] = {}
        self._submitted: dict[str, tuple] = {}
        self._observations: list[tuple[object, int]] = []
        self._imageJob = 0
        self._suppress = 0
        self._ijkToRas = None

    # ------------------------------------------------------------------ events
    def _emit(self, event: SegmentEvent, **info) -> None:
        if self.eventCallback is not None:
            self.eventCallback(event, info)

    # ------------------------------------------------------------------ model and volume
    def setModel(self, choice: ModelChoice) -> int:
        """Use ``choice`` from now on; organs with points are segmented again. Returns the worker job id."""
        self.model = choice
        return self.setModelLoader(choice.loader(), choice.version)

    def setModelLoader(self, loader: Callable[[], object], version: str) -> int:
        """Use the model ``loader()`` returns (loaded on the inference thread), labelled ``version``."""
        return self.worker.setModel(loader, version)

    def setInputVolume(self, volumeNode, segmentationNode=None) -> None:
        """Segment ``volumeNode``; results go to ``segmentationNode`` (a new one when ``None``).

        PESF segments already in ``segmentationNode`` (from a saved scene) are taken over with their review
        state and points.

        Raises:
            ValueError: the volume has no voxels, is in colour or under a transform.
        """
        image = volumeFromNode(volumeNode)
        self.clear()
        scene = self.scene
        if segmentationNode is None:
            segmentationNode = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volumeNode.GetName()} PESF")
            )
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentationNode.CreateDefaultDisplayNodes()
        self.volumeNode, self.segmentationNode = volumeNode, segmentationNode
        self._ijkToRas = ijkToRasArray(volumeNode)
        self.tableNode = segmentationNode.GetNodeReference(_TABLE_ROLE)
        if self.tableNode is None:
            self.tableNode = createOrganTable(scene, f"{volumeNode.GetName()} PESF organs")
            segmentationNode.SetNodeReferenceID(_TABLE_ROLE, self.tableNode.GetID())
        self.confidenceMap = ConfidenceMap(scene, volumeNode, f"{volumeNode.GetName()} PESF confidence")
        self._imageJob = self.worker.setImage(image)
        self._adoptSegments()

    def clear(self) -> None:
        """Forget the current volume (its nodes stay in the scene) and stop observing its points."""
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations.clear()
        if self.confidenceMap is not None:
            self.confidenceMap.remove()
        self.volumeNode = self.segmentationNode = self.tableNode = self.confidenceMap = None
        self.organs.clear()
        self._confidenceCrops.clear()
        self._submitted.clear()

    def cleanup(self) -> None:
        """Stop the inference thread and drop observers (module unloaded, application closing)."""
        self.clear()
        self.worker.stop()

    @property
    def busy(self) -> bool:
        """Whether inference jobs are queued or running."""
        return self.worker.busy

    # ------------------------------------------------------------------ organs
    def _requireVolume(self) -> None:
        if self.segmentationNode is None:
            raise ValueError(_("Select an input volume first."))

    def organ(self, name: str) -> OrganState:
        """The state of an organ added with :meth:`addOrgan`.

        Raises:
            ValueError: unknown organ.
        """
        try:
            return self.organs[name]
        except KeyError:
            raise ValueError(_("Organ '{organ}' has not been added.").format(organ=name)) from None

    def addOrgan(self, text: str) -> OrganState:
        """Add an organ by name or display name (``"liver"``, ``"Left kidney"``, ``"tumour"``); returns it.

        An organ already added is returned as it is.
        """
        self._requireVolume()
        entry = organEntry(text, {o.entry.labelValue for o in self.organs.values()})
        if entry.name in self.organs:
            return self.organs[entry.name]
        segmentation = self.segmentationNode.GetSegmentation()
        segmentId = segmentation.AddEmptySegment(entry.name, entry.displayName, list(entry.color))
        segment = segmentation.GetSegment(segmentId)
        applyOrganToSegment(segment, entry)
        curation.writeTags(
            segment, organ=entry.name, status=PENDING, confidence=None, source="clicks", clicks=0
        )
        node = prompts.createPromptsNode(self.scene, entry)
        self.segmentationNode.AddNodeReferenceID(_PROMPTS_ROLE, node.GetID())
        state = OrganState(entry, segmentId, node.GetID())
        self._register(state, node)
        return state

    def _register(self, state: OrganState, node) -> None:
        self.organs[state.name] = state
        for name in _POINT_EVENTS:
            event = getattr(slicer.vtkMRMLMarkupsNode, name)
            self._observations.append((node, node.AddObserver(event, self._onPointsModified)))
        curation.applyStatusDisplay(self.segmentationNode, state.segmentId, state.status)
        self._updateRow(state)
        self._emit(SegmentEvent.ORGAN_ADDED, organ=state.name)

    def _adoptSegments(self) -> None:
        """Take over PESF segments of the segmentation node, with their tags and point lists."""
        nodes = {}
        for index in range(self.segmentationNode.GetNumberOfNodeReferences(_PROMPTS_ROLE)):
            node = self.segmentationNode.GetNthNodeReference(_PROMPTS_ROLE, index)
            if node is not None:
                nodes[node.GetAttribute(prompts.ORGAN_ATTRIBUTE)] = node
        segmentation = self.segmentationNode.GetSegmentation()
        for segmentId in list(segmentation.GetSegmentIDs()):
            segment = segmentation.GetSegment(segmentId)
            name = curation.readTag(segment, curation.TAG_ORGAN)
            if not name or name not in nodes:
                continue
            entry = organEntry(name, {o.entry.labelValue for o in self.organs.values()})
            confidence = curation.readTag(segment, curation.TAG_CONFIDENCE)
            state = OrganState(
                entry,
                segmentId,
                nodes[name].GetID(),
                status=curation.readTag(segment, curation.TAG_STATUS, PENDING),
                confidence=float(confidence) if confidence else None,
                clicks=int(curation.readTag(segment, curation.TAG_CLICKS, "0") or 0),
                modelVersion=curation.readTag(segment, curation.TAG_MODEL_VERSION),
                source=curation.readTag(segment, curation.TAG_SOURCE, "clicks"),
            )
            self._register(state, nodes[name])

    def removeOrgan(self, name: str) -> None:
        """Remove an organ: its segment, points, table row and confidence."""
        state = self.organ(name)
        node = self.scene.GetNodeByID(state.promptsNodeId)
        for observed, tag in [o for o in self._observations if o[0] is node]:
            observed.RemoveObserver(tag)
            self._observations.remove((observed, tag))
        if node is not None:
            self.scene.RemoveNode(node)
        self.segmentationNode.GetSegmentation().RemoveSegment(state.segmentId)
        removeOrganRow(self.tableNode, name)
        self._setConfidenceCrop(name, None)
        del self.organs[name]
        self._submitted.pop(name, None)
        self.worker.setPrompts(name, ())

    def promptsNode(self, name: str):
        """The point list of an organ."""
        return self.scene.GetNodeByID(self.organ(name).promptsNodeId)

    # ------------------------------------------------------------------ prompts
    def addPrompt(self, name: str, ras, positive: bool = True) -> int:
        """Add a point at RAS ``ras`` to an organ (as placing it in a view does); returns its index."""
        node = self.promptsNode(name)
        self._suppress += 1
        try:
            index = node.AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]))
            prompts.setPointPolarity(node, index, positive)
        finally:
            self._suppress -= 1
        self._submit(name)
        return index

    def undoLastPrompt(self, name: str) -> bool:
        """Remove the organ's last point (its segment goes back to how it was); False when it has none."""
        node = self.promptsNode(name)
        index = prompts.lastDefinedPoint(node)
        if index < 0:
            return False
        node.RemoveNthControlPoint(index)
        return True

    def _onPointsModified(self, node, event) -> None:
        if self._suppress:
            return
        name = node.GetAttribute(prompts.ORGAN_ATTRIBUTE)
        if name not in self.organs:
            return
        self._suppress += 1
        try:
            for index in range(node.GetNumberOfControlPoints()):
                defined = (
                    node.GetNthControlPointPositionStatus(index) == slicer.vtkMRMLMarkupsNode.PositionDefined
                )
                if defined and prompts.pointIsPositive(node, index) is None:
                    prompts.setPointPolarity(node, index, bool(self.polarityProvider()))
        finally:
            self._suppress -= 1
        self._submit(name)

    def _submit(self, name: str) -> None:
        clicks = prompts.clicksFromNode(self.promptsNode(name))
        if self._submitted.get(name) == clicks:
            return
        self._submitted[name] = clicks
        self.worker.setPrompts(name, clicks)

    # ------------------------------------------------------------------ results
    def processResults(self) -> int:
        """Apply the worker's results to the scene (call from the scene's thread); returns how many."""
        results = self.worker.results()
        for position, result in enumerate(results):
            if result.kind == MODEL:
                self.modelVersion = result.modelVersion
                self._emit(SegmentEvent.MODEL_LOADED, version=result.modelVersion, message=result.message)
                continue
            if result.kind == ERROR:
                self._applyError(result)
                continue
            state = self.organs.get(result.organ)
            if state is None or result.jobId < self._imageJob:
                continue  # organ removed, or a result for a previous volume
            newer = any(r.kind == MASK and r.organ == result.organ for r in results[position + 1 :])
            try:
                if result.kind == MASK and not newer:
                    self._applyMask(state, result)
                elif result.kind == CONFIDENCE and state.maskJob == result.jobId:
                    self._applyConfidence(state, result)
            except Exception as exc:  # noqa: BLE001 - one message for the user, the scene stays usable
                logger.exception("applying the result of %s failed", result.organ)
                self._emit(SegmentEvent.ERROR, organ=result.organ, message=str(exc))
        return len(results)

    def waitForResults(self, timeout: float | None = 120.0) -> bool:
        """Wait for every submitted job, then apply the results (tests and scripts; a GUI polls instead)."""
        done = self.worker.wait(timeout=timeout)
        self.processResults()
        return done

    def _applyError(self, result: WorkerResult) -> None:
        if result.organ is None:
            message = _("Loading the model failed: {message}").format(message=result.message)
        else:
            state = self.organs.get(result.organ)
            organ = state.entry.displayName if state else result.organ
            message = _("Segmenting {organ} failed: {message}. The segment was left as it was.").format(
                organ=organ, message=result.message
            )
        self._emit(SegmentEvent.ERROR, organ=result.organ, message=message)

    def _applyMask(self, state: OrganState, result: WorkerResult) -> None:
        organResult = result.result
        segmentLogic = slicer.vtkSlicerSegmentationsModuleLogic
        if organResult.logits.size == 0 or not organResult.mask.any():
            segmentLogic.ClearSegment(self.segmentationNode, state.segmentId)
        else:
            lo = tuple(s.start for s in organResult.bbox)
            image = maskToOrientedImage(organResult.mask, lo, self._ijkToRas)
            if not segmentLogic.SetBinaryLabelmapToSegment(
                image, self.segmentationNode, state.segmentId, segmentLogic.MODE_REPLACE, image.GetExtent()
            ):
                raise RuntimeError(
                    _("Could not update segment {organ}.").format(organ=state.entry.displayName)
                )
        spacing = self.volumeNode.GetSpacing()
        state.maskJob = result.jobId
        state.status, state.confidence = PENDING, None
        state.volumeMl = organResult.volume_ml(spacing) if organResult.logits.size else 0.0
        state.clicks, state.modelVersion = len(result.clicks), result.modelVersion
        segment = self.segmentationNode.GetSegmentation().GetSegment(state.segmentId)
        curation.writeTags(
            segment, status=PENDING, confidence=None, modelVersion=state.modelVersion, clicks=state.clicks
        )
        curation.applyStatusDisplay(self.segmentationNode, state.segmentId, PENDING)
        if not result.clicks:
            self._setConfidenceCrop(state.name, None)
        self._updateRow(state)
        self._emit(SegmentEvent.SEGMENT_UPDATED, organ=state.name)

    def _applyConfidence(self, state: OrganState, result: WorkerResult) -> None:
        state.confidence = result.confidence
        segment = self.segmentationNode.GetSegmentation().GetSegment(state.segmentId)
        curation.writeTags(segment, confidence=result.confidence)
        self._setConfidenceCrop(state.name, (result.result.bbox, result.confidenceCrop))
        self._updateRow(state)
        self._emit(SegmentEvent.CONFIDENCE_UPDATED, organ=state.name, confidence=result.confidence)

    def _setConfidenceCrop(self, name: str, crop: tuple | None) -> None:
        if crop is None:
            self._confidenceCrops.pop(name, None)
        else:
            self._confidenceCrops[name] = crop
        state = self.organs.get(name)
        shown = crop is not None and state is not None and state.status != REJECTED
        if self.confidenceMap is not None:
            bbox, array = crop if crop is not None else ((slice(0, 0),) * 3, None)
            self.confidenceMap.setOrgan(name, bbox, array if shown else None)

    def _updateRow(self, state: OrganState) -> None:
        setOrganRow(
            self.tableNode,
            state.name,
            state.entry.displayName,
            state.status,
            state.confidence,
            state.volumeMl,
            state.clicks,
            state.modelVersion,
        )

    # ------------------------------------------------------------------ review
    def setOrganStatus(self, name: str, status: str) -> None:
        """Set an organ's review status (``pending``, ``accepted``, ``rejected``): tags, display, table."""
        state = self.organ(name)
        if status not in curation.STATUSES:
            raise ValueError(f"unknown status {status!r}")
        state.status = status
        segment = self.segmentationNode.GetSegmentation().GetSegment(state.segmentId)
        curation.writeTags(segment, status=status)
        curation.applyStatusDisplay(self.segmentationNode, state.segmentId, status)
        self._setConfidenceCrop(name, self._confidenceCrops.get(name))
        self._updateRow(state)
        self._emit(SegmentEvent.STATUS_CHANGED, organ=name, status=status)

    def acceptOrgan(self, name: str) -> None:
        self.setOrganStatus(name, ACCEPTED)

    def rejectOrgan(self, name: str) -> None:
        self.setOrganStatus(name, REJECTED)

    def acceptAboveThreshold(self, threshold: float) -> list[str]:
        """Accept every pending organ whose confidence is at least ``threshold``; returns their names."""
        chosen = curation.selectAboveThreshold(
            {n: (s.status, s.confidence) for n, s in self.organs.items()}, float(threshold)
        )
        for name in chosen:
            self.acceptOrgan(name)
        return chosen

    def acceptedOrgans(self) -> list[OrganState]:
        return [s for s in self.organs.values() if s.status == ACCEPTED]

    def showConfidenceMap(self, visible: bool = True, opacity: float = 0.5) -> None:
        """Show the voxel confidence map as the slice views' foreground layer (or hide it)."""
        if self.confidenceMap is not None:
            self.confidenceMap.show(visible, opacity)

    # ------------------------------------------------------------------ export
    def exportAccepted(self, path: str | os.PathLike[str]) -> Path:
        """Write the accepted organs as a label map (``.nii.gz``, ``.nrrd``) or ``.seg.nrrd``."""
        self._requireVolume()
        return export.exportLabelmap(path, self.volumeNode, self.segmentationNode, self.acceptedOrgans())

    def sendToTraining(
        self, workspace: str | os.PathLike[str], caseId: str | None = None, overwrite: bool = False
    ):
        """Write the volume and its reviewed organs into the PESF case store at ``workspace``."""
        self._requireVolume()
        return export.sendToTraining(
            workspace, self.volumeNode, self.segmentationNode, list(self.organs.values()), caseId, overwrite
        )

    def acceptedSegmentationNode(self):
        """A new segmentation node holding copies of the accepted segments, referencing the input volume
        and placed beside it in the subject hierarchy (for DICOM SEG export). The caller removes it."""
        self._requireVolume()
        accepted = self.acceptedOrgans()
        if not accepted:
            raise ValueError(_("No accepted organ to export: accept organs first."))
        node = self.scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", f"{self.volumeNode.GetName()} accepted organs"
        )
        node.SetReferenceImageGeometryParameterFromVolumeNode(self.volumeNode)
        for state in accepted:
            node.GetSegmentation().CopySegmentFromSegmentation(
                self.segmentationNode.GetSegmentation(), state.segmentId
            )
        hierarchy = self.scene.GetSubjectHierarchyNode()
        if hierarchy is not None:
            parent = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(self.volumeNode))
            hierarchy.SetItemParent(hierarchy.GetItemByDataNode(node), parent)
        return node
