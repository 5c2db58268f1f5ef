"""PESF Train's Logic: the case store, the background training process and its progress, as MRML nodes.

No Qt, no CTK, no ``slicer.app``. It builds on PESF Segment's Logic (``PESFSegmentLib``: the shared model
setting, translations), which is installed beside it.
"""

from .process import CANCELLED_MESSAGE, TrainingProcess, killTree, pythonExecutable, recordCancellation
from .tables import versionAtRow
from .trainlogic import PESFTrainLogic, TrainEvent, TrainingProgress, progressFromStatus

__all__ = [
    "CANCELLED_MESSAGE",
    "PESFTrainLogic",
    "TrainEvent",
    "TrainingProcess",
    "TrainingProgress",
    "killTree",
    "progressFromStatus",
    "pythonExecutable",
    "recordCancellation",
    "versionAtRow",
]
