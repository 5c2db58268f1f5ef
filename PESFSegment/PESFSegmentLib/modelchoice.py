"""Which model PESF Segment uses: the bundled default, a checkpoint file, or a version trained by PESF Train.

PESF Train's "Use this version" and PESF Segment share one setting, kept in two places:

* the scene's singleton ``vtkMRMLScriptedModuleNode`` tagged ``PESFShared`` (parameters ``Workspace``,
  ``ActiveModelVersion``, ``ActiveModelPath``), which PESF Segment observes to switch models at once;
* ``WORKSPACE/active_model.json``, so a new Slicer session finds the version chosen for that workspace.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .translation import _

__all__ = [
    "ACTIVE_MODEL_FILE",
    "BUNDLED",
    "FILE",
    "SHARED_NODE_TAG",
    "TRAINED",
    "ModelChoice",
    "activeTrainedModel",
    "setActiveTrainedModel",
    "sharedSettingsNode",
]

BUNDLED, FILE, TRAINED = "bundled", "file", "trained"
SHARED_NODE_TAG = "PESFShared"
ACTIVE_MODEL_FILE = "active_model.json"


@dataclass(frozen=True)
class ModelChoice:
    """A model to load.

    Attributes:
        source: ``"bundled"``, ``"file"`` or ``"trained"``.
        reference: bundled model name (``"default"``) or checkpoint path.
        version: short label stored on segments (``"default"``, ``"v3"``, a file name).
    """

    source: str
    reference: str
    version: str

    @classmethod
    def bundled(cls, name: str = "default") -> ModelChoice:
        return cls(BUNDLED, name, name)

    @classmethod
    def checkpoint(cls, path: str | os.PathLike[str]) -> ModelChoice:
        """A checkpoint file (SAM-Med3D ``.pth`` or PESF ``.pt``).

        Raises:
            ValueError: the file does not exist.
        """
        path = Path(path).expanduser()
        if not str(path) or str(path) == "." or not path.is_file():
            raise ValueError(
                _("Model file '{path}' does not exist; choose a checkpoint file.").format(path=path)
            )
        return cls(FILE, str(path), path.name)

    @classmethod
    def trained(cls, modelPath: str | os.PathLike[str], version: str) -> ModelChoice:
        """A version written by the trainer (``WORKSPACE/models/vN/model.pt``)."""
        path = Path(modelPath)
        if not path.is_file():
            raise ValueError(
                _(
                    "Trained model version {version} is missing ({path}); choose another in PESF Train."
                ).format(version=version, path=path)
            )
        return cls(TRAINED, str(path), version)

    def loader(self, device: str = "cpu") -> Callable[[], object]:
        """A function loading the model (run on the inference thread; imports torch there)."""
        reference = self.reference

        def load():
            from pesf.models import load_model

            return load_model(reference, device=device)

        return load


def sharedSettingsNode(scene, create: bool = True):
    """The scene's shared PESF settings node (created when missing and ``create``)."""
    node = scene.GetSingletonNode(SHARED_NODE_TAG, "vtkMRMLScriptedModuleNode")
    if node is None and create:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(SHARED_NODE_TAG)
        node.SetName("PESF shared settings")
        node.SetHideFromEditors(True)
        node = scene.AddNode(node)
    return node


def setActiveTrainedModel(scene, workspace: str | os.PathLike[str], version: str, modelPath: str) -> None:
    """Make a trained version the one PESF Segment uses (scene setting and ``WORKSPACE/active_model.json``)."""
    from pesf.io.atomic import write_json_atomic

    workspace = Path(workspace)
    write_json_atomic(workspace / ACTIVE_MODEL_FILE, {"version": version, "path": str(modelPath)})
    node = sharedSettingsNode(scene)
    wasModified = node.StartModify()
    node.SetParameter("Workspace", str(workspace))
    node.SetParameter("ActiveModelVersion", version)
    node.SetParameter("ActiveModelPath", str(modelPath))
    node.EndModify(wasModified)


def activeTrainedModel(scene, workspace: str | os.PathLike[str] | None = None) -> ModelChoice | None:
    """The trained version chosen in PESF Train: from the scene, else from the workspace's file; ``None``."""
    node = sharedSettingsNode(scene, create=False)
    if node is not None and node.GetParameter("ActiveModelPath"):
        return ModelChoice.trained(
            node.GetParameter("ActiveModelPath"), node.GetParameter("ActiveModelVersion")
        )
    if node is not None and node.GetParameter("Workspace") and workspace is None:
        workspace = node.GetParameter("Workspace")
    if not workspace:
        return None
    path = Path(workspace) / ACTIVE_MODEL_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return ModelChoice.trained(doc["path"], str(doc["version"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
