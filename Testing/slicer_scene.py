"""A real MRML scene for testing the Slicer modules' Logic on slicer-core, without the Slicer application.

The application logic and the module logics are set up as trame-slicer's ``SlicerApp`` does (scene, colour
logic with its default colour nodes, volumes, terminologies, segmentations, subject hierarchy, markups,
tables and plots logics registered with the application logic), minus the views: the tests need no rendering.
Slice composite nodes are added as a layout would add them, so foreground layers can be checked.

Importing this module puts the modules' folders on ``sys.path`` (``PESFSegmentLib``, ``PESFTrainLib``), as
Slicer does for the scripted modules it loads.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _module in ("PESFSegment", "PESFTrain"):
    if str(REPO / _module) not in sys.path:
        sys.path.insert(0, str(REPO / _module))

import slicer  # noqa: E402

__all__ = ["REPO", "SlicerTestApp", "load_volume"]


def _share_directory() -> Path | None:
    """trame-slicer's copy of Slicer's share folder (terminologies), found without importing trame-slicer."""
    spec = importlib.util.find_spec("trame_slicer")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "resources"


@dataclass
class SlicerTestApp:
    """A scene with Slicer's application logic and module logics."""

    scene: object = None
    app_logic: object = None
    logics: dict = field(default_factory=dict)

    @classmethod
    def create(cls, slice_views: tuple[str, ...] = ("Red", "Yellow", "Green")) -> SlicerTestApp:
        scene = slicer.vtkMRMLScene()
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        scene.AddNode(crosshair)
        app_logic = slicer.vtkSlicerApplicationLogic()
        app_logic.SetMRMLScene(scene)
        app_logic.GetColorLogic().SetMRMLScene(scene)
        app_logic.GetColorLogic().AddDefaultColorNodes()
        app = cls(scene, app_logic)
        share = _share_directory()
        app.register("Volumes", slicer.vtkSlicerVolumesLogic())
        app.register(
            "Terminologies",
            slicer.vtkSlicerTerminologiesModuleLogic(),
            share / "terminologies" if share else None,
        )
        app.register("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic())
        app.register("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic())
        app.register("Markups", slicer.vtkSlicerMarkupsLogic())
        app.register("Tables", slicer.vtkSlicerTablesLogic())
        app.register("Plots", slicer.vtkSlicerPlotsLogic())
        for name in slice_views:
            composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
            composite.SetLayoutName(name)
        return app

    def register(self, name: str, logic, share: Path | None = None):
        if share is not None and hasattr(logic, "SetModuleShareDirectory"):
            logic.SetModuleShareDirectory(share.as_posix())
        logic.SetMRMLScene(self.scene)
        logic.SetMRMLApplicationLogic(self.app_logic)
        self.app_logic.SetModuleLogic(name, logic)
        self.logics[name] = logic
        return logic

    def close(self) -> None:
        self.scene.Clear(True)


def load_volume(scene, path: str | Path, name: str | None = None):
    """Read a volume file into a new scalar volume node through a storage node, as Slicer's Add Data does."""
    path = Path(path)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or path.name.split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        raise OSError(f"could not read {path}")
    return node
