"""The workspace's cases and model versions as MRML table nodes."""

from __future__ import annotations

import math

import vtk
from PESFSegmentLib.translation import _

__all__ = ["CASE_COLUMNS", "VERSION_COLUMNS", "fillCasesTable", "fillVersionsTable", "versionAtRow"]

CASE_COLUMNS = (
    _("Case"),
    _("Organ"),
    _("Status"),
    _("Confidence"),
    _("Source"),
    _("Author"),
    _("Model"),
    _("Updated"),
)
VERSION_COLUMNS = (
    _("Version"),
    _("Step"),
    _("Loss"),
    _("Dice, first click"),
    _("Dice, last click"),
    _("In use"),
)


def _text(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else ""
    return str(value)


def _fill(tableNode, headers: tuple[str, ...], rows: list[list[str]]) -> None:
    table = tableNode.GetTable()
    wasModifying = tableNode.StartModify()
    table.Initialize()
    for column, header in enumerate(headers):
        array = vtk.vtkStringArray()
        array.SetName(header)
        array.SetNumberOfValues(len(rows))
        for index, row in enumerate(rows):
            array.SetValue(index, row[column])
        table.AddColumn(array)
    table.Modified()
    tableNode.Modified()
    tableNode.EndModify(wasModifying)


def fillCasesTable(tableNode, cases) -> None:
    """One row per case and organ: status, confidence, source, author, model and last change."""
    rows = []
    for case in cases:
        for organ in sorted(case.organs.values(), key=lambda r: r.value):
            rows.append(
                [
                    case.case_id,
                    organ.name,
                    organ.status,
                    _text(organ.confidence),
                    organ.source,
                    organ.author,
                    organ.model_version or "",
                    organ.updated,
                ]
            )
    _fill(tableNode, CASE_COLUMNS, rows)


def _dice(metrics: dict, first: bool):
    dice = metrics.get("val_dice") or {}
    if not isinstance(dice, dict) or not dice:
        return None
    keys = sorted(dice, key=lambda k: int("".join(c for c in k if c.isdigit()) or 0))
    return dice[keys[0] if first else keys[-1]]


def fillVersionsTable(tableNode, versions: list[dict], activeVersion: str | None) -> None:
    """One row per model version with its step, loss and validation Dice; the one in use is marked."""
    rows = []
    for version in versions:
        metrics = version.get("metrics") or {}
        rows.append(
            [
                version["version"],
                _text(metrics.get("step")),
                _text(metrics.get("loss")),
                _text(_dice(metrics, True)),
                _text(_dice(metrics, False)),
                "\u2714" if version["version"] == activeVersion else "",
            ]
        )
    _fill(tableNode, VERSION_COLUMNS, rows)


def versionAtRow(tableNode, row: int) -> str | None:
    """The version shown in ``row`` of the versions table, or ``None``."""
    if tableNode is None or not 0 <= row < tableNode.GetNumberOfRows():
        return None
    return tableNode.GetTable().GetColumn(0).GetValue(row)
