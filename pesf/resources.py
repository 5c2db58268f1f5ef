"""Where the project's bundled resources (default model, sample data) live."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resources_dir", "sample_data_dir", "models_dir"]


def resources_dir() -> Path:
    """The ``Resources`` folder: ``$PESF_RESOURCES`` if set, else the one beside the ``pesf`` package."""
    env = os.environ.get("PESF_RESOURCES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "Resources"


def sample_data_dir() -> Path:
    """The bundled sample volumes (see ``Resources/SampleData/README.md``)."""
    return resources_dir() / "SampleData"


def models_dir() -> Path:
    """The bundled models, one file per model name (``<name>.pt``)."""
    return resources_dir() / "Models"
