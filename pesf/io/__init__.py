"""Reading and writing what the engine consumes and produces.

* :mod:`pesf.io.volume`: the :class:`Volume` type and its conventions (``[i, j, k]`` arrays, LPS millimetres).
* :mod:`pesf.io.image`: images from NIfTI, NRRD, MetaImage and DICOM series.
* :mod:`pesf.io.labelmap`: label maps, including 3D Slicer segmentations (``.seg.nrrd``).
* :mod:`pesf.io.labels`: the standard organ table, colours, terminology and ``name=value`` organ lists.
* :mod:`pesf.io.prompts`: click prompts (PESF JSON and Slicer ``.mrk.json``) in voxel indices.
* :mod:`pesf.io.atomic`: atomic file writes.
"""

from __future__ import annotations

from pesf.io.atomic import atomic_path, atomic_write, write_json_atomic, write_text_atomic
from pesf.io.image import (
    as_float32,
    describe_geometry_difference,
    read_volume,
    sitk_to_volume,
    volume_to_sitk,
    write_volume,
)
from pesf.io.labelmap import read_labelmap, write_labelmap
from pesf.io.labels import (
    OrganInfo,
    SegmentInfo,
    default_segment_info,
    organ_color,
    organ_info,
    organ_table,
    parse_organs_arg,
    segments_from_names,
    totalsegmentator_label_names,
)
from pesf.io.prompts import OrganPrompt, PromptPoint, load_prompts, save_markups, save_prompts
from pesf.io.volume import Volume, lps_to_ras, ras_to_lps

__all__ = [
    "OrganInfo",
    "OrganPrompt",
    "PromptPoint",
    "SegmentInfo",
    "Volume",
    "as_float32",
    "atomic_path",
    "atomic_write",
    "default_segment_info",
    "describe_geometry_difference",
    "load_prompts",
    "lps_to_ras",
    "organ_color",
    "organ_info",
    "organ_table",
    "parse_organs_arg",
    "ras_to_lps",
    "read_labelmap",
    "read_volume",
    "save_markups",
    "save_prompts",
    "segments_from_names",
    "sitk_to_volume",
    "totalsegmentator_label_names",
    "volume_to_sitk",
    "write_json_atomic",
    "write_labelmap",
    "write_text_atomic",
    "write_volume",
]
