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

The records and their checks live in :mod:`pesf.train.records` (re-exported here), the lock, reading and
clean-up of files in :mod:`pesf.train.store_io`; this module holds :class:`CaseStore` and its writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from pesf.errors import PesfError
from pesf.io import Volume, read_volume, write_json_atomic, write_labelmap, write_volume
from pesf.io.labelmap import labelmap_dtype
from pesf.train.records import (
    CASE_ID_RE,
    PAINTED,
    SOURCES,
    STATUSES,
    CaseRecord,
    OrganRecord,
    case_id_from_name,
    check_case,
    check_case_id,
    check_statuses,
    grid_of,
    label_voxels,
    mask_voxels,
    new_case_id,
    now_iso,
    organ_records,
    paint_organ_masks,
    resolve_labels,
)
from pesf.train.store_io import (
    open_workspace,
    read_case_files,
    remove_file,
    remove_leftovers,
    remove_old_files,
    remove_stray_files,
    writer_lock,
)

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

#: How many times a reader reads a case when a writer keeps replacing its files.
READ_ATTEMPTS = 4
#: Seconds a writer waits for another writer before giving up.
LOCK_TIMEOUT_S = 120.0

T = TypeVar("T")


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
        open_workspace(self.root, create)

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
                if CASE_ID_RE.fullmatch(entry.name) and os.path.isfile(os.path.join(entry.path, "case.json")):
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
        statuses = check_statuses(statuses)
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
            words = ["pseudo-labelled" if s == "pseudo" else s for s in statuses]
            raise PesfError(
                f"the case store {self.root} has no {' or '.join(words)} organs; "
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
        with writer_lock(self.root, LOCK_TIMEOUT_S):
            self._clean_up(case_id)
            yield

    def _clean_up(self, case_id: str) -> None:
        """Delete temporary and trashed folders, and the case's files its ``case.json`` does not name."""
        remove_leftovers(self.cases_dir)
        if not self.has_case(case_id):
            return
        with contextlib.suppress(PesfError, OSError):
            remove_stray_files(self.case_dir(case_id), self.get(case_id))

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
        now = now_iso()
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
                grid=grid_of(image),
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
                        remove_file(path)
                raise
            if old is not None:
                remove_old_files(folder, old, record)
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
        new = organ_records(organs)
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
                array = label_voxels(label, grid, max_value)
            mask = (
                current_unknown.copy() if unknown is None else mask_voxels(unknown, grid, "the unknown mask")
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
        new = organ_records(records)
        missing = [name for name in masks if name not in new]
        if missing:
            raise PesfError(f"mask {missing[0]!r} has no organ record; give a record for every mask")
        with self._locked(case_id):
            record, current, current_unknown = self.load_labels(case_id)
            grid = record.grid_volume()
            arrays = {name: mask_voxels(m, grid, f"the mask of organ {name!r}") for name, m in masks.items()}
            merged = {**record.organs, **new}
            values = [r.value for r in merged.values()]
            array = current.array.astype(labelmap_dtype(max(values + [int(current.array.max())])))
            mask = current_unknown.copy()
            paint_organ_masks(record.organs, merged, arrays, array, mask)
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
        resolve_labels(organs, label, unknown)
        now = now_iso()
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
                remove_file(path)
            raise
        remove_old_files(folder, record, new)
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
                remove_file(path)
            raise
        return written


def _read_case(record: CaseRecord, folder: Path, image: bool) -> CaseData:
    return CaseData(record, *read_case_files(record, folder, image))
