"""Interactive evaluation: simulated clicks, Dice/NSD metrics and the ``pesf evaluate`` harness."""

from __future__ import annotations

from pesf.eval.clicks import ClickSimulator
from pesf.eval.evaluate import (
    ClickSegmenter,
    OrganResultLike,
    evaluate_organs,
    format_report_table,
    organ_seed,
)
from pesf.eval.metrics import bounding_box, dice, nsd, volume_ml

__all__ = [
    "ClickSegmenter",
    "ClickSimulator",
    "OrganResultLike",
    "bounding_box",
    "dice",
    "evaluate_organs",
    "format_report_table",
    "nsd",
    "organ_seed",
    "volume_ml",
]
