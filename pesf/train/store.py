"""The case store: a workspace folder of images, label maps and per-organ review records.

Layout (a folder a user can read)::

    WORKSPACE/
      workspace.json                        {"format": "pesf-workspace", "version": 1, "created": ...}
      cases/<case_id>/case.json             the case index, written atomically and last
      cases/<case_id>/image.nii.gz          the image (image-<rev>.nii.gz once the case was overwritten)
      cases/<case_id>/label-<rev>.nii.gz    label map on the image grid: accepted and pseudo organs
      cases/<case_id>/unknown-<rev>.nii.gz  optional uint8 mask of voxels whose labels are unknown

Every organ of a case has an :class:`OrganRecord` giving its label value and status: ``accepted`` (checked by
a person), ``pseudo`` (made by a model, unchecked) or ``rejected`` (a mask a person refused). A rejected organ
is never painted: its voxels go to the unknown mask, being neither that organ nor known background. Unknown
voxels are only ever unlabelled voxels (a labelled voxel is known).

Safe while a trainer reads (readers take no lock):

* Files are never changed in place. A change writes new revision files under temporary names and renames
  them, then replaces ``case.json`` atomically, and only then deletes the old revision files. A reader reads
  the files the ``case.json`` it found names; if one vanished because a writer replaced it meanwhile, the
  reader re-reads ``case.json`` and reads again (up to :data:`READ_ATTEMPTS` reads in all, for a writer
  updating quickly). Use :meth:`CaseStore.load_case` or :meth:`CaseStore.load_labels` to get a label map and
  unknown mask of the same revision.
* A new case is assembled in ``cases/.tmp-<id>-<random>/`` and renamed into place; a removed case is renamed
  to ``cases/.trash-<id>-<random>/`` and then deleted. Names starting with ``.`` are never cases: readers
  ignore them and the next write cleans them up, so a crash never leaves a half-written case visible.
* Writers hold ``WORKSPACE/.lock`` (an OS file lock, released if the process dies), so writes never mix.
* ``revision`` grows whenever a case's voxels change, so ``(case_id, revision)`` identifies its label map.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pesf.errors import PesfError
from pesf.io import (
    Volume,
    describe_geometry_difference,
    read_labelmap,
    read_volume,
    write_json_atomic,
    write_labelmap,
    write_volume,
)
from pesf.io.atomic import split_extension
from pesf.io.labelmap import labelmap_dtype

__all__ = [
    "PAINTED",
    "READ_ATTEMPTS",
    "SOURCES",
    "STATUSES",
    "CaseData",
    "CaseRecord",
    "CaseStore",
    "OrganRecord",
    "case_id_from_name",
    "check_case",
    "check_case_id",
    "new_case_id",
]

logger = logging.getLogger(__name__)

STATUSES = ("accepted", "rejected", "pseudo")
SOURCES = ("clicks", "automatic", "import")
#: Statuses whose organs are painted into the label map (and used for training).
PAINTED = ("accepted", "pseudo")
#: How many times a reader reads a case when a writer keeps replacing its files.
READ_ATTEMPTS = 4
#: Seconds a writer waits for another writer before giving up.
LOCK_TIMEOUT_S = 120.0
FORMAT_VERSION = 1
MAX_LABEL_VALUE = 65535

_CASE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_WINDOWS_RESERVED_RE = re.compile(r"(CON|PRN|AUX|NUL|COM[1-9]|LPT[1-9])(\..*)?", re.IGNORECASE)
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_STORE_FILE_RE = re.compile(r"(image|label-\d+|unknown-\d+|image-\d+)\.nii\.gz")
_ID_HELP = "use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"

T = TypeVar("T")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_case_id(case_id: object) -> str:
    """Return ``case_id`` if it is a valid case id (a plain folder name), else raise :class:`PesfError`."""
    if not isinstance(case_id, str) or not _CASE_ID_RE.fullmatch(case_id) or case_id.endswith("."):
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
        wanted = _check_statuses(statuses) if statuses else STATUSES
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


@dataclass
class CaseData:
    """One case read consistently: the record and the files of the same revision.

    Attributes:
        record: the case index.
        image: the image (``None`` when only the labels were asked for).
        label: the label map on the image grid (``uint8``/``uint16``).
        unknown: boolean mask of unknown voxels, shape ``image.shape`` (all False when none).
    """

    record: CaseRecord
    image: Volume | None
    label: Volume
    unknown: np.ndarray


# --------------------------------------------------------------------------- checks


def _check_statuses(statuses: Iterable[str]) -> tuple[str, ...]:
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


def _organ_dict(organs: Mapping[str, OrganRecord] | Sequence[OrganRecord]) -> dict[str, OrganRecord]:
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


def _label_array(label: Volume, grid: Volume, max_value: int) -> np.ndarray:
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


def _mask_array(mask: np.ndarray | Volume, grid: Volume, what: str) -> np.ndarray:
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


def _resolve(organs: Mapping[str, OrganRecord], label: np.ndarray, unknown: np.ndarray) -> None:
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


def _grid_of(volume: Volume) -> dict[str, Any]:
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
    """Check a case as :meth:`CaseStore.add_case` would, without writing anything.

    Returns:
        ``(organs, label, unknown)``: validated record copies by name, the label array (``uint8``/``uint16``,
        rejected organs' voxels zeroed) and the boolean unknown mask.

    Raises:
        PesfError: any problem :meth:`CaseStore.add_case` would refuse.
    """
    if not isinstance(image, Volume):
        raise PesfError(f"the image must be a Volume, not {type(image).__name__}")
    records = _organ_dict(organs)
    max_value = max((r.value for r in records.values()), default=0)
    array = _label_array(label, image, max_value)  # a copy
    mask = np.zeros(image.shape, bool) if unknown is None else _mask_array(unknown, image, "the unknown mask")
    _resolve(records, array, mask)
    return records, array, mask


# --------------------------------------------------------------------------- file lock


def _try_lock(fd: int) -> bool:
    try:
        if os.name == "nt":  # pragma: no cover - Windows
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        if os.name == "nt":  # pragma: no cover - Windows
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)


def _remove_file(path: Path) -> None:
    """Delete a file, quietly (a reader may hold it open on Windows; the next write retries)."""
    with contextlib.suppress(OSError):
        path.unlink()


# --------------------------------------------------------------------------- the store


class CaseStore:
    """A workspace folder of cases (see the module description for the layout and its guarantees).

    Args:
        workspace: the workspace folder.
        create: create the workspace when the folder is missing or empty.

    Raises:
        PesfError: the folder is missing (and ``create`` is False) or is not a PESF workspace.
    """

    def __init__(self, workspace: str | os.PathLike[str], create: bool = False) -> None:
        self.root = Path(workspace).expanduser()
        meta = self.root / "workspace.json"
        if self.root.exists() and not self.root.is_dir():
            raise PesfError(f"workspace {self.root} is a file; give a folder")
        if not meta.is_file():
            if not self.root.exists() and not create:
                raise PesfError(
                    f"workspace {self.root} does not exist; create it with `pesf cases add {self.root} ...`"
                )
            if self.root.exists() and (not create or any(self.root.iterdir())):
                raise PesfError(
                    f"{self.root} is not a PESF workspace (it has no workspace.json); "
                    "give a workspace, or a new or empty folder"
                )
            (self.root / "cases").mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                meta, {"format": "pesf-workspace", "version": FORMAT_VERSION, "created": _now()}
            )
            logger.info("created workspace %s", self.root)
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise PesfError(f"{meta} is damaged (not JSON); restore it or create a new workspace") from None
        if not isinstance(doc, dict) or doc.get("format") != "pesf-workspace":
            raise PesfError(f"{meta} is not a PESF workspace file; give a PESF workspace folder")
        if not isinstance(doc.get("version"), int) or doc["version"] > FORMAT_VERSION:
            raise PesfError(f"workspace {self.root} has format version {doc.get('version')!r}; update PESF")
        with contextlib.suppress(OSError):  # a read-only workspace can still be read
            self.cases_dir.mkdir(exist_ok=True)

    def __repr__(self) -> str:
        return f"CaseStore({str(self.root)!r})"

    @property
    def cases_dir(self) -> Path:
        return self.root / "cases"

    def case_dir(self, case_id: str) -> Path:
        """The folder of a case (the id is checked, so the path never leaves the store)."""
        return self.cases_dir / check_case_id(case_id)

    # ----------------------------------------------------------------------- reading

    def case_ids(self) -> list[str]:
        """Ids of the cases, sorted (folders holding a ``case.json``; ``.``-folders are never cases)."""
        ids = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.cases_dir):
                if _CASE_ID_RE.fullmatch(entry.name) and os.path.isfile(
                    os.path.join(entry.path, "case.json")
                ):
                    ids.append(entry.name)
        return sorted(ids)

    def has_case(self, case_id: str) -> bool:
        return (self.case_dir(case_id) / "case.json").is_file()

    def _not_found(self, case_id: str) -> PesfError:
        ids = self.case_ids()
        if not ids:
            return PesfError(f"case {case_id!r} is not in workspace {self.root}, which has no cases")
        listed = ", ".join(ids[:5]) + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")
        return PesfError(f"case {case_id!r} is not in workspace {self.root}; its cases are {listed}")

    def get(self, case_id: str) -> CaseRecord:
        """The case's record, read from its ``case.json``."""
        path = self.case_dir(case_id) / "case.json"
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            raise self._not_found(case_id) from None
        try:
            record = CaseRecord.from_dict(json.loads(text))
        except (ValueError, PesfError) as exc:
            raise PesfError(
                f"{path} is damaged ({exc}); restore it, or remove the case with `pesf cases remove`"
            ) from None
        if record.case_id != case_id:
            raise PesfError(f"{path} names case {record.case_id!r}; restore it or remove the case")
        return record

    def list_cases(self) -> list[CaseRecord]:
        """Records of every case, by id (a case removed meanwhile is left out)."""
        records = []
        for case_id in self.case_ids():
            try:
                records.append(self.get(case_id))
            except PesfError:
                if self.has_case(case_id):
                    raise
        return records

    def samples(
        self, statuses: Sequence[str] = PAINTED, organs: Iterable[str] | None = None
    ) -> list[tuple[str, OrganRecord]]:
        """``(case_id, record)`` of every organ with one of ``statuses`` (and a name in ``organs`` if
        given), sorted by case id and organ name."""
        statuses = _check_statuses(statuses)
        wanted = None if organs is None else set(organs)
        out = []
        for record in self.list_cases():
            for r in record.organs.values():
                if r.status in statuses and (wanted is None or r.name in wanted):
                    out.append((record.case_id, r))
        return sorted(out, key=lambda item: (item[0], item[1].name))

    def require_samples(self, statuses: Sequence[str] = PAINTED) -> list[tuple[str, OrganRecord]]:
        """Like :meth:`samples`, but raise :class:`PesfError` when there is none."""
        found = self.samples(statuses)
        if not found:
            raise PesfError(
                f"the case store {self.root} has no {' or '.join(_words(statuses))} organs; "
                "add cases with `pesf cases add`"
            )
        return found

    def _read_consistent(self, case_id: str, read: Callable[[CaseRecord, Path], T]) -> T:
        """Read files named by ``case.json``; when a writer replaced them meanwhile, re-read and retry."""
        folder = self.case_dir(case_id)
        for attempt in range(1, READ_ATTEMPTS + 1):
            record = self.get(case_id)
            try:
                return read(record, folder)
            except (PesfError, OSError):
                if attempt == READ_ATTEMPTS or self.get(case_id) == record:
                    raise
                logger.debug(
                    "case %s changed while being read (attempt %d); reading it again", case_id, attempt
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def load_image(self, case_id: str) -> Volume:
        return self._read_consistent(case_id, lambda rec, folder: read_volume(folder / rec.image_file))

    def load_label(self, case_id: str) -> Volume:
        return self.load_labels(case_id)[1]

    def load_unknown(self, case_id: str) -> np.ndarray:
        """The unknown mask (bool, image shape; all False when none)."""
        return self.load_labels(case_id)[2]

    def load_labels(self, case_id: str) -> tuple[CaseRecord, Volume, np.ndarray]:
        """``(record, label, unknown)`` of one revision, without reading the image."""
        data = self._read_consistent(case_id, lambda rec, folder: _read_case(rec, folder, image=False))
        return data.record, data.label, data.unknown

    def load_case(self, case_id: str) -> CaseData:
        """Record, image, label map and unknown mask, all of one revision."""
        return self._read_consistent(case_id, lambda rec, folder: _read_case(rec, folder, image=True))

    # ----------------------------------------------------------------------- writing

    @contextlib.contextmanager
    def _locked(self, case_id: str) -> Iterator[None]:
        """Hold the workspace's writer lock, then clean up what crashed writers left (for ``case_id``)."""
        try:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PesfError(
                f"cannot write workspace {self.root}: {exc.strerror}; check its permissions"
            ) from None
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise PesfError(
                        f"workspace {self.root} is busy: another process has been writing it for "
                        f"{LOCK_TIMEOUT_S:.0f} s; try again later"
                    )
                time.sleep(0.05)
            try:
                self._clean_up(case_id)
                yield
            finally:
                _unlock(fd)
        finally:
            os.close(fd)

    def _clean_up(self, case_id: str) -> None:
        """Delete temporary and trashed folders, and the case's files its ``case.json`` does not name."""
        for entry in os.scandir(self.cases_dir):
            if entry.name.startswith((".tmp-", ".trash-")) and entry.is_dir(follow_symlinks=False):
                logger.debug("removing %s, left by an interrupted write", entry.path)
                shutil.rmtree(entry.path, ignore_errors=True)
        if not self.has_case(case_id):
            return
        with contextlib.suppress(PesfError, OSError):
            record = self.get(case_id)
            keep = {record.image_file, record.label_file, record.unknown_file}
            for f in os.scandir(self.case_dir(case_id)):
                stray = f.name.startswith(".") or _STORE_FILE_RE.fullmatch(f.name)
                if stray and f.name not in keep and f.is_file(follow_symlinks=False):
                    logger.debug("removing %s, left by an interrupted write", f.path)
                    _remove_file(Path(f.path))

    def add_case(
        self,
        image: Volume,
        label: Volume,
        organs: Mapping[str, OrganRecord] | Sequence[OrganRecord],
        case_id: str | None = None,
        unknown: np.ndarray | Volume | None = None,
        overwrite: bool = False,
    ) -> CaseRecord:
        """Add a case: its image, label map (on the image grid) and a record for every organ.

        Args:
            image: the image.
            label: the label map; every non-zero value needs a record. Voxels of rejected organs are moved
                to the unknown mask.
            organs: organ records (their ``updated`` time is set by the store).
            case_id: the id; ``None`` makes a random one.
            unknown: optional mask of voxels whose labels are unknown.
            overwrite: replace an existing case of that id (its revision keeps growing).

        Returns:
            The new case's record.
        """
        case_id = new_case_id() if case_id is None else check_case_id(case_id)
        records, label_array, unknown_mask = check_case(image, label, organs, unknown)
        now = _now()
        for r in records.values():
            r.updated = now
        with self._locked(case_id):
            folder = self.case_dir(case_id)
            old = self.get(case_id) if self.has_case(case_id) else None
            if old is not None and not overwrite:
                raise PesfError(
                    f"case {case_id!r} already exists in {self.root}; choose another id or overwrite it"
                )
            if old is None:
                if folder.exists():
                    raise PesfError(f"{folder} exists but holds no case.json; remove it or choose another id")
                clash = [c for c in self.case_ids() if c.lower() == case_id.lower()]
                if clash:
                    raise PesfError(
                        f"case id {case_id!r} differs from existing {clash[0]!r} only in letter case"
                    )
            revision = 1 if old is None else old.revision + 1
            record = CaseRecord(
                case_id=case_id,
                image_file="image.nii.gz" if old is None else f"image-{revision}.nii.gz",
                label_file="",
                unknown_file=None,
                organs=records,
                created=now,
                updated=now,
                revision=revision,
                grid=_grid_of(image),
            )
            work = folder if old is not None else self.cases_dir / f".tmp-{case_id}-{secrets.token_hex(4)}"
            written: list[Path] = []
            try:
                if old is None:
                    work.mkdir()
                write_volume(image, work / record.image_file)
                written.append(work / record.image_file)
                written += self._write_revision(work, record, image, label_array, unknown_mask)
                write_json_atomic(work / "case.json", record.to_dict())
                if old is None:
                    os.rename(work, folder)
            except BaseException:
                if old is None:
                    shutil.rmtree(work, ignore_errors=True)
                else:
                    for path in written:
                        _remove_file(path)
                raise
            if old is not None:
                self._remove_old_files(folder, old, record)
        logger.info(
            "%s case %s in %s (revision %d)", "replaced" if old else "added", case_id, self.root, revision
        )
        return record

    def update_case(
        self,
        case_id: str,
        organs: Mapping[str, OrganRecord] | Sequence[OrganRecord],
        label: Volume | None = None,
        unknown: np.ndarray | Volume | None = None,
        remove_organs: Iterable[str] = (),
    ) -> CaseRecord:
        """Merge organ records into a case, and optionally give a new label map and/or unknown mask.

        Records of the given organs replace or add to the case's records. A new label map (on the image grid)
        or unknown mask replaces the current one (without ``unknown``, the current unknown mask is kept where
        the new label map is unlabelled). New files get a new revision; records alone keep the revision.

        Args:
            case_id: the case.
            organs: records to replace or add (their ``updated`` time is set by the store).
            label: the new label map, or ``None`` to keep the current one.
            unknown: the new unknown mask, or ``None`` to keep the current one.
            remove_organs: names of organs whose records are dropped; their voxels become background.

        Returns:
            The updated record.
        """
        new = _organ_dict(organs)
        with self._locked(case_id):
            record, current, current_unknown = self.load_labels(case_id)
            merged = dict(record.organs)
            grid = record.grid_volume()
            max_value = max((r.value for r in [*merged.values(), *new.values()]), default=0)
            array = current.array.astype(labelmap_dtype(max(max_value, int(current.array.max()))))
            for name in remove_organs:
                if name not in merged:
                    raise PesfError(f"case {case_id!r} has no organ {name!r} to remove")
                array[array == merged.pop(name).value] = 0
            merged.update(new)
            if label is not None:
                array = _label_array(label, grid, max_value)
            mask = (
                current_unknown.copy() if unknown is None else _mask_array(unknown, grid, "the unknown mask")
            )
            return self._commit(record, merged, new, grid, array, mask, current.array, current_unknown)

    def set_organ_masks(
        self, case_id: str, masks: Mapping[str, np.ndarray], records: Mapping[str, OrganRecord]
    ) -> CaseRecord:
        """Paint organ masks into a new label revision and update their records (what pseudo-labelling uses).

        Each mask (boolean, image grid) replaces the organ's previous voxels. Accepted organs are painted first,
        then pseudo organs, in the given order; a pseudo organ never overwrites a voxel of an accepted organ.
        A rejected organ's mask (and its previous voxels) become unknown. Other organs are kept.

        Args:
            case_id: the case.
            masks: boolean masks by organ name.
            records: a record for every masked organ (more records may be given, merged as in
                :meth:`update_case`).

        Returns:
            The updated record.
        """
        new = _organ_dict(records)
        missing = [name for name in masks if name not in new]
        if missing:
            raise PesfError(f"mask {missing[0]!r} has no organ record; give a record for every mask")
        with self._locked(case_id):
            record, current, current_unknown = self.load_labels(case_id)
            grid = record.grid_volume()
            arrays = {name: _mask_array(m, grid, f"the mask of organ {name!r}") for name, m in masks.items()}
            merged = {**record.organs, **new}
            values = [r.value for r in merged.values()]
            array = current.array.astype(labelmap_dtype(max(values + [int(current.array.max())])))
            mask = current_unknown.copy()
            for name in arrays:
                old = record.organs.get(name)
                if old is not None and old.status in PAINTED:
                    previous = array == old.value
                    array[previous] = 0
                    if new[name].status == "rejected":
                        mask |= previous
            accepted = [name for name in arrays if new[name].status == "accepted"]
            for name in accepted:
                array[arrays[name]] = new[name].value
            owned = np.isin(array, [r.value for r in merged.values() if r.status == "accepted"])
            for name, voxels in arrays.items():
                if new[name].status == "rejected":
                    mask |= voxels
                elif name not in accepted:
                    if not voxels.any():
                        raise PesfError(
                            f"the mask of organ {name!r} is empty; leave it out or mark it rejected"
                        )
                    array[voxels & ~owned] = new[name].value
            return self._commit(record, merged, new, grid, array, mask, current.array, current_unknown)

    def remove_case(self, case_id: str) -> None:
        """Remove a case (renamed to a ``.trash-`` folder first, so it vanishes at once)."""
        with self._locked(case_id):
            if not self.has_case(case_id):
                raise self._not_found(case_id)
            trash = self.cases_dir / f".trash-{case_id}-{secrets.token_hex(4)}"
            os.rename(self.case_dir(case_id), trash)
            shutil.rmtree(trash, ignore_errors=True)
        logger.info("removed case %s from %s", case_id, self.root)

    def _commit(
        self,
        record: CaseRecord,
        organs: dict[str, OrganRecord],
        changed: Mapping[str, OrganRecord],
        grid: Volume,
        label: np.ndarray,
        unknown: np.ndarray,
        old_label: np.ndarray,
        old_unknown: np.ndarray,
    ) -> CaseRecord:
        """Check the new state, write new revision files if the voxels changed, then ``case.json``."""
        _resolve(organs, label, unknown)
        now = _now()
        for name in changed:
            organs[name].updated = now
        new = dataclasses.replace(record, organs=organs, updated=now)
        folder = self.case_dir(record.case_id)
        written: list[Path] = []
        voxels_changed = not (np.array_equal(label, old_label) and np.array_equal(unknown, old_unknown))
        try:
            if voxels_changed:
                new.revision = record.revision + 1
                written = self._write_revision(folder, new, grid, label, unknown)
            write_json_atomic(folder / "case.json", new.to_dict())
        except BaseException:
            for path in written:
                _remove_file(path)
            raise
        self._remove_old_files(folder, record, new)
        logger.debug("updated case %s (revision %d)", record.case_id, new.revision)
        return new

    @staticmethod
    def _write_revision(
        folder: Path, record: CaseRecord, grid: Volume, label: np.ndarray, unknown: np.ndarray
    ) -> list[Path]:
        """Write ``label-<rev>`` (and ``unknown-<rev>`` if any voxel is unknown); set the record's names."""
        written = []
        try:
            record.label_file = f"label-{record.revision}.nii.gz"
            write_labelmap(grid.with_array(label), folder / record.label_file)
            written.append(folder / record.label_file)
            record.unknown_file = None
            if unknown.any():
                record.unknown_file = f"unknown-{record.revision}.nii.gz"
                write_labelmap(grid.with_array(unknown.astype(np.uint8)), folder / record.unknown_file)
                written.append(folder / record.unknown_file)
        except BaseException:
            for path in written:
                _remove_file(path)
            raise
        return written

    @staticmethod
    def _remove_old_files(folder: Path, old: CaseRecord, new: CaseRecord) -> None:
        keep = {new.image_file, new.label_file, new.unknown_file}
        for name in (old.image_file, old.label_file, old.unknown_file):
            if name and name not in keep:
                _remove_file(folder / name)


def _read_case(record: CaseRecord, folder: Path, image: bool) -> CaseData:
    names = [record.label_file, record.unknown_file, record.image_file if image else None]
    for name in filter(None, names):
        if not (folder / name).is_file():  # replaced by a writer: fail fast, the caller reads again
            raise FileNotFoundError(folder / name)
    grid = record.grid_volume()
    label, _ = read_labelmap(folder / record.label_file, like=grid)
    if record.unknown_file:
        unknown = read_labelmap(folder / record.unknown_file, like=grid)[0].array != 0
    else:
        unknown = np.zeros(grid.shape, bool)
    volume = read_volume(folder / record.image_file) if image else None
    return CaseData(record, volume, label, unknown)


def _words(statuses: Sequence[str]) -> list[str]:
    return ["pseudo-labelled" if s == "pseudo" else s for s in statuses]
