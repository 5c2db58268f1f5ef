"""PESF: label-efficient promptable 3D organ segmentation."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def __getattr__(name: str) -> object:  # lazy: importing pesf must not import torch
    if name == "load_model":
        from .models.checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'pesf' has no attribute {name!r}")
