"""Prompt points as markups: one point list per organ, positive and negative points, read as engine clicks.

A point's polarity is stored in its description (``positive`` / ``negative``) and shown by its label
(``+`` / ``-``) and colour: positive points are "selected" (green), negative ones "unselected" (red). A
point placed without a description gets the polarity of the moment (the Widget's toggle and modifier key).
Only points whose position is defined count: the preview point that follows the mouse in place mode does
not.
"""

from __future__ import annotations

import numpy as np
import slicer

from .geometry import rasToLps
from .organs import OrganEntry
from .worker import Click

__all__ = [
    "NEGATIVE",
    "POSITIVE",
    "clicksFromNode",
    "createPromptsNode",
    "lastDefinedPoint",
    "pointIsPositive",
    "setPointPolarity",
]

POSITIVE, NEGATIVE = "positive", "negative"
ORGAN_ATTRIBUTE = "PESF.organ"
_POSITIVE_COLOR = (0.20, 0.85, 0.25)
_NEGATIVE_COLOR = (0.95, 0.20, 0.15)


def createPromptsNode(scene, entry: OrganEntry):
    """A new point list for an organ's prompts, drawn in PESF's positive/negative colours."""
    node = scene.AddNewNodeByClass(
        "vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(f"PESF {entry.displayName}")
    )
    node.SetAttribute(ORGAN_ATTRIBUTE, entry.name)
    node.SetMarkupLabelFormat("+")
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*_POSITIVE_COLOR)
        display.SetColor(*_NEGATIVE_COLOR)
        display.SetActiveColor(*_POSITIVE_COLOR)
        display.SetTextScale(2.5)
        display.SetGlyphScale(2.0)
    return node


def setPointPolarity(node, index: int, positive: bool) -> None:
    """Mark point ``index`` positive or negative (description, label and colour)."""
    wasModified = node.StartModify()
    node.SetNthControlPointDescription(index, POSITIVE if positive else NEGATIVE)
    node.SetNthControlPointLabel(index, "+" if positive else "-")
    node.SetNthControlPointSelected(index, bool(positive))
    node.EndModify(wasModified)


def pointIsPositive(node, index: int) -> bool | None:
    """The polarity of point ``index``, or ``None`` when it has not been given one yet."""
    description = node.GetNthControlPointDescription(index)
    if description == POSITIVE:
        return True
    if description == NEGATIVE:
        return False
    return None


def _defined(node, index: int) -> bool:
    return node.GetNthControlPointPositionStatus(index) == slicer.vtkMRMLMarkupsNode.PositionDefined


def clicksFromNode(node, defaultPositive: bool = True) -> tuple[Click, ...]:
    """The organ's clicks in point order: LPS positions (world, RAS converted) and polarities."""
    clicks = []
    for index in range(node.GetNumberOfControlPoints()):
        if not _defined(node, index):
            continue
        positive = pointIsPositive(node, index)
        ras = np.zeros(3)
        node.GetNthControlPointPositionWorld(index, ras)
        lps = rasToLps(ras)
        clicks.append(
            Click(
                (float(lps[0]), float(lps[1]), float(lps[2])),
                defaultPositive if positive is None else positive,
            )
        )
    return tuple(clicks)


def lastDefinedPoint(node) -> int:
    """Index of the last point with a defined position, or -1."""
    for index in range(node.GetNumberOfControlPoints() - 1, -1, -1):
        if _defined(node, index):
            return index
    return -1
