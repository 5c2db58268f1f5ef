"""Python packages PESF needs inside Slicer, checked without importing them.

``Resources/requirements.txt`` lists what Slicer's Python lacks; PyTorch is not in it because Slicer gets it
through the PyTorch extension (``PyTorchUtils``), with :data:`TORCH_REQUIREMENT`. The check reads installed
distributions' metadata (``importlib.metadata``) and never imports a package, so it is fast and safe at any
time. Installing is the Widget's job, after the user confirms, at first use.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

__all__ = [
    "REQUIREMENTS_FILE",
    "TORCH_REQUIREMENT",
    "TORCH_VERSION_REQUIREMENT",
    "missingRequirements",
    "readRequirements",
    "requirementSatisfied",
    "torchSatisfied",
]

#: The module's requirements file (installed next to the module scripts' ``Resources`` folder).
REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"
#: The PyTorch versions PESF works with (installed by the PyTorch extension).
TORCH_VERSION_REQUIREMENT = ">=2.1"
TORCH_REQUIREMENT = f"torch{TORCH_VERSION_REQUIREMENT}"

_SPEC = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")


def readRequirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def _versionTuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in re.split(r"[.+-]", text):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def _simpleSatisfies(version: str, specifiers: str) -> bool:
    """A small ``>=, >, <=, <, ==, !=`` check for when ``packaging`` is not available."""
    have = _versionTuple(version)
    for spec in filter(None, (s.strip() for s in specifiers.split(","))):
        match = re.match(r"(>=|<=|==|!=|>|<|~=)\s*(.+)", spec)
        if not match:
            continue
        op, want = match.group(1), _versionTuple(match.group(2))
        width = max(len(have), len(want))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        ok = {
            ">=": a >= b,
            "~=": a >= b,
            "<=": a <= b,
            ">": a > b,
            "<": a < b,
            "==": a == b,
            "!=": a != b,
        }[op]
        if not ok:
            return False
    return True


def requirementSatisfied(requirement: str) -> bool:
    """Whether an installed distribution satisfies ``requirement`` (e.g. ``"monai>=1.3"``)."""
    match = _SPEC.match(requirement.split(";", 1)[0])
    if not match:
        raise ValueError(f"cannot read requirement {requirement!r}")
    name, specifiers = match.group(1), match.group(3)
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    if not specifiers:
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion, Version

        try:
            return Version(version) in SpecifierSet(specifiers)
        except InvalidVersion:
            return _simpleSatisfies(version, specifiers)
    except ImportError:
        return _simpleSatisfies(version, specifiers)


def missingRequirements(requirements: list[str] | None = None) -> list[str]:
    """The requirements (default: the module's file) that are not installed in a suitable version."""
    if requirements is None:
        requirements = readRequirements()
    return [r for r in requirements if not requirementSatisfied(r)]


def torchSatisfied() -> bool:
    """Whether PyTorch is installed in the version PESF needs (metadata only: torch is not imported)."""
    return requirementSatisfied(TORCH_REQUIREMENT)
