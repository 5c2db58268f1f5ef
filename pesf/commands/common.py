"""Helpers shared by the subcommands."""

from __future__ import annotations

import os
from pathlib import Path

from pesf.errors import PesfError

__all__ = ["check_output_path", "progress_bar"]


def check_output_path(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Fail early, before any work, when ``path`` cannot be written."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise PesfError(f"the folder of the {what} '{out}' does not exist; create it or choose another path")
    if out.is_dir():
        raise PesfError(f"the {what} '{out}' is a folder; give a file name")
    if not os.access(parent, os.W_OK):
        raise PesfError(f"cannot write the {what} into '{parent}': permission denied")
    return out


def progress_bar(total: int, desc: str):
    """A tqdm progress bar on stderr (hidden when stderr is not a terminal and CI is set)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="click", leave=False, disable=None)
