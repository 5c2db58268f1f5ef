"""Atomic file writes: write to a temporary name in the destination folder, then rename over the target.

A reader (Slicer, the trainer, another process polling a status file) therefore sees either the old file or
the complete new one, never a half-written file, and a failed write leaves nothing behind.

The temporary name keeps the file's extension (``.name.tmp-XXXXXXXX.nii.gz`` for ``name.nii.gz``) so that
writers which choose the format from the extension, such as SimpleITK, work on it unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pesf.errors import PesfError

__all__ = [
    "MULTI_PART_EXTENSIONS",
    "atomic_path",
    "atomic_write",
    "check_output_path",
    "split_extension",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

#: Extensions made of several dot-separated parts that the engine reads or writes (lower case).
MULTI_PART_EXTENSIONS: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".mrk.json", ".tar.gz")


def split_extension(name: str) -> tuple[str, str]:
    """Split a file name into stem and extension, keeping known multi-part extensions whole.

    Args:
        name: a file name (not a path), e.g. ``"ct.nii.gz"``.

    Returns:
        ``(stem, extension)``, e.g. ``("ct", ".nii.gz")``; the extension keeps the original case.
    """
    lower = name.lower()
    for ext in MULTI_PART_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    suffix = Path(name).suffix
    return (name[: -len(suffix)], suffix) if suffix else (name, "")


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` can be written: its folder exists and it is not a folder itself.

    Args:
        path: the file to be written.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        PesfError: the output folder does not exist, or ``path`` is an existing folder.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise PesfError(f"output folder {folder} does not exist; create it or choose another path")
    if path.is_dir():
        raise PesfError(f"output path {path} is a folder; give a file name such as {path / 'output.nii.gz'}")
    return path


def _fsync_file(path: Path) -> None:
    """Flush a written file (or a folder's entries) to disk (best effort: not every platform lets a
    read-only handle fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable by syncing its folder (POSIX only; a no-op elsewhere)."""
    if os.name == "posix":
        _fsync_file(folder)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Give a temporary path to write, and move it over ``path`` when the block succeeds.

    The temporary file lies in the same folder (so the final rename is atomic) and has the same extension.
    If the block raises, or writes nothing, the temporary file is removed and ``path`` is left untouched.

    Example::

        with atomic_path("out/label.nii.gz") as tmp:
            SimpleITK.WriteImage(image, str(tmp), True)

    Args:
        path: the final file.

    Yields:
        The temporary path to write to.

    Raises:
        PesfError: the output folder does not exist, or the block wrote no file.
    """
    final = check_output_path(path)
    stem, ext = split_extension(final.name)
    tmp = final.with_name(f".{stem}.tmp-{secrets.token_hex(4)}{ext}")
    try:
        yield tmp
        if not tmp.exists():
            raise PesfError(f"writing {final} produced no file; check the disk and the output path")
        _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_folder(final.parent)
    logger.debug("wrote %s", final)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing and move it over ``path`` when the block succeeds.

    Example::

        with atomic_write("status.json") as f:
            f.write("{}")

    Args:
        path: the final file.
        mode: ``"w"`` for text or ``"wb"`` for bytes.
        encoding: text encoding (ignored in binary mode).

    Yields:
        The open file object.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write supports modes 'w' and 'wb', not {mode!r}")
    with atomic_path(path) as tmp:
        kwargs: dict[str, Any] = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically.

    The object is serialised before anything is written, so an unserialisable object leaves no file.

    Args:
        path: the final file.
        obj: a JSON-serialisable object.
        indent: indentation passed to :func:`json.dumps`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    return write_text_atomic(path, text + "\n")
