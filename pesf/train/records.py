"""Records of the case store and their checks: what it knows about each case and organ, and its rules.

* :class:`OrganRecord`: one organ of one case: its label value, its status (``accepted``, ``pseudo`` or
  ``rejected``, see :data:`STATUSES`) and how its mask was made;
* :class:`CaseRecord`: the index of one case, as stored in its ``case.json``;
* case ids: :func:`check_case_id`, :func:`new_case_id`, :func:`case_id_from_name`;
* :func:`check_case`: the store's rules applied to a label map without writing anything (rejected organs'
  voxels become unknown, every label value needs a record, every painted organ needs voxels), and the
  helpers :class:`~pesf.train.store.CaseStore` checks its inputs with.

Plain data and numpy only: nothing here reads or writes a file (see :mod:`pesf.train.store`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pesf.errors import PesfError
from pesf.io import Volume, describe_geometry_difference
from pesf.io.atomic import split_extension
from pesf.io.labelmap import labelmap_dtype

__all__ = [
    "PAINTED",
    "SOURCES",
    "STATUSES",
    "CaseRecord",
    "OrganRecord",
    "case_id_from_name",
    "check_case",
    "check_case_id",
    "new_case_id",
]

STATUSES = ("accepted", "rejected", "pseudo")
SOURCES = ("clicks", "automatic", "import")
#: Statuses whose organs are painted into the label map (and used for training).
PAINTED = ("accepted", "pseudo")
#: Version of the ``case.json`` and ``workspace.json`` formats.
FORMAT_VERSION = 1
MAX_LABEL_VALUE = 65535

#: A valid case id (a plain folder name).
CASE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_WINDOWS_RESERVED_RE = re.compile(r"(CON|PRN|AUX|NUL|COM[1-9]|LPT[1-9])(\..*)?", re.IGNORECASE)
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ID_HELP = "use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"


def now_iso() -> str:
    """The current UTC time in ISO format, to the second (the store's time stamps)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_case_id(case_id: object) -> str:
    """Return ``case_id`` if it is a valid case id (a plain folder name), else raise :class:`PesfError`."""
    if not isinstance(case_id, str) or not CASE_ID_RE.fullmatch(case_id) or case_id.endswith("."):
        raise PesfError(f"case id {case_id!r} is not valid; {_ID_HELP}, not ending with '.'")
    if _WINDOWS_RESERVED_RE.fullmatch(case_id):
        raise PesfError(f"case id {case_id!r} is a reserved device name on Windows; choose another")
    return case_id


def new_case_id() -> str:
    """A fresh random case id such as ``case-1f3a9c02``."""
    return f"case-{uuid.uuid4().hex[:8]}"


def case_id_from_name(name: str | os.PathLike[str]) -> str:
    """A valid case id made from a file or folder name: its stem, other characters replaced by ``_``."""
    stem = split_extension(Path(name).name)[0]
    cid = re.sub(r"^[^A-Za-z0-9]+", "", re.sub(r"[^A-Za-z0-9._-]+", "_", stem))[:128].rstrip("._-")
    if not cid or _WINDOWS_RESERVED_RE.fullmatch(cid):
        return new_case_id()
    return cid


def _whole(value: Any, what: str) -> int:
    try:
        ok = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise PesfError(f"{what} is {value!r}; give a whole number")
    return int(value)


# --------------------------------------------------------------------------- records


@dataclass
class OrganRecord:
    """What the store knows about one organ of one case.

    Attributes:
        name: organ name, e.g. ``"liver"``.
        value: its label value in the case's label map (``1..65535``).
        status: ``"accepted"``, ``"rejected"`` or ``"pseudo"``.
        confidence: the model's confidence in ``0..1``, or ``None``.
        source: how the mask was made: ``"clicks"``, ``"automatic"`` or ``"import"``.
        author: who or what made it: a user name, ``"pesf-model v3"``, ``"TotalSegmentator"``...
        model_version: the model that made it, or ``None``.
        n_clicks: clicks used, or ``None``.
        updated: ISO time of the last change, filled by the store.
    """

    name: str
    value: int
    status: str
    confidence: float | None = None
    source: str = "import"
    author: str = ""
    model_version: str | None = None
    n_clicks: int | None = None
    updated: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> OrganRecord:
        """Check every field and normalise its type; raise :class:`PesfError` naming a bad field."""
        if not isinstance(self.name, str) or not self.name.strip() or not self.name.isprintable():
            raise PesfError(f"organ name {self.name!r} is not valid; give a name such as 'liver'")
        self.value = _whole(self.value, f"the label value of organ {self.name!r}")
        if not 1 <= self.value <= MAX_LABEL_VALUE:
            raise PesfError(
                f"organ {self.name!r} has label value {self.value}; use a value from 1 to {MAX_LABEL_VALUE}"
            )
        if self.status not in STATUSES:
            raise PesfError(
                f"organ {self.name!r} has status {self.status!r}; use one of {', '.join(STATUSES)}"
            )
        if self.source not in SOURCES:
            raise PesfError(
                f"organ {self.name!r} has source {self.source!r}; use one of {', '.join(SOURCES)}"
            )
        if self.confidence is not None:
            try:
                self.confidence = float(self.confidence)
            except (TypeError, ValueError):
                self.confidence = float("nan")
            if not 0.0 <= self.confidence <= 1.0:
                raise PesfError(
                    f"organ {self.name!r} has confidence {self.confidence}; use a number from 0 to 1"
                )
        if self.n_clicks is not None:
            self.n_clicks = _whole(self.n_clicks, f"the click count of organ {self.name!r}")
            if self.n_clicks < 0:
                raise PesfError(f"organ {self.name!r} has {self.n_clicks} clicks; use 0 or more")
        for key in ("author", "updated"):
            if not isinstance(getattr(self, key), str):
                raise PesfError(f"organ {self.name!r} has {key} {getattr(self, key)!r}; give text")
        if self.model_version is not None and not isinstance(self.model_version, str):
            raise PesfError(f"organ {self.name!r} has model_version {self.model_version!r}; give text")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OrganRecord:
        """Build a record from :meth:`to_dict` output; keys this version does not know are ignored."""
        if not isinstance(d, Mapping):
            raise PesfError(f"organ record {d!r} is not a JSON object")
        missing = [k for k in ("name", "value", "status") if k not in d]
        if missing:
            raise PesfError(f"organ record {dict(d)!r} lacks {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class CaseRecord:
    """The index of one case, as stored in its ``case.json``.

    Attributes:
        case_id: the case's id (its folder name).
        image_file, label_file, unknown_file: file names in the case folder (``unknown_file`` is ``None``
            when no voxel is unknown).
        organs: organ records by organ name.
        created, updated: ISO times.
        revision: grows whenever the label map or unknown mask changes (it numbers their files).
        grid: the image grid: ``shape``, ``origin``, ``spacing``, ``direction`` (LPS, see :mod:`pesf.io.volume`).
    """

    case_id: str
    image_file: str
    label_file: str
    unknown_file: str | None
    organs: dict[str, OrganRecord]
    created: str
    updated: str
    revision: int
    grid: dict[str, Any] = field(default_factory=dict)

    def organs_with_status(self, *statuses: str) -> list[OrganRecord]:
        """Records whose status is one of ``statuses`` (all records when none given), by label value."""
        wanted = check_statuses(statuses) if statuses else STATUSES
        return sorted((r for r in self.organs.values() if r.status in wanted), key=lambda r: r.value)

    def label_names(self) -> dict[int, str]:
        """``{value: name}`` of the organs painted in the label map (accepted and pseudo)."""
        return {r.value: r.name for r in self.organs_with_status(*PAINTED)}

    def grid_volume(self) -> Volume:
        """An all-zero volume on the image grid (no memory used), for geometry checks and ``with_array``."""
        try:
            shape = tuple(_whole(s, "grid size") for s in self.grid["shape"])
            return Volume(
                np.broadcast_to(np.uint8(0), shape),
                self.grid["origin"],
                self.grid["spacing"],
                self.grid["direction"],
            )
        except (KeyError, TypeError, ValueError, PesfError):
            raise PesfError(f"case {self.case_id!r} has no valid image grid in its case.json") from None

    def to_dict(self) -> dict[str, Any]:
        return {"format": "pesf-case", "version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CaseRecord:
        if not isinstance(d, Mapping) or d.get("format") != "pesf-case":
            raise PesfError("it is not a PESF case file")
        if not isinstance(d.get("version"), int) or d["version"] > FORMAT_VERSION:
            raise PesfError(f"it has format version {d.get('version')!r}; update PESF to read it")
        try:
            organs = {name: OrganRecord.from_dict(r) for name, r in d["organs"].items()}
            record = cls(
                case_id=check_case_id(d["case_id"]),
                image_file=d["image_file"],
                label_file=d["label_file"],
                unknown_file=d["unknown_file"],
                organs=organs,
                created=str(d["created"]),
                updated=str(d["updated"]),
                revision=_whole(d["revision"], "the revision"),
                grid=dict(d.get("grid") or {}),
            )
        except (KeyError, AttributeError) as exc:
            raise PesfError(f"it lacks {exc}") from None
        for name in (record.image_file, record.label_file, record.unknown_file):
            if name is not None and not (isinstance(name, str) and _FILE_NAME_RE.fullmatch(name)):
                raise PesfError(f"it names file {name!r}, which is not a plain file name")
        if any(name != r.name for name, r in organs.items()):
            raise PesfError("an organ record is filed under another organ's name")
        _check_unique(organs.values())
        return record


# --------------------------------------------------------------------------- checks


def check_statuses(statuses: Iterable[str]) -> tuple[str, ...]:
    """``statuses`` as a tuple, each checked to be one of :data:`STATUSES`."""
    statuses = tuple(statuses)
    for s in statuses:
        if s not in STATUSES:
            raise PesfError(f"status {s!r} is not one of {', '.join(STATUSES)}")
    return statuses


def _check_unique(records: Iterable[OrganRecord]) -> None:
    owners: dict[int, str] = {}
    for r in records:
        if r.value in owners:
            raise PesfError(
                f"organs {owners[r.value]!r} and {r.name!r} both have label value {r.value}; use distinct values"
            )
        owners[r.value] = r.name


def organ_records(organs: Mapping[str, OrganRecord] | Sequence[OrganRecord]) -> dict[str, OrganRecord]:
    """Organ records by name (copies, validated); a dict's keys must be the records' names."""
    items = list(organs.items()) if isinstance(organs, Mapping) else [(None, r) for r in organs]
    out: dict[str, OrganRecord] = {}
    for key, record in items:
        if not isinstance(record, OrganRecord):
            raise PesfError(f"organ {key or record!r} is not an OrganRecord")
        record = dataclasses.replace(record)  # validates, and the caller's object stays untouched
        if key is not None and key != record.name:
            raise PesfError(f"organ record {record.name!r} is filed under the name {key!r}; use one name")
        if record.name in out:
            raise PesfError(f"organ {record.name!r} is given twice; give each organ once")
        out[record.name] = record
    _check_unique(out.values())
    return out


def label_voxels(label: Volume, grid: Volume, max_value: int) -> np.ndarray:
    """The label map's voxels as ``uint8``/``uint16`` after checking its grid and values."""
    if not isinstance(label, Volume):
        raise PesfError(f"the label map must be a Volume, not {type(label).__name__}")
    if not label.same_geometry(grid):
        raise PesfError(
            f"label map geometry differs from the image: {describe_geometry_difference(label, grid)}; "
            "resample it onto the image grid first"
        )
    array = np.asarray(label.array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise PesfError(f"the label map has {array.dtype} voxels; a label map needs whole numbers")
    if np.issubdtype(array.dtype, np.floating) and not np.all(
        np.isfinite(array) & (array == np.round(array))
    ):
        raise PesfError("the label map holds non-integer values (an image?); give a label map")
    low, high = (array.min(), array.max()) if array.size else (0, 0)
    if low < 0 or high > MAX_LABEL_VALUE:
        raise PesfError(f"the label map holds value {low if low < 0 else high}; use 0 to {MAX_LABEL_VALUE}")
    return array.astype(labelmap_dtype(max(int(high), max_value)))


def mask_voxels(mask: np.ndarray | Volume, grid: Volume, what: str) -> np.ndarray:
    """A boolean mask on the image grid (a Volume's geometry is checked too)."""
    if isinstance(mask, Volume):
        if not mask.same_geometry(grid):
            raise PesfError(
                f"{what} geometry differs from the image: {describe_geometry_difference(mask, grid)}; "
                "resample it onto the image grid first"
            )
        mask = mask.array
    mask = np.asarray(mask)
    if mask.shape != grid.shape:
        raise PesfError(
            f"{what} has shape {mask.shape}, the image grid is {grid.shape}; give a mask on the image grid"
        )
    return mask != 0


def resolve_labels(organs: Mapping[str, OrganRecord], label: np.ndarray, unknown: np.ndarray) -> None:
    """Apply the store's rules in place and check the result.

    Rejected organs' voxels move from the label map to the unknown mask; unknown voxels are only unlabelled
    ones; every label value must be named by a record, and every painted organ must have voxels.
    """
    _check_unique(organs.values())
    for r in organs.values():
        if r.status == "rejected":
            voxels = label == r.value
            if voxels.any():
                unknown |= voxels
                label[voxels] = 0
    counts = np.bincount(label.ravel(), minlength=1)
    present = set(np.flatnonzero(counts[1:]) + 1)
    unnamed = sorted(present - {r.value for r in organs.values()})
    if len(unnamed) == 1:
        v = unnamed[0]
        raise PesfError(f"label value {v} has no organ name; give it with --organs NAME={v} or remove it")
    if unnamed:
        listed = ", ".join(map(str, unnamed[:8])) + (", ..." if len(unnamed) > 8 else "")
        raise PesfError(
            f"label values {listed} have no organ names; give them with --organs NAME={unnamed[0]},... "
            "or remove them"
        )
    for r in organs.values():
        if r.status in PAINTED and r.value not in present:
            raise PesfError(
                f"organ {r.name!r} ({r.status}, label value {r.value}) has no voxels in the label map; "
                "check its value, or mark it rejected"
            )
    unknown &= label == 0


def paint_organ_masks(
    previous: Mapping[str, OrganRecord],
    organs: Mapping[str, OrganRecord],
    masks: Mapping[str, np.ndarray],
    label: np.ndarray,
    unknown: np.ndarray,
) -> None:
    """Paint organ masks into a label array in place, as :meth:`~pesf.train.store.CaseStore.set_organ_masks`.

    Each mask replaces its organ's previous voxels. Accepted organs are painted first, then pseudo organs in
    the given order; a pseudo organ never overwrites a voxel of an accepted organ. A rejected organ's mask
    (and its previous voxels) become unknown.

    Args:
        previous: the case's records before the change (they locate each organ's previous voxels).
        organs: the records after the change, one for every mask at least.
        masks: boolean masks on the label's grid, by organ name.
        label: the label array, changed in place.
        unknown: the boolean unknown mask, changed in place.

    Raises:
        PesfError: the mask of a pseudo organ is empty.
    """
    for name in masks:
        old = previous.get(name)
        if old is not None and old.status in PAINTED:
            voxels = label == old.value
            label[voxels] = 0
            if organs[name].status == "rejected":
                unknown |= voxels
    accepted = [name for name in masks if organs[name].status == "accepted"]
    for name in accepted:
        label[masks[name]] = organs[name].value
    owned = np.isin(label, [r.value for r in organs.values() if r.status == "accepted"])
    for name, voxels in masks.items():
        if organs[name].status == "rejected":
            unknown |= voxels
        elif name not in accepted:
            if not voxels.any():
                raise PesfError(f"the mask of organ {name!r} is empty; leave it out or mark it rejected")
            label[voxels & ~owned] = organs[name].value


def grid_of(volume: Volume) -> dict[str, Any]:
    """A volume's grid as plain data, as :attr:`CaseRecord.grid` stores it."""
    return {
        "shape": list(volume.shape),
        "origin": volume.origin.tolist(),
        "spacing": volume.spacing.tolist(),
        "direction": volume.direction.tolist(),
    }


def check_case(
    image: Volume,
    label: Volume,
    organs: Mapping[str, OrganRecord] | Sequence[OrganRecord],
    unknown: np.ndarray | Volume | None = None,
) -> tuple[dict[str, OrganRecord], np.ndarray, np.ndarray]:
    """Check a case as :meth:`~pesf.train.store.CaseStore.add_case` would, without writing anything.

    Returns:
        ``(organs, label, unknown)``: validated record copies by name, the label array (``uint8``/``uint16``,
        rejected organs' voxels zeroed) and the boolean unknown mask.

    Raises:
        PesfError: any problem :meth:`~pesf.train.store.CaseStore.add_case` would refuse.
    """
    if not isinstance(image, Volume):
        raise PesfError(f"the image must be a Volume, not {type(image).__name__}")
    records = organ_records(organs)
    max_value = max((r.value for r in records.values()), default=0)
    array = label_voxels(label, image, max_value)  # a copy
    mask = np.zeros(image.shape, bool) if unknown is None else mask_voxels(unknown, image, "the unknown mask")
    resolve_labels(records, array, mask)
    return records, array, mask
