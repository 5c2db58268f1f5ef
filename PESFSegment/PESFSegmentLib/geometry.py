"""Conversions between Slicer's nodes (RAS, VTK ``[k, j, i]`` arrays) and the engine (LPS, ``[i, j, k]``).

These are the only places where the two conventions meet:

* a volume node becomes a :class:`pesf.io.Volume`: voxels transposed from ``arrayFromVolume``'s ``[k, j, i]``
  to ``[i, j, k]``, geometry taken from the node's IJK-to-RAS matrix and turned into LPS;
* RAS points (markups) become LPS points;
* masks on the volume's grid (crops ``[i, j, k]`` with a bounding box) become ``vtkOrientedImageData`` with the
  volume's IJK-to-RAS matrix, ready for a segment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .translation import _

if TYPE_CHECKING:
    from pesf.io import Volume

__all__ = [
    "arrayToMatrix",
    "gridShape",
    "ijkToRasArray",
    "indexToRas",
    "lpsToRas",
    "maskToOrientedImage",
    "orientedImageToMask",
    "rasToIndex",
    "rasToLps",
    "referenceGeometryImage",
    "volumeFromNode",
    "volumeGeometry",
]

_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])


def rasToLps(points: np.ndarray) -> np.ndarray:
    """RAS points ``(..., 3)`` to LPS (negate x and y)."""
    return np.asarray(points, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])


def lpsToRas(points: np.ndarray) -> np.ndarray:
    """LPS points ``(..., 3)`` to RAS (negate x and y)."""
    return rasToLps(points)


def _matrixToArray(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def arrayToMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijkToRasArray(volumeNode) -> np.ndarray:
    """The 4x4 matrix mapping array indices ``(i, j, k, 1)`` of the node's voxels to RAS millimetres.

    Array index 0 is the first voxel of the image extent, so an extent that does not start at 0 is included.
    """
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    ijkToRas = _matrixToArray(matrix)
    imageData = volumeNode.GetImageData()
    if imageData is not None:
        start = np.array(imageData.GetExtent()[::2], dtype=np.float64)
        ijkToRas[:3, 3] += ijkToRas[:3, :3] @ start
    return ijkToRas


def volumeFromNode(volumeNode) -> Volume:
    """The voxels and geometry of a scalar volume node as an engine :class:`~pesf.io.Volume` (a copy).

    Raises:
        ValueError: the node has no voxels, several components (RGB) or a parent transform.
    """
    from pesf.io import Volume

    if volumeNode is None:
        raise ValueError(_("Select an input volume."))
    imageData = volumeNode.GetImageData()
    scalars = imageData.GetPointData().GetScalars() if imageData is not None else None
    if scalars is None:
        raise ValueError(_("Volume '{name}' has no voxels.").format(name=volumeNode.GetName()))
    if scalars.GetNumberOfComponents() != 1:
        raise ValueError(
            _("Volume '{name}' has several components per voxel (colour); select a greyscale volume.").format(
                name=volumeNode.GetName()
            )
        )
    if volumeNode.GetParentTransformNode() is not None:
        raise ValueError(
            _("Volume '{name}' is under a transform; harden the transform before segmenting it.").format(
                name=volumeNode.GetName()
            )
        )
    dims = imageData.GetDimensions()
    kji = numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0])
    return Volume(np.array(kji.transpose(2, 1, 0)), *volumeGeometry(volumeNode))


def volumeGeometry(volumeNode) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(origin, spacing, direction)`` of the node's voxel grid in the engine's LPS convention."""
    ijkToLps = _FLIP_XY @ ijkToRasArray(volumeNode)
    axes = ijkToLps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    return ijkToLps[:3, 3].copy(), spacing, axes / spacing[None, :]


def gridShape(volumeNode) -> tuple[int, int, int]:
    """``(I, J, K)``: voxels of the node along i, j, k."""
    extent = volumeNode.GetImageData().GetExtent()
    return (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)


def rasToIndex(volumeNode, ras: np.ndarray) -> np.ndarray:
    """RAS points ``(..., 3)`` to continuous array indices ``(i, j, k)`` of the node's voxels."""
    rasToIjk = np.linalg.inv(ijkToRasArray(volumeNode))
    ras = np.asarray(ras, dtype=np.float64)
    return ras @ rasToIjk[:3, :3].T + rasToIjk[:3, 3]


def indexToRas(volumeNode, ijk: np.ndarray) -> np.ndarray:
    """Array indices ``(..., 3)`` (may be fractional) of the node's voxels to RAS points."""
    ijkToRas = ijkToRasArray(volumeNode)
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ ijkToRas[:3, :3].T + ijkToRas[:3, 3]


def maskToOrientedImage(mask: np.ndarray, lo: tuple[int, int, int], ijkToRas: np.ndarray):
    """A binary ``vtkOrientedImageData`` holding a crop of a mask on a volume's grid.

    Args:
        mask: crop ``[i, j, k]`` (any type; non-zero is inside).
        lo: array index of the crop's first voxel in the volume.
        ijkToRas: the volume's index-to-RAS matrix (see :func:`ijkToRasArray`).

    Returns:
        ``vtkOrientedImageData`` of ``unsigned char`` whose extent is the crop's indices in the volume.
    """
    image = slicer.vtkOrientedImageData()
    hi = [int(lo[a]) + int(mask.shape[a]) - 1 for a in range(3)]
    image.SetExtent(int(lo[0]), hi[0], int(lo[1]), hi[1], int(lo[2]), hi[2])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    if mask.size:
        target = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        target[:] = (np.asarray(mask) != 0).transpose(2, 1, 0).ravel().astype(np.uint8)
    image.SetImageToWorldMatrix(arrayToMatrix(ijkToRas))
    return image


def referenceGeometryImage(volumeNode):
    """A voxel-less ``vtkOrientedImageData`` with the volume's extent and IJK-to-RAS geometry."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(volumeNode.GetImageData().GetExtent())
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def orientedImageToMask(image, volumeNode) -> np.ndarray:
    """A ``vtkOrientedImageData`` resampled (nearest neighbour) onto the volume's grid: bool ``[i, j, k]``."""
    reference = referenceGeometryImage(volumeNode)
    shape = gridShape(volumeNode)
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None or image.IsEmpty():
        return np.zeros(shape, dtype=bool)
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        image, reference, resampled, False, True
    ):
        raise RuntimeError(_("Could not resample a segment onto the volume's grid."))
    out = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars())
    return out.reshape(shape[2], shape[1], shape[0]).transpose(2, 1, 0) != 0
