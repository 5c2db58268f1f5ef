"""Files of the case store: the workspace folder, the writers' lock, a case's revision files, crash leftovers.

The helpers :class:`~pesf.train.store.CaseStore` builds its guarantees on (see :mod:`pesf.train.store` for
the layout): :func:`open_workspace` checks or creates ``workspace.json``; :func:`writer_lock` holds
``WORKSPACE/.lock``, an OS file lock released if the process dies; :func:`read_case_files` reads the files a
``case.json`` names, failing fast when a writer replaced one meanwhile; :func:`remove_leftovers`,
:func:`remove_stray_files` and :func:`remove_old_files` delete what interrupted or finished writes left.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pesf.errors import PesfError
from pesf.io import Volume, read_labelmap, read_volume, write_json_atomic
from pesf.train.records import FORMAT_VERSION, CaseRecord, now_iso

__all__ = [
    "STORE_FILE_RE",
    "try_lock",
    "open_workspace",
    "read_case_files",
    "remove_file",
    "remove_leftovers",
    "remove_old_files",
    "remove_stray_files",
    "writer_lock",
]

logger = logging.getLogger(__name__)

#: Names of the image, label and unknown files the store writes in a case folder.
STORE_FILE_RE = re.compile(r"(image|label-\d+|unknown-\d+|image-\d+)\.nii\.gz")


def open_workspace(root: Path, create: bool) -> None:
    """Check that ``root`` is a PESF workspace, creating it when ``create`` and it is missing or empty.

    Raises:
        PesfError: the folder is missing (and ``create`` is False), is a file, or is not a PESF workspace.
    """
    meta = root / "workspace.json"
    if root.exists() and not root.is_dir():
        raise PesfError(f"workspace {root} is a file; give a folder")
    if not meta.is_file():
        if not root.exists() and not create:
            raise PesfError(f"workspace {root} does not exist; create it with `pesf cases add {root} ...`")
        if root.exists() and (not create or any(root.iterdir())):
            raise PesfError(
                f"{root} is not a PESF workspace (it has no workspace.json); "
                "give a workspace, or a new or empty folder"
            )
        (root / "cases").mkdir(parents=True, exist_ok=True)
        write_json_atomic(meta, {"format": "pesf-workspace", "version": FORMAT_VERSION, "created": now_iso()})
        logger.info("created workspace %s", root)
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PesfError(f"{meta} is damaged (not JSON); restore it or create a new workspace") from None
    if not isinstance(doc, dict) or doc.get("format") != "pesf-workspace":
        raise PesfError(f"{meta} is not a PESF workspace file; give a PESF workspace folder")
    if not isinstance(doc.get("version"), int) or doc["version"] > FORMAT_VERSION:
        raise PesfError(f"workspace {root} has format version {doc.get('version')!r}; update PESF")
    with contextlib.suppress(OSError):  # a read-only workspace can still be read
        (root / "cases").mkdir(exist_ok=True)


# --------------------------------------------------------------------------- file lock


def try_lock(fd: int) -> bool:
    """Take an exclusive lock on open file ``fd`` without waiting; ``False`` when another holds it."""
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


@contextlib.contextmanager
def writer_lock(root: Path, timeout_s: float) -> Iterator[None]:
    """Hold the workspace's writer lock ``root/.lock``, waiting up to ``timeout_s`` for another writer.

    Raises:
        PesfError: the lock file cannot be opened, or another writer held it for ``timeout_s``.
    """
    try:
        fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PesfError(f"cannot write workspace {root}: {exc.strerror}; check its permissions") from None
    try:
        deadline = time.monotonic() + timeout_s
        while not try_lock(fd):
            if time.monotonic() > deadline:
                raise PesfError(
                    f"workspace {root} is busy: another process has been writing it for "
                    f"{timeout_s:.0f} s; try again later"
                )
            time.sleep(0.05)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- reading and removing files


def read_case_files(
    record: CaseRecord, folder: Path, image: bool
) -> tuple[Volume | None, Volume, np.ndarray]:
    """``(image, label, unknown)`` of the files ``record`` names (``image`` is ``None`` unless asked for).

    Raises:
        FileNotFoundError: a file was replaced by a writer meanwhile (the caller reads ``case.json`` again).
    """
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
    return volume, label, unknown


def remove_file(path: Path) -> None:
    """Delete a file, quietly (a reader may hold it open on Windows; the next write retries)."""
    with contextlib.suppress(OSError):
        path.unlink()


def remove_leftovers(cases_dir: Path) -> None:
    """Delete the temporary and trashed case folders (``.tmp-*``, ``.trash-*``) interrupted writes left."""
    for entry in os.scandir(cases_dir):
        if entry.name.startswith((".tmp-", ".trash-")) and entry.is_dir(follow_symlinks=False):
            logger.debug("removing %s, left by an interrupted write", entry.path)
            shutil.rmtree(entry.path, ignore_errors=True)


def remove_stray_files(folder: Path, record: CaseRecord) -> None:
    """Delete a case folder's hidden and store files (:data:`STORE_FILE_RE`) that ``record`` does not name."""
    keep = {record.image_file, record.label_file, record.unknown_file}
    for f in os.scandir(folder):
        stray = f.name.startswith(".") or STORE_FILE_RE.fullmatch(f.name)
        if stray and f.name not in keep and f.is_file(follow_symlinks=False):
            logger.debug("removing %s, left by an interrupted write", f.path)
            remove_file(Path(f.path))


def remove_old_files(folder: Path, old: CaseRecord, new: CaseRecord) -> None:
    """Delete the files ``old`` names that ``new`` no longer does."""
    keep = {new.image_file, new.label_file, new.unknown_file}
    for name in (old.image_file, old.label_file, old.unknown_file):
        if name and name not in keep:
            remove_file(folder / name)
