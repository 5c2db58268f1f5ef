"""Organ names, label values, colours and terminology: the standard organ table and segment descriptions.

Organ names follow TotalSegmentator (``liver``, ``kidney_left``, ``inferior_vena_cava``...). The bundled table
``pesf/data/organs.json`` gives each common organ a display name, a display colour (after 3D Slicer's
General Anatomy recommended colours) and its SNOMED CT codes, so segmentations written for Slicer carry a
standard terminology entry. Organs outside the table still get a stable, distinct colour.

:class:`SegmentInfo` describes one segment of a label map (name, label value, colour, terminology); it is
what :mod:`pesf.io.labelmap` reads from and writes to ``.seg.nrrd`` files.
"""

from __future__ import annotations

import colorsys
import functools
import json
import re
import zlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pesf.errors import PesfError

__all__ = [
    "MAX_LABEL_VALUE",
    "OrganInfo",
    "SegmentInfo",
    "default_segment_info",
    "normalize_organ_name",
    "organ_color",
    "organ_info",
    "organ_table",
    "parse_organs_arg",
    "segments_from_names",
    "terminology_from_string",
    "terminology_to_string",
    "totalsegmentator_label_names",
]

#: Largest label value the engine writes (label maps are stored as ``uint8`` or ``uint16``).
MAX_LABEL_VALUE = 65535

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_ .()+-]*$")

Color = tuple[float, float, float]


@dataclass(frozen=True)
class OrganInfo:
    """One row of the standard organ table.

    Attributes:
        name: TotalSegmentator-style name, e.g. ``"kidney_left"``.
        display_name: human-readable name, e.g. ``"Left kidney"``.
        color: display colour, RGB floats in ``0..1``.
        terminology: Slicer terminology entry as a dict (keys ``contextName``, ``category``, ``type``,
            optional ``typeModifier``, ``anatomicContextName``), each code a ``[scheme, value, meaning]`` list.
    """

    name: str
    display_name: str
    color: Color
    terminology: dict[str, Any] | None = None


def terminology_from_string(text: str) -> dict[str, Any]:
    """Parse a Slicer terminology entry string into a dict.

    The string has seven ``~``-separated fields: context name, category, type, type modifier, anatomic
    context name, anatomic region and anatomic region modifier; each code is ``scheme^value^meaning``.

    Raises:
        PesfError: the string is not a terminology entry.
    """
    fields = text.split("~")
    if len(fields) != 7:
        raise PesfError(
            f"terminology {text!r} is not a Slicer terminology entry (7 fields separated by '~'); "
            "copy it from a segment's TerminologyEntry tag"
        )
    codes = [f.split("^") for f in fields[1:4] + fields[5:7]]
    if any(len(c) != 3 for c in codes) or not all(codes[0]) or not all(codes[1]):
        raise PesfError(
            f"terminology {text!r} needs category and type codes written scheme^value^meaning; "
            "copy it from a segment's TerminologyEntry tag"
        )
    entry: dict[str, Any] = {"contextName": fields[0], "category": codes[0], "type": codes[1]}
    if any(codes[2]):
        entry["typeModifier"] = codes[2]
    if fields[4]:
        entry["anatomicContextName"] = fields[4]
    if any(codes[3]):
        entry["anatomicRegion"] = codes[3]
        if any(codes[4]):
            entry["anatomicRegionModifier"] = codes[4]
    return entry


def terminology_to_string(entry: dict[str, Any]) -> str:
    """Format a terminology dict (as returned by :func:`terminology_from_string`) as a Slicer entry string."""

    def code(key: str) -> str:
        return "^".join(str(part) for part in entry.get(key, ["", "", ""]))

    return "~".join(
        [
            str(entry.get("contextName", "")),
            code("category"),
            code("type"),
            code("typeModifier"),
            str(entry.get("anatomicContextName", "")),
            code("anatomicRegion"),
            code("anatomicRegionModifier"),
        ]
    )


def _check_terminology_dict(entry: dict[str, Any], segment: str) -> dict[str, Any]:
    for key in ("category", "type"):
        codes = entry.get(key)
        if not isinstance(codes, list | tuple) or len(codes) != 3:
            raise PesfError(
                f"terminology of segment {segment!r} needs {key!r} as [scheme, value, meaning], "
                'e.g. ["SCT", "123037004", "Anatomical Structure"]'
            )
    return {k: (list(map(str, v)) if isinstance(v, list | tuple) else v) for k, v in entry.items()}


@dataclass
class SegmentInfo:
    """One segment of a label map.

    Attributes:
        name: segment name, e.g. ``"liver"``.
        value: label value in the label map (``1..65535``).
        color: RGB floats in ``0..1``; ``None`` picks the organ's standard colour.
        terminology: Slicer terminology, as a dict (see :class:`OrganInfo`) or an entry string, or ``None``.
    """

    name: str
    value: int
    color: Color | None = None
    terminology: dict[str, Any] | str | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or int(self.value) != self.value:
            raise PesfError(f"segment {self.name!r} has label value {self.value!r}; use a whole number")
        self.value = int(self.value)
        if not 1 <= self.value <= MAX_LABEL_VALUE:
            raise PesfError(
                f"segment {self.name!r} has label value {self.value}; use a value from 1 to {MAX_LABEL_VALUE}"
            )
        if self.color is None:
            self.color = organ_color(self.name)
        color = tuple(float(c) for c in self.color)
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise PesfError(
                f"segment {self.name!r} has colour {list(self.color)}; give three numbers from 0 to 1 (RGB)"
            )
        self.color = color  # type: ignore[assignment]

    def terminology_dict(self) -> dict[str, Any] | None:
        """The terminology as a dict (parsed if it was given as a string), or ``None``."""
        if self.terminology is None:
            return None
        if isinstance(self.terminology, str):
            return terminology_from_string(self.terminology)
        return _check_terminology_dict(dict(self.terminology), self.name)


def normalize_organ_name(name: str) -> str:
    """Lower-case a name and join words with underscores: ``"Kidney Left"`` -> ``"kidney_left"``."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


@functools.lru_cache(maxsize=1)
def organ_table() -> dict[str, OrganInfo]:
    """The standard organ table, by organ name, in the order of ``pesf/data/organs.json``."""
    text = resources.files("pesf").joinpath("data/organs.json").read_text(encoding="utf-8")
    doc = json.loads(text)
    table: dict[str, OrganInfo] = {}
    for row in doc["organs"]:
        terminology: dict[str, Any] = {
            "contextName": doc["context_name"],
            "category": list(doc["category"]),
            "type": list(row["type"]),
            "anatomicContextName": doc["anatomic_context_name"],
        }
        if "type_modifier" in row:
            terminology["typeModifier"] = list(row["type_modifier"])
        color = tuple(c / 255.0 for c in row["color"])
        table[row["name"]] = OrganInfo(row["name"], row["display_name"], color, terminology)  # type: ignore[arg-type]
    return table


def organ_info(name: str) -> OrganInfo | None:
    """The table row of an organ (matched after :func:`normalize_organ_name`), or ``None``."""
    return organ_table().get(normalize_organ_name(name))


def organ_color(name: str) -> Color:
    """The display colour of an organ: the table colour, else a stable distinct colour derived from the name.

    Args:
        name: organ name (case and spaces do not matter).

    Returns:
        RGB floats in ``0..1``.
    """
    info = organ_info(name)
    if info is not None:
        return info.color
    # Golden-ratio hue steps from a stable hash give well separated, reproducible colours.
    h = zlib.crc32(normalize_organ_name(name).encode("utf-8"))
    hue = ((h & 0xFFFF) * 0.618033988749895) % 1.0
    saturation = 0.45 + 0.3 * (((h >> 16) & 0xFF) / 255.0)
    return tuple(round(c, 6) for c in colorsys.hsv_to_rgb(hue, saturation, 0.85))  # type: ignore[return-value]


def default_segment_info(name: str, value: int) -> SegmentInfo:
    """A segment description for an organ: its standard colour and terminology when the table knows it."""
    info = organ_info(name)
    terminology = dict(info.terminology) if info is not None and info.terminology else None
    return SegmentInfo(name=name, value=value, color=organ_color(name), terminology=terminology)


def segments_from_names(names: dict[int, str]) -> dict[int, SegmentInfo]:
    """Segment descriptions for a ``{value: name}`` label table (e.g. TotalSegmentator's)."""
    return {int(v): default_segment_info(n, int(v)) for v, n in sorted(names.items())}


def totalsegmentator_label_names(task: str = "total") -> dict[int, str]:
    """TotalSegmentator's ``{value: name}`` table for ``task`` (``"total"`` or ``"total_mr"``).

    Read from ``totalsegmentator_<task>_labels.json`` in the sample data folder.

    Raises:
        PesfError: no table is bundled for ``task``.
    """
    from pesf.resources import sample_data_dir

    path = sample_data_dir() / f"totalsegmentator_{task}_labels.json"
    if not path.is_file():
        raise PesfError(
            f"no TotalSegmentator label table for task {task!r} ({path}); use 'total' or 'total_mr'"
        )
    return {int(k): str(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


def parse_organs_arg(text: str) -> dict[str, int]:
    """Parse an organ list such as ``"liver=5,spleen=1"`` into ``{"liver": 5, "spleen": 1}``.

    Args:
        text: comma-separated ``name=value`` items; spaces around items are ignored.

    Returns:
        Organ name to label value, in the given order.

    Raises:
        PesfError: an item is malformed, a name or value repeats, or a value is not in ``1..65535``.
    """
    example = 'e.g. "liver=1,spleen=2"'
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise PesfError(f"the organ list is empty; give name=value items, {example}")
    organs: dict[str, int] = {}
    owners: dict[int, str] = {}
    for item in items:
        if not item:
            raise PesfError(f"the organ list {text!r} has an empty item; give name=value items, {example}")
        name, sep, value_text = (part.strip() for part in item.partition("="))
        if not sep or not name or not value_text:
            raise PesfError(f"organ item {item!r} is not name=value; write {example}")
        if not _NAME_RE.match(name):
            raise PesfError(
                f"organ name {name!r} has unusual characters; use letters, digits and underscores"
            )
        try:
            value = int(value_text)
        except ValueError:
            raise PesfError(
                f"organ item {item!r} has a value that is not a whole number; write {example}"
            ) from None
        if not 1 <= value <= MAX_LABEL_VALUE:
            raise PesfError(
                f"organ {name!r} has label value {value}; use a value from 1 to {MAX_LABEL_VALUE}"
            )
        if name in organs:
            raise PesfError(f"organ {name!r} appears twice in the organ list; give each organ once")
        if value in owners:
            raise PesfError(
                f"organs {owners[value]!r} and {name!r} both have label value {value}; use distinct values"
            )
        organs[name] = value
        owners[value] = name
    return organs
