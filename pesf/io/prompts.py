"""Prompt files: click points per organ, read into voxel indices of the image they belong to.

**PESF prompt JSON** (any ``.json`` with an ``organs`` list; ``positive`` defaults to ``true``)::

    {"space": "LPS",
     "organs": [{"name": "liver", "value": 1,
                 "points": [{"position": [x, y, z], "positive": true}, ...]}, ...]}

``space`` is ``"IJK"`` (voxel indices of the input image, fractional allowed), ``"LPS"`` or ``"RAS"`` (mm).

**3D Slicer markups** (``.mrk.json`` as Slicer saves point lists; legacy ``.fcsv`` too). Each point list
(``Fiducial`` markup) is one organ:

* The organ name is the list's ``name``, else the file name without ``.mrk.json`` (the name Slicer gives
  the list on loading). Lists with the same organ name, in one file or several, are merged.
* **Negative points** (background clicks): all points of a list named ``<organ>-negative`` (or
  ``<organ>_negative``, ``<organ> negative``) are negative points of ``<organ>``; in any list, a point whose
  label starts with ``-`` (e.g. ``-liver-3``) or whose description is ``negative`` (or ``neg``,
  ``background``, ``-``) is negative. All other points are positive. :func:`save_markups` writes negative
  points with both marks.
* Points Slicer marks ``undefined`` or ``preview`` are skipped; ``coordinateSystem`` may be ``LPS``
  (Slicer's default) or ``RAS``, ``coordinateUnits`` ``mm`` or ``um``.
* Markups hold no label values: organs get ``1..N`` in order of first appearance (skipping values taken by
  PESF files) unless ``values`` (e.g. from :func:`~pesf.io.labels.parse_organs_arg`) names them.

Every organ needs a positive point, and every point must lie inside the image (within half a voxel of the
outer voxel centres); otherwise :class:`~pesf.errors.PesfError` names the organ and the point.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pesf.errors import PesfError
from pesf.io.atomic import split_extension, write_json_atomic
from pesf.io.labels import MAX_LABEL_VALUE, organ_color
from pesf.io.volume import Volume, lps_to_ras, ras_to_lps

__all__ = ["SPACES", "OrganPrompt", "PromptPoint", "load_prompts", "save_markups", "save_prompts"]

logger = logging.getLogger(__name__)

#: Coordinate spaces of PESF prompt files.
SPACES: tuple[str, ...] = ("IJK", "LPS", "RAS")

_MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
_NEGATIVE_LIST = re.compile(r"^(?P<organ>.+?)[\s_-]+negative$", re.IGNORECASE)
_NEGATIVE_DESCRIPTIONS = {"negative", "neg", "background", "-"}
_UNITS_TO_MM = {"mm": 1.0, "um": 0.001}


@dataclass
class PromptPoint:
    """One click.

    Attributes:
        position_ijk: continuous voxel index ``(i, j, k)`` of the image, shape ``(3,)``.
        positive: ``True`` for a click inside the organ, ``False`` for a background click.
    """

    position_ijk: np.ndarray
    positive: bool = True

    def __post_init__(self) -> None:
        self.position_ijk = np.asarray(self.position_ijk, dtype=np.float64).reshape(3)
        self.positive = bool(self.positive)


@dataclass
class OrganPrompt:
    """The clicks for one organ.

    Attributes:
        name: organ name, e.g. ``"liver"``.
        value: label value of the organ in output label maps.
        points: the clicks, in the order given.
    """

    name: str
    value: int
    points: list[PromptPoint] = field(default_factory=list)

    @property
    def positive_points(self) -> np.ndarray:
        """Positive click indices, shape ``(N, 3)``."""
        return _stack([p.position_ijk for p in self.points if p.positive])

    @property
    def negative_points(self) -> np.ndarray:
        """Negative click indices, shape ``(N, 3)``."""
        return _stack([p.position_ijk for p in self.points if not p.positive])


def _stack(positions: list[np.ndarray]) -> np.ndarray:
    return np.array(positions, dtype=np.float64).reshape(-1, 3)


@dataclass
class _RawPoint:
    position: np.ndarray  # in the file's space, mm or voxel index
    positive: bool
    where: str  # e.g. "point 2" or "point 'liver-2'"


@dataclass
class _RawOrgan:
    name: str
    value: int | None
    space: str
    source: Path
    points: list[_RawPoint] = field(default_factory=list)


def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in np.asarray(v).reshape(-1)) + ")"


def _to_ijk(points: np.ndarray, space: str, image: Volume) -> np.ndarray:
    if space == "IJK":
        return np.asarray(points, dtype=np.float64)
    lps = ras_to_lps(points) if space == "RAS" else np.asarray(points, dtype=np.float64)
    return image.lps_to_index(lps)


def _from_ijk(ijk: np.ndarray, space: str, image: Volume) -> np.ndarray:
    if space == "IJK":
        return np.asarray(ijk, dtype=np.float64)
    lps = image.index_to_lps(ijk)
    return lps_to_ras(lps) if space == "RAS" else lps


def _inside(ijk: np.ndarray, shape: tuple[int, int, int]) -> bool:
    return bool(np.all(ijk >= -0.5 - 1e-6) and np.all(ijk <= np.asarray(shape) - 0.5 + 1e-6))


def _extent_text(image: Volume, space: str) -> str:
    i, j, k = image.shape
    if space == "IJK":
        return f"voxel indices 0..{i - 1}, 0..{j - 1}, 0..{k - 1}"
    corners = np.array(list(itertools.product((0, i - 1), (0, j - 1), (0, k - 1))), dtype=np.float64)
    pts = _from_ijk(corners, space, image)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    ranges = ", ".join(f"{axis} {lo[n]:.1f}..{hi[n]:.1f}" for n, axis in enumerate("xyz"))
    return f"{space} {ranges} mm ({i}x{j}x{k} voxels)"


def _check_inside(organ: _RawOrgan, point: _RawPoint, ijk: np.ndarray, image: Volume) -> None:
    if _inside(ijk, image.shape):
        return
    hint = ""
    if organ.space in ("LPS", "RAS"):
        other = "RAS" if organ.space == "LPS" else "LPS"
        if _inside(_to_ijk(point.position, other, image), image.shape):
            hint = f" (it would be inside if the coordinates were {other}: check the coordinate system)"
    raise PesfError(
        f"{point.where} of organ {organ.name!r} in {organ.source} is outside the image: "
        f"{organ.space} {_fmt(point.position)} is voxel {_fmt(ijk)}, but the image spans "
        f"{_extent_text(image, organ.space)}{hint}"
    )


def _read_json(path: Path) -> Any:
    if path.is_dir():
        raise PesfError(f"prompt file {path} is a folder; give a .json or .mrk.json file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise PesfError(f"prompt file {path} is not a text file; give a .json or .mrk.json file") from None
    if not text.strip():
        raise PesfError(f"prompt file {path} is empty; add organs with points")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PesfError(
            f"prompt file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix the syntax"
        ) from None


def _position(raw: Any, where: str, source: Path) -> np.ndarray:
    if not isinstance(raw, list | tuple) or len(raw) != 3:
        raise PesfError(f"{where} in {source} needs a 'position' of three numbers [x, y, z]")
    try:
        pos = np.array([float(v) for v in raw if not isinstance(v, bool | str)], dtype=np.float64)
    except (TypeError, ValueError):
        pos = np.zeros(0)
    if pos.shape != (3,) or not np.all(np.isfinite(pos)):
        raise PesfError(f"{where} in {source} has position {raw!r}; give three finite numbers [x, y, z]")
    return pos


def _label_value(raw: Any, name: str, source: Path) -> int:
    whole = not isinstance(raw, bool) and isinstance(raw, int | float) and int(raw) == raw
    if not whole or not 1 <= raw <= MAX_LABEL_VALUE:
        raise PesfError(
            f"organ {name!r} in {source} has value {raw!r}; use a whole number from 1 to {MAX_LABEL_VALUE}"
        )
    return int(raw)


def _parse_pesf(doc: dict[str, Any], source: Path) -> list[_RawOrgan]:
    if "space" not in doc:
        raise PesfError(f'prompt file {source} has no \'space\'; add "space": "LPS" (or "RAS" or "IJK")')
    space = doc["space"]
    if not isinstance(space, str) or space.upper() not in SPACES:
        raise PesfError(f"prompt file {source} has unknown space {space!r}; use IJK, LPS or RAS")
    space = space.upper()
    organs_raw = doc["organs"]
    if not isinstance(organs_raw, list) or not organs_raw:
        raise PesfError(f"prompt file {source} has no organs; 'organs' must be a list of organs with points")
    organs: list[_RawOrgan] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(organs_raw, start=1):
        if not isinstance(raw, dict):
            raise PesfError(f"organ {n} in {source} is not an object with 'name', 'value' and 'points'")
        for key in ("name", "value", "points"):
            if key not in raw:
                raise PesfError(
                    f"organ {n} in {source} has no {key!r}; give each organ 'name', 'value', 'points'"
                )
        name = raw["name"]
        if not isinstance(name, str) or not name.strip():
            raise PesfError(f"organ {n} in {source} has name {name!r}; give a non-empty text name")
        name = name.strip()
        if name in seen:
            raise PesfError(
                f"organ {name!r} appears twice in {source} (organs {seen[name]}, {n}); merge them"
            )
        seen[name] = n
        organ = _RawOrgan(name, _label_value(raw["value"], name, source), space, source)
        if not isinstance(raw["points"], list):
            raise PesfError(f"organ {name!r} in {source} has 'points' that is not a list")
        for m, point in enumerate(raw["points"], start=1):
            where = f"point {m}"
            if not isinstance(point, dict) or "position" not in point:
                raise PesfError(f"{where} of organ {name!r} in {source} needs a 'position' [x, y, z]")
            positive = point.get("positive", True)
            if not isinstance(positive, bool):
                raise PesfError(
                    f"{where} of organ {name!r} in {source} has positive={positive!r}; use true/false"
                )
            pos = _position(point["position"], f"{where} of organ {name!r}", source)
            organ.points.append(_RawPoint(pos, positive, where))
        organs.append(organ)
    return organs


def _parse_markups(doc: dict[str, Any], source: Path) -> list[_RawOrgan]:
    markups = doc["markups"]
    if not isinstance(markups, list) or not markups:
        raise PesfError(f"markups file {source} holds no markups; place points in Slicer and save them again")
    organs: list[_RawOrgan] = []
    for n, markup in enumerate(markups, start=1):
        if not isinstance(markup, dict):
            raise PesfError(f"markup {n} in {source} is not an object; save the file again from Slicer")
        kind = markup.get("type", "Fiducial")
        if kind != "Fiducial":
            raise PesfError(
                f"markup {n} in {source} is a {kind}; PESF prompts are point lists (Fiducial markups)"
            )
        system = str(markup.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise PesfError(f"markup {n} in {source} has coordinate system {system!r}; use LPS or RAS")
        units = markup.get("coordinateUnits", "mm")
        units = units[0] if isinstance(units, list) and units else units
        if units not in _UNITS_TO_MM:
            raise PesfError(f"markup {n} in {source} has coordinate units {units!r}; use mm")
        list_name = str(markup.get("name") or "").strip() or split_extension(source.name)[0]
        match = _NEGATIVE_LIST.match(list_name)
        organ = _RawOrgan(match.group("organ") if match else list_name, None, system, source)
        points = markup.get("controlPoints", [])
        if not isinstance(points, list):
            raise PesfError(f"markup {list_name!r} in {source} has 'controlPoints' that is not a list")
        for m, point in enumerate(points, start=1):
            if not isinstance(point, dict):
                raise PesfError(f"point {m} of markup {list_name!r} in {source} is not an object")
            if point.get("positionStatus", "defined") != "defined":
                continue
            label = str(point.get("label") or "")
            where = f"point {label!r}" if label else f"point {m}"
            pos = _position(point.get("position"), f"{where} of markup {list_name!r}", source)
            negative = (
                match is not None
                or label.startswith("-")
                or str(point.get("description") or "").strip().lower() in _NEGATIVE_DESCRIPTIONS
            )
            organ.points.append(_RawPoint(pos * _UNITS_TO_MM[units], not negative, where))
        organs.append(organ)
    return organs


def _parse_file(path: Path) -> list[_RawOrgan]:
    if not path.exists():
        raise PesfError(f"prompt file {path} does not exist; check the path")
    if split_extension(path.name)[1].lower() == ".fcsv":
        import slicerio

        try:
            doc: Any = slicerio.read_markups_fcsv(str(path))
        except (OSError, ValueError, UnicodeDecodeError):
            raise PesfError(
                f"cannot read Slicer point list {path}; save it again from Slicer as .mrk.json"
            ) from None
        return _parse_markups(doc, path)
    doc = _read_json(path)
    if isinstance(doc, dict) and "markups" in doc:
        return _parse_markups(doc, path)
    if isinstance(doc, dict) and "organs" in doc:
        return _parse_pesf(doc, path)
    raise PesfError(
        f"prompt file {path} is neither a PESF prompt file (with 'space' and 'organs') "
        "nor a Slicer markups file (with 'markups')"
    )


def _merge(raw_organs: list[_RawOrgan], values: dict[str, int] | None) -> list[_RawOrgan]:
    """Merge organs of the same name (points already in voxel indices), apply ``values``, number the rest."""
    merged: dict[str, _RawOrgan] = {}
    for organ in raw_organs:
        known = merged.get(organ.name)
        if known is None:
            merged[organ.name] = organ
            continue
        if organ.value is not None and known.value is not None and organ.value != known.value:
            raise PesfError(
                f"organ {organ.name!r} has value {known.value} in {known.source} and {organ.value} in "
                f"{organ.source}; give it one value"
            )
        known.value = known.value if known.value is not None else organ.value
        known.points.extend(organ.points)
    for name, value in (values or {}).items():
        if name in merged:
            merged[name].value = value
    used: dict[int, _RawOrgan] = {}
    for organ in merged.values():
        if organ.value is None:
            continue
        other = used.get(organ.value)
        if other is not None:
            where = " and ".join(sorted({str(other.source), str(organ.source)}))
            raise PesfError(
                f"organs {other.name!r} and {organ.name!r} in {where} both have value {organ.value}; use distinct values"
            )
        used[organ.value] = organ
    next_value = 1
    for organ in merged.values():
        if organ.value is None:
            while next_value in used:
                next_value += 1
            organ.value = next_value
            used[next_value] = organ
    return list(merged.values())


def load_prompts(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    image: Volume,
    values: dict[str, int] | None = None,
) -> list[OrganPrompt]:
    """Read prompt points and convert them to continuous voxel indices of ``image``.

    Args:
        path: a PESF prompt JSON, a Slicer ``.mrk.json`` (or ``.fcsv``), or a list of such files whose organs
            are merged by name.
        image: the image the prompts were placed on.
        values: organ name to label value; overrides the file's values and numbers markups organs.

    Returns:
        One :class:`OrganPrompt` per organ, in order of first appearance, points in ``image`` voxel indices.

    Raises:
        PesfError: the file is missing, empty or malformed; a space is unknown; an organ has no positive
            point; a point is outside the image; or organ names or values collide.
    """
    paths = [Path(path)] if isinstance(path, str | os.PathLike) else [Path(p) for p in path]
    if not paths:
        raise PesfError("no prompt file given; give a .json or .mrk.json file")
    raw = [organ for p in paths for organ in _parse_file(p)]
    for organ in raw:  # to voxel indices, each point checked to lie inside the image
        for point in organ.points:
            ijk = _to_ijk(point.position, organ.space, image)
            _check_inside(organ, point, ijk, image)
            point.position = ijk
        organ.space = "IJK"
    prompts = []
    for organ in _merge(raw, values):
        points = [PromptPoint(pt.position, pt.positive) for pt in organ.points]
        if not any(pt.positive for pt in points):
            raise PesfError(
                f"organ {organ.name!r} in {organ.source} has no positive point; add at least one point inside it"
            )
        prompts.append(OrganPrompt(organ.name, int(organ.value or 0), points))
    logger.debug("loaded prompts for %s from %s", [o.name for o in prompts], [str(p) for p in paths])
    return prompts


def save_prompts(
    path: str | os.PathLike[str], organs: Sequence[OrganPrompt], image: Volume, space: str = "LPS"
) -> Path:
    """Write prompts as a PESF prompt JSON (atomically), with positions in ``space``.

    Args:
        path: the output ``.json`` file.
        organs: the organs and their points (voxel indices of ``image``).
        image: the image the points belong to.
        space: ``"IJK"``, ``"LPS"`` or ``"RAS"``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    space = space.upper()
    if space not in SPACES:
        raise PesfError(f"unknown prompt space {space!r}; use IJK, LPS or RAS")
    doc = {
        "space": space,
        "organs": [
            {
                "name": organ.name,
                "value": int(organ.value),
                "points": [
                    {
                        "position": [float(v) for v in _from_ijk(p.position_ijk, space, image)],
                        "positive": p.positive,
                    }
                    for p in organ.points
                ],
            }
            for organ in organs
        ],
    }
    return write_json_atomic(path, doc)


def save_markups(
    path: str | os.PathLike[str], organ: OrganPrompt, image: Volume, coordinate_system: str = "LPS"
) -> Path:
    """Write one organ's points as a Slicer point list (``.mrk.json``, atomically).

    The list is named after the organ and coloured with its colour; negative points get a label starting
    with ``-`` and the description ``negative`` (the convention :func:`load_prompts` reads back).

    Args:
        path: the output file; its name must end in ``.mrk.json``.
        organ: the organ and its points (voxel indices of ``image``).
        image: the image the points belong to.
        coordinate_system: ``"LPS"`` (Slicer's default for files) or ``"RAS"``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    system = coordinate_system.upper()
    if system not in ("LPS", "RAS"):
        raise PesfError(f"unknown markups coordinate system {coordinate_system!r}; use LPS or RAS")
    if not path.name.lower().endswith(".mrk.json"):
        raise PesfError(f"markups file {path} must end in .mrk.json so that Slicer recognises it")
    color = [round(float(c), 6) for c in organ_color(organ.name)]
    control_points = [
        {
            "id": str(n),
            "label": f"{organ.name}-{n}" if point.positive else f"-{organ.name}-{n}",
            "description": "" if point.positive else "negative",
            "associatedNodeID": "",
            "position": [float(v) for v in _from_ijk(point.position_ijk, system, image)],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        for n, point in enumerate(organ.points, start=1)
    ]
    markup = {
        "type": "Fiducial",
        "name": organ.name,
        "coordinateSystem": system,
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(control_points),
        "controlPoints": control_points,
        "measurements": [],
        "display": {"visibility": True, "opacity": 1.0, "color": color, "selectedColor": color},
    }
    return write_json_atomic(path, {"@schema": _MARKUPS_SCHEMA, "markups": [markup]})
