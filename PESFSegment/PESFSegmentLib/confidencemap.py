"""The voxel confidence map: a volume on the input grid, shown as a coloured foreground layer.

Each organ contributes its voxel confidence (agreement of decoder runs with perturbed clicks, ``0..1``) on its
bounding box; the map holds the lowest confidence of the organs at each voxel (1 where nothing was
predicted). Only the changed organ's box is recomputed. The colour table makes confident voxels transparent
and uncertain ones yellow to red, so the overlay points at what needs checking.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from .geometry import arrayToMatrix, ijkToRasArray

__all__ = ["ConfidenceMap", "confidenceColorNode"]

COLOR_NODE_NAME = "PESF confidence"


def confidenceColorNode(scene):
    """The colour table of confidence maps (created once per scene): red (0) to yellow to transparent (1)."""
    nodes = scene.GetNodesByClassByName("vtkMRMLColorTableNode", COLOR_NODE_NAME)
    node = nodes.GetItemAsObject(0) if nodes.GetNumberOfItems() else None
    if node is not None:
        return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_NODE_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    node.SetHideFromEditors(True)
    for index in range(256):
        t = index / 255.0
        node.SetColor(index, f"{t:.2f}", 1.0, min(1.0, 1.6 * t), 0.0, max(0.0, 1.0 - t) ** 0.7)
    return node


class ConfidenceMap:
    """The confidence volume of one input volume.

    Args:
        scene: the MRML scene.
        volumeNode: the input volume (its grid and geometry are copied).
        name: node name.
    """

    def __init__(self, scene, volumeNode, name: str) -> None:
        self.scene = scene
        extent = volumeNode.GetImageData().GetExtent()
        self.shape = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
        self._organs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
        self.node.SetIJKToRASMatrix(arrayToMatrix(ijkToRasArray(volumeNode)))
        image = vtk.vtkImageData()
        image.SetDimensions(*self.shape)
        image.AllocateScalars(vtk.VTK_FLOAT, 1)
        image.GetPointData().GetScalars().Fill(1.0)
        self.node.SetAndObserveImageData(image)
        self.node.CreateDefaultDisplayNodes()
        display = self.node.GetDisplayNode()
        display.SetAndObserveColorNodeID(confidenceColorNode(scene).GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
        display.SetInterpolate(False)

    def array(self) -> np.ndarray:
        """The map, ``[i, j, k]`` (a view of the node's voxels)."""
        return slicer.util.arrayFromVolume(self.node).transpose(2, 1, 0)

    def setOrgan(self, organ: str, bbox: tuple[slice, slice, slice], crop: np.ndarray | None) -> None:
        """Set (or with ``crop=None`` remove) one organ's confidence on its bounding box, then redraw."""
        old = self._organs.pop(organ, None)
        if crop is not None and np.asarray(crop).size:
            lo = np.array([s.start for s in bbox])
            self._organs[organ] = (lo, lo + np.array(crop.shape), np.asarray(crop, dtype=np.float32))
        boxes = [(o[0], o[1]) for o in (old, self._organs.get(organ)) if o is not None]
        if boxes:
            self._recompose(np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0))

    def _recompose(self, lo: np.ndarray, hi: np.ndarray) -> None:
        full = self.array()
        region = full[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        region[...] = 1.0
        for olo, ohi, crop in self._organs.values():
            a, b = np.maximum(lo, olo), np.minimum(hi, ohi)
            if np.any(b <= a):
                continue
            target = full[a[0] : b[0], a[1] : b[1], a[2] : b[2]]
            source = crop[
                a[0] - olo[0] : b[0] - olo[0], a[1] - olo[1] : b[1] - olo[1], a[2] - olo[2] : b[2] - olo[2]
            ]
            np.minimum(target, source, out=target)
        slicer.util.arrayFromVolumeModified(self.node)

    def show(self, visible: bool = True, opacity: float = 0.5) -> None:
        """Show the map as the foreground layer of every slice view (or hide it) with ``opacity``."""
        composites = self.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
        for index in range(composites.GetNumberOfItems()):
            composite = composites.GetItemAsObject(index)
            if visible:
                composite.SetForegroundVolumeID(self.node.GetID())
                composite.SetForegroundOpacity(float(opacity))
            elif composite.GetForegroundVolumeID() == self.node.GetID():
                composite.SetForegroundVolumeID(None)

    def remove(self) -> None:
        """Remove the node from the scene."""
        if self.node.GetScene() is not None:
            self.scene.RemoveNode(self.node)
