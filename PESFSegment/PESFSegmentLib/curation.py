"""Review of organs: status, segment tags and how each status is drawn.

Every PESF segment carries its review state as segment tags, so it survives saving the scene and travels in
``.seg.nrrd`` files:

=====================  ===============================================================
``PESF.organ``         engine organ name (``kidney_left``)
``PESF.status``        ``pending``, ``accepted`` or ``rejected``
``PESF.confidence``    organ confidence ``0..1`` (three decimals), empty until computed
``PESF.source``        ``clicks`` (interactive), ``automatic`` or ``import``
``PESF.modelVersion``  the model that made the mask (``default``, ``v3``, a file name)
``PESF.clicks``        number of prompt points
=====================  ===============================================================

Pending segments are drawn semi-transparent, accepted ones opaque, rejected ones hidden. Slicer's own segment
status follows (in progress, completed, flagged), so the Segment Editor shows the same review state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import slicer
import vtk

from .organs import OrganEntry

__all__ = [
    "ACCEPTED",
    "OrganState",
    "PENDING",
    "PENDING_OPACITY",
    "REJECTED",
    "STATUSES",
    "TAG_CLICKS",
    "TAG_CONFIDENCE",
    "TAG_MODEL_VERSION",
    "TAG_ORGAN",
    "TAG_SOURCE",
    "TAG_STATUS",
    "applyStatusDisplay",
    "readTag",
    "selectAboveThreshold",
    "writeTags",
]

PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
STATUSES = (PENDING, ACCEPTED, REJECTED)

TAG_ORGAN = "PESF.organ"
TAG_STATUS = "PESF.status"
TAG_CONFIDENCE = "PESF.confidence"
TAG_SOURCE = "PESF.source"
TAG_MODEL_VERSION = "PESF.modelVersion"
TAG_CLICKS = "PESF.clicks"

#: Opacity of pending segments (accepted segments are drawn at 1.0).
PENDING_OPACITY = 0.4


@dataclass
class OrganState:
    """What PESF Segment knows about one organ of the current volume.

    Attributes:
        entry: the organ (names, colour, label value, terminology).
        segmentId: its segment in the segmentation node.
        promptsNodeId: its point list.
        status: ``pending``, ``accepted`` or ``rejected``.
        confidence: organ confidence, ``None`` until computed.
        volumeMl: mask volume in millilitres.
        clicks: prompt points the mask was made from.
        modelVersion: the model that made the mask.
        source: ``clicks`` for masks made here.
        maskJob: the inference job whose mask the segment shows (0: none yet).
    """

    entry: OrganEntry
    segmentId: str
    promptsNodeId: str
    status: str = PENDING
    confidence: float | None = None
    volumeMl: float = 0.0
    clicks: int = 0
    modelVersion: str = ""
    source: str = "clicks"
    maskJob: int = 0

    @property
    def name(self) -> str:
        return self.entry.name


_SLICER_STATUS = {PENDING: "InProgress", ACCEPTED: "Completed", REJECTED: "Flagged"}


def readTag(segment, name: str, default: str = "") -> str:
    """The value of a segment tag, or ``default`` when the segment does not have it."""
    value = vtk.mutable("")
    return str(value) if segment.GetTag(name, value) else default


def writeTags(
    segment,
    *,
    organ: str | None = None,
    status: str | None = None,
    confidence: float | None | str = "",
    source: str | None = None,
    modelVersion: str | None = None,
    clicks: int | None = None,
) -> None:
    """Set the PESF tags of a segment; arguments left at their default keep the current tag.

    ``confidence=None`` clears the confidence (not computed yet); a number sets it.
    """
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    values = {TAG_ORGAN: organ, TAG_STATUS: status, TAG_SOURCE: source, TAG_MODEL_VERSION: modelVersion}
    if clicks is not None:
        values[TAG_CLICKS] = str(int(clicks))
    if confidence is None:
        values[TAG_CONFIDENCE] = ""
    elif not isinstance(confidence, str):
        values[TAG_CONFIDENCE] = f"{float(confidence):.3f}" if math.isfinite(confidence) else ""
    for name, value in values.items():
        if value is not None:
            segment.SetTag(name, value)


def applyStatusDisplay(segmentationNode, segmentId: str, status: str) -> None:
    """Draw a segment as its status says and set Slicer's segment status to match."""
    display = segmentationNode.GetDisplayNode()
    if display is not None:
        display.SetSegmentVisibility(segmentId, status != REJECTED)
        display.SetSegmentOpacity(segmentId, PENDING_OPACITY if status == PENDING else 1.0)
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if segment is not None and hasattr(logic, "SetSegmentStatus"):
        logic.SetSegmentStatus(segment, getattr(logic, _SLICER_STATUS[status]))


def selectAboveThreshold(organs: dict[str, tuple[str, float | None]], threshold: float) -> list[str]:
    """Pending organs whose confidence is known and at least ``threshold``.

    Args:
        organs: ``{organ: (status, confidence)}``.
        threshold: in ``0..1``.
    """
    return [
        name
        for name, (status, confidence) in organs.items()
        if status == PENDING and confidence is not None and confidence >= threshold
    ]
