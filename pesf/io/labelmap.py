"""Read and write label maps: NIfTI, NRRD, MetaImage, and 3D Slicer segmentations (``.seg.nrrd``).

A label map is a :class:`~pesf.io.volume.Volume` of non-negative whole numbers (0 = background) plus, when
the file holds them, segment descriptions (:class:`~pesf.io.labels.SegmentInfo`: name, value, colour,
terminology) keyed by label value.

Slicer segmentations are read and written with slicerio, so names, colours, label values and terminology
round-trip as Slicer stores them. A segmentation whose segments lie in several layers (overlapping segments)
is flattened into one label map: where segments overlap, the segment listed first in the file wins and a
warning says how many voxels were affected. Label values are kept unless two segments share one (possible
across layers); then segments are renumbered 1..N in file order.

Label maps are written as ``uint8`` when every value is at most 255, else ``uint16``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from pesf.errors import PesfError
from pesf.io.atomic import atomic_path, check_output_path, split_extension
from pesf.io.image import (
    describe_geometry_difference,
    read_sitk_image,
    sitk_to_volume,
    volume_to_sitk,
    write_sitk_image,
)
from pesf.io.labels import MAX_LABEL_VALUE, SegmentInfo, default_segment_info
from pesf.io.volume import Volume

__all__ = ["SegmentInfo", "LABELMAP_WRITE_EXTENSIONS", "read_labelmap", "write_labelmap", "labelmap_dtype"]

logger = logging.getLogger(__name__)

#: Extensions :func:`write_labelmap` writes (lower case).
LABELMAP_WRITE_EXTENSIONS: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


def _extension(path: Path) -> str:
    return split_extension(path.name)[1].lower()


def _is_slicer_segmentation(path: Path) -> bool:
    """True for NRRD files whose header holds Slicer segment fields (``.seg.nrrd`` or plain ``.nrrd``).

    A ``.seg.nrrd`` without segment fields is a plain label map under a Slicer name, and is read as one.
    """
    ext = _extension(path)
    if ext not in (".seg.nrrd", ".nrrd", ".nhdr"):
        return False
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except Exception:  # noqa: BLE001 - unreadable header: let the matching reader report the damage
        return ext == ".seg.nrrd"
    return any(re.match(r"^Segment\d+_", key) for key in header)


def labelmap_dtype(max_value: int) -> np.dtype:
    """``uint8`` when ``max_value <= 255``, else ``uint16``."""
    return np.dtype(np.uint8) if max_value <= 255 else np.dtype(np.uint16)


def _as_label_array(array: np.ndarray, source: str) -> np.ndarray:
    """Check that ``array`` holds label values (whole numbers in 0..65535); return it with an integer type."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise PesfError(
                f"{source} holds non-integer values, so it is not a label map (an image?); give a label map"
            )
    elif not np.issubdtype(array.dtype, np.integer):
        raise PesfError(f"{source} has {array.dtype} voxels; a label map needs whole numbers")
    if array.size and array.min() < 0:
        raise PesfError(f"{source} has negative values (min {array.min()}); label values must be 0 or more")
    max_value = int(array.max()) if array.size else 0
    if max_value > MAX_LABEL_VALUE:
        raise PesfError(
            f"{source} has label value {max_value}; PESF supports label values up to {MAX_LABEL_VALUE}"
        )
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(labelmap_dtype(max_value))
    return array


def _geometry_from_ijk_to_lps(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    matrix = np.asarray(matrix, dtype=np.float64)
    axes = matrix[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise PesfError("the segmentation has a zero voxel size in its header; export it again from Slicer")
    return matrix[:3, 3].copy(), spacing, axes / spacing[None, :]


def _read_segmentation(path: Path) -> tuple[Volume, dict[int, SegmentInfo]]:
    import slicerio

    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as exc:  # noqa: BLE001 - slicerio and pynrrd raise many types for bad files
        logger.debug("slicerio could not read %s: %s", path, exc)
        raise PesfError(
            f"cannot read Slicer segmentation {path}: the file is damaged or not a segmentation"
        ) from None
    voxels = np.asarray(seg["voxels"])
    if voxels.ndim not in (3, 4):
        raise PesfError(f"segmentation {path} has {voxels.ndim} dimensions; PESF needs a 3D segmentation")
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    segments = seg.get("segments", [])
    origin, spacing, direction = _geometry_from_ijk_to_lps(seg["ijkToLPS"])

    stored = [int(s.get("labelValue", 1)) for s in segments]
    renumber = len(set(stored)) != len(stored)
    if renumber:
        logger.info(
            "segments of %s share label values across layers; renumbering them 1..%d", path, len(stored)
        )
    out_values = list(range(1, len(segments) + 1)) if renumber else stored
    if max(out_values, default=0) > MAX_LABEL_VALUE:
        raise PesfError(
            f"segmentation {path} uses label values above {MAX_LABEL_VALUE}; relabel it in Slicer"
        )
    labels = np.zeros(layers.shape[1:], dtype=labelmap_dtype(max(out_values, default=0)))
    claimed = np.zeros(layers.shape[1:], dtype=bool)
    overlap = 0
    infos: dict[int, SegmentInfo] = {}
    for segment, stored_value, value in zip(segments, stored, out_values, strict=True):
        layer = int(segment.get("layer", 0))
        if not 0 <= layer < layers.shape[0]:
            raise PesfError(
                f"segment {segment.get('name')!r} of {path} refers to a missing layer; export it again"
            )
        mask = layers[layer] == stored_value
        overlap += int(np.count_nonzero(mask & claimed))
        mask &= ~claimed
        labels[mask] = value
        claimed |= mask
        infos[value] = _segment_info_from_slicerio(segment, value)
    if overlap:
        logger.warning(
            "%s has overlapping segments; %d voxels were given to the segment listed first", path, overlap
        )
    return Volume(labels, origin, spacing, direction), infos


def _segment_info_from_slicerio(segment: dict[str, Any], value: int) -> SegmentInfo:
    name = str(segment.get("name") or f"Segment_{value}")
    color = segment.get("color")
    if color is not None:
        color = tuple(min(1.0, max(0.0, float(c))) for c in color)
    return SegmentInfo(name=name, value=value, color=color, terminology=segment.get("terminology"))


def read_labelmap(
    path: str | os.PathLike[str], like: Volume | None = None
) -> tuple[Volume, dict[int, SegmentInfo] | None]:
    """Read a label map (NIfTI, NRRD, MetaImage, DICOM) or a Slicer segmentation (``.seg.nrrd``).

    Args:
        path: the label map file.
        like: when given, the image the label map belongs to; the grids must match.

    Returns:
        ``(labels, segments)``: the label map (integer voxels, 0 = background; the file's integer type is
        kept, a Slicer segmentation is ``uint8``/``uint16``) and the segment descriptions by label value, or
        ``None`` when the file holds none (plain label maps).

    Raises:
        PesfError: the file is missing or unreadable, not a 3D label map, or its grid differs from ``like``.
    """
    path = Path(path)
    if not path.exists():
        raise PesfError(f"label map {path} does not exist; check the path")
    segments: dict[int, SegmentInfo] | None
    if path.is_file() and _is_slicer_segmentation(path):
        labels, segments = _read_segmentation(path)
    else:
        image = read_sitk_image(path, "label map")
        volume = sitk_to_volume(image, f"label map {path}")
        labels = volume.with_array(_as_label_array(volume.array, f"label map {path}"))
        segments = None
    if like is not None and not labels.same_geometry(like):
        raise PesfError(
            f"label map {path} geometry differs from the image: {describe_geometry_difference(labels, like)}; "
            "resample it onto the image grid first"
        )
    logger.debug("read label map %s: shape %s, values %s", path, labels.shape, sorted(segments or {}))
    return labels, segments


def _complete_segments(values: list[int], segments: dict[int, SegmentInfo] | None) -> list[SegmentInfo]:
    """Segment descriptions for every value present, and every described value, sorted by value."""
    segments = dict(segments or {})
    for key, info in segments.items():
        if int(key) != info.value:
            raise PesfError(
                f"segment {info.name!r} is stored under value {key} but has value {info.value}; make them equal"
            )
    names: dict[str, int] = {}
    for info in segments.values():
        if info.name in names:
            raise PesfError(
                f"segments {names[info.name]} and {info.value} are both named {info.name!r}; rename one"
            )
        names[info.name] = info.value
    for value in values:
        if value not in segments:
            segments[value] = default_segment_info(f"Segment_{value}", value)
    return [segments[v] for v in sorted(segments)]


def _write_segmentation(labels: np.ndarray, volume: Volume, path: Path, infos: list[SegmentInfo]) -> None:
    import slicerio

    seg_segments = []
    for info in infos:
        segment: dict[str, Any] = {
            "id": f"Segment_{info.value}",
            "name": info.name,
            "nameAutoGenerated": False,
            "color": [round(float(c), 6) for c in info.color],  # type: ignore[union-attr]
            "colorAutoGenerated": False,
            "labelValue": info.value,
            "layer": 0,
        }
        terminology = info.terminology_dict()
        if terminology is not None:
            segment["terminology"] = terminology
        seg_segments.append(segment)
    segmentation = {
        "voxels": labels,
        "ijkToLPS": volume.ijk_to_lps,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": seg_segments,
    }
    with atomic_path(path) as tmp:
        try:
            slicerio.write_segmentation(str(tmp), segmentation)
        except OSError as exc:
            logger.debug("slicerio could not write %s: %s", tmp, exc)
            raise PesfError(
                f"could not write segmentation {path}; check free disk space and permissions"
            ) from None


def write_labelmap(
    volume: Volume, path: str | os.PathLike[str], segments: dict[int, SegmentInfo] | None = None
) -> Path:
    """Write a label map atomically; the format follows the extension.

    ``.seg.nrrd`` writes a 3D Slicer segmentation holding the segment names, colours, label values and
    terminology (values present in the map without a description get ``Segment_<value>``). ``.nii.gz``,
    ``.nii``, ``.nrrd`` and ``.mha`` write a plain label map; they cannot hold segment names.

    Args:
        volume: the label map (whole numbers ``0..65535``; written as ``uint8`` or ``uint16``).
        path: the output file; its folder must exist.
        segments: segment descriptions by label value.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        PesfError: unsupported extension, missing output folder, values that are not labels, or
            inconsistent segment descriptions.
    """
    path = check_output_path(path)
    ext = _extension(path)
    if ext not in LABELMAP_WRITE_EXTENSIONS:
        raise PesfError(
            f"cannot write label map {path}: unsupported extension {ext or '(none)'}; "
            "use .seg.nrrd (Slicer), .nii.gz, .nii, .nrrd or .mha"
        )
    array = _as_label_array(np.asarray(volume.array), "the label map to write")
    max_value = max([int(array.max()) if array.size else 0] + [int(v) for v in (segments or {})])
    labels = array.astype(labelmap_dtype(max_value), copy=False)
    if ext == ".seg.nrrd":
        present = [int(v) for v in np.unique(labels) if v != 0]
        _write_segmentation(labels, volume, path, _complete_segments(present, segments))
    else:
        if segments:
            logger.info("%s cannot hold segment names or colours; write .seg.nrrd to keep them", path.name)
        write_sitk_image(volume_to_sitk(volume.with_array(labels)), path, "label map")
    logger.debug("wrote label map %s (%s)", path, labels.dtype)
    return path
