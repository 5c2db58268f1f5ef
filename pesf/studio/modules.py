"""Where PESF Studio finds the Slicer modules' Logic (``PESFSegmentLib``, ``PESFTrainLib``) it runs on.

Studio does no segmentation or training work of its own: it drives the same Logic as the Slicer modules, on
slicer-core. Slicer puts each scripted module's folder on ``sys.path``; Studio does the same, from
``$PESF_SLICER_MODULES`` (folders separated by ``os.pathsep``) or the ``PESFSegment`` and ``PESFTrain``
folders beside the ``pesf`` package (a source checkout or the extension's install tree).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pesf.errors import PesfError

__all__ = ["MODULE_NAMES", "add_module_paths", "module_dirs"]

MODULE_NAMES = ("PESFSegment", "PESFTrain")


def module_dirs() -> list[Path]:
    """The folders holding ``PESFSegmentLib`` and ``PESFTrainLib``."""
    env = os.environ.get("PESF_SLICER_MODULES")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    root = Path(__file__).resolve().parent.parent.parent
    return [root / name for name in MODULE_NAMES]


def add_module_paths() -> list[Path]:
    """Put the module folders on ``sys.path`` (once) and return them.

    Raises:
        PesfError: a module's Logic package cannot be found.
    """
    dirs = module_dirs()
    for name in MODULE_NAMES:
        if not any((d / f"{name}Lib" / "__init__.py").is_file() for d in dirs):
            raise PesfError(
                f"cannot find the {name} Logic ({name}Lib) in {', '.join(map(str, dirs))}; "
                "set PESF_SLICER_MODULES to the folders of the PESFSegment and PESFTrain modules"
            )
    for folder in reversed(dirs):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    return dirs
