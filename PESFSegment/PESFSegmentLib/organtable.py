"""The organ table: one row per organ with its status, confidence, volume and clicks (a MRML table node).

The Widget shows it in a table view; selecting a row selects the organ. Columns are typed so the view sorts
numbers as numbers; an unknown confidence is an empty cell.
"""

from __future__ import annotations

import math

import vtk

from .translation import _

__all__ = ["COLUMNS", "createOrganTable", "organAtRow", "removeOrganRow", "rowOfOrgan", "setOrganRow"]

#: (column key, header, VTK array class)
COLUMNS = (
    ("organ", _("Organ"), vtk.vtkStringArray),
    ("status", _("Status"), vtk.vtkStringArray),
    ("confidence", _("Confidence"), vtk.vtkStringArray),
    ("volume", _("Volume (ml)"), vtk.vtkDoubleArray),
    ("clicks", _("Points"), vtk.vtkIntArray),
    ("model", _("Model"), vtk.vtkStringArray),
    ("name", _("Name"), vtk.vtkStringArray),
)
_INDEX = {key: index for index, (key, _header, _cls) in enumerate(COLUMNS)}


def createOrganTable(scene, name: str):
    """A new, empty organ table node."""
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    node.SetLocked(True)  # edited through PESF only
    for _key, header, arrayClass in COLUMNS:
        column = arrayClass()
        column.SetName(header)
        node.AddColumn(column)
    return node


def rowOfOrgan(tableNode, organ: str) -> int:
    """The row of ``organ`` (engine name), or -1."""
    column = tableNode.GetTable().GetColumn(_INDEX["name"])
    for row in range(tableNode.GetNumberOfRows()):
        if column.GetValue(row) == organ:
            return row
    return -1


def organAtRow(tableNode, row: int) -> str | None:
    """The organ (engine name) shown in ``row``, or ``None``."""
    if tableNode is None or not 0 <= row < tableNode.GetNumberOfRows():
        return None
    return tableNode.GetTable().GetColumn(_INDEX["name"]).GetValue(row)


def setOrganRow(
    tableNode,
    organ: str,
    displayName: str,
    status: str,
    confidence: float | None,
    volumeMl: float,
    clicks: int,
    model: str,
) -> int:
    """Add or update the row of ``organ``; returns its index."""
    row = rowOfOrgan(tableNode, organ)
    if row < 0:
        row = tableNode.AddEmptyRow()
    table = tableNode.GetTable()
    known = confidence is not None and math.isfinite(confidence)
    values = {
        "organ": displayName,
        "status": status,
        "confidence": f"{confidence:.3f}" if known else "",
        "volume": round(float(volumeMl), 2),
        "clicks": int(clicks),
        "model": model,
        "name": organ,
    }
    for key, value in values.items():
        table.GetColumn(_INDEX[key]).SetValue(row, value)
    table.Modified()
    tableNode.Modified()
    return row


def removeOrganRow(tableNode, organ: str) -> None:
    row = rowOfOrgan(tableNode, organ)
    if row >= 0:
        tableNode.RemoveRow(row)
