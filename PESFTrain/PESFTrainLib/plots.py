"""Learning curves as Slicer plots: table nodes filled from ``curves.json``, plot series and one chart.

``curves.json`` (written by the trainer, see ``pesf.train.status.Curves``) holds ``step``/``loss`` per step
and ``val_step``/``val_dice`` (one list per click count, e.g. ``click_1``, ``click_5``) per validation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import vtk
from PESFSegmentLib.translation import _

__all__ = ["TrainingCurves", "readCurves"]


def readCurves(path: str | os.PathLike[str]) -> dict | None:
    """The curves file as a dict, or ``None`` when missing, partial or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fill(tableNode, columns: dict[str, list[float]]) -> None:
    """Replace a table node's columns with ``columns`` (equal lengths; ``None`` becomes NaN)."""
    table = tableNode.GetTable()
    wasModifying = tableNode.StartModify()
    table.Initialize()
    for name, values in columns.items():
        array = vtk.vtkDoubleArray()
        array.SetName(name)
        array.SetNumberOfTuples(len(values))
        for index, value in enumerate(values):
            array.SetValue(index, float("nan") if value is None else float(value))
        table.AddColumn(array)
    table.Modified()
    tableNode.Modified()
    tableNode.EndModify(wasModifying)


class TrainingCurves:
    """The loss and validation Dice plots of one workspace.

    Attributes:
        lossTable: columns ``step``, ``loss``.
        diceTable: columns ``step`` and one per click count (``click_1``, ...).
        chartNode: one chart with the loss and every Dice curve against the step.
    """

    def __init__(self, scene, name: str = "PESF training") -> None:
        self.scene = scene
        self.lossTable = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} loss"))
        self.diceTable = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} Dice"))
        self.chartNode = scene.AddNewNodeByClass(
            "vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{name} curves")
        )
        self.chartNode.SetTitle(_("PESF training"))
        self.chartNode.SetXAxisTitle(_("step"))
        self.chartNode.SetYAxisTitle(_("loss / Dice"))
        self.series: dict[str, object] = {}
        self.update({})

    def _seriesNode(
        self, key: str, label: str, table, column: str, color: tuple[float, float, float], markers: bool
    ):
        series = self.series.get(key)
        if series is None:
            series = self.scene.AddNewNodeByClass(
                "vtkMRMLPlotSeriesNode", self.scene.GenerateUniqueName(label)
            )
            series.SetPlotType(series.PlotTypeScatter)
            series.SetLineStyle(series.LineStyleSolid)
            series.SetMarkerStyle(series.MarkerStyleCircle if markers else series.MarkerStyleNone)
            series.SetColor(*color)
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("step")
            series.SetYColumnName(column)
            self.chartNode.AddAndObservePlotSeriesNodeID(series.GetID())
            self.series[key] = series
        return series

    def update(self, curves: dict) -> int:
        """Refill the tables from a ``curves.json`` dict; returns the number of loss points."""
        steps = list(curves.get("step") or [])
        loss = list(curves.get("loss") or [])[: len(steps)]
        _fill(self.lossTable, {"step": steps[: len(loss)], "loss": loss})
        valSteps = list(curves.get("val_step") or [])
        dice = {k: list(v)[: len(valSteps)] for k, v in sorted((curves.get("val_dice") or {}).items())}
        _fill(
            self.diceTable,
            {"step": valSteps, **{k: v + [None] * (len(valSteps) - len(v)) for k, v in dice.items()}},
        )
        self._seriesNode("loss", _("training loss"), self.lossTable, "loss", (0.12, 0.47, 0.71), False)
        palette = [(0.84, 0.15, 0.16), (0.17, 0.63, 0.17), (0.58, 0.40, 0.74), (1.0, 0.50, 0.05)]
        for index, key in enumerate(dice):
            label = _("validation Dice, {clicks}").format(clicks=key.replace("_", " "))
            self._seriesNode(key, label, self.diceTable, key, palette[index % len(palette)], True)
        return len(loss)

    def remove(self) -> None:
        for node in [*self.series.values(), self.chartNode, self.lossTable, self.diceTable]:
            if node.GetScene() is not None:
                self.scene.RemoveNode(node)
        self.series.clear()
