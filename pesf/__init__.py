"""PESF: label-efficient promptable 3D organ segmentation."""

from __future__ import annotations

__version__ = "0.1.0"
