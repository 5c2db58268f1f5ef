"""PESF Segment's Logic: MRML nodes in, MRML nodes out; no Qt, no CTK, no ``slicer.app``.

The engine (``pesf``) and PyTorch are imported only when first needed, never when this package is imported.
"""

from .curation import ACCEPTED, PENDING, REJECTED, STATUSES, OrganState
from .modelchoice import ModelChoice, activeTrainedModel, setActiveTrainedModel, sharedSettingsNode
from .organs import OrganEntry, organEntry, standardOrgans
from .segmentlogic import PESFSegmentLogic, SegmentEvent
from .worker import Click, InferenceWorker, WorkerResult

__all__ = [
    "ACCEPTED",
    "PENDING",
    "REJECTED",
    "STATUSES",
    "Click",
    "InferenceWorker",
    "ModelChoice",
    "OrganEntry",
    "OrganState",
    "PESFSegmentLogic",
    "SegmentEvent",
    "WorkerResult",
    "activeTrainedModel",
    "organEntry",
    "setActiveTrainedModel",
    "sharedSettingsNode",
    "standardOrgans",
]
