"""A model's variants for other modalities and for few-slice scans: the bundled default brings its own weights
for MR and for few-slice CT scans.

A checkpoint may name, in its metadata, the model to use instead on images of another modality::

    {"modality": "CT", "variants": {"MR": "default-mr"}}

A key ``"<MODALITY> few-slice"`` names the model for few-slice scans of that modality (a scan at most
``SessionConfig.thin_scan_mm`` thick), whichever modality the model itself is for; other scans of the model's
own modality keep the model. Values are bundled model names or checkpoint paths (anything
:func:`~pesf.models.load_model` takes). The bundled default model does this: ``default`` (CT) names
``default-mr``, trained for MR-like contrast, and ``default-thin``, trained on thin slabs read extruded (see
``Resources/Models/README.md``), as TotalSegmentator ships separate CT and MR tasks::

    {"modality": "CT", "variants": {"MR": "default-mr", "CT few-slice": "default-thin"}}

An interactive session swaps to the variant for its image (``SessionConfig.match_modality``); a model without
variants is used as it is on every image.

The modality is guessed from the voxels, as most files carry no modality tag that survives conversion: a CT
holds air (about -1000 HU), so its 1st percentile lies far below zero, while MR intensities are not negative
(apart from small reconstruction ringing). A CT stored without its rescale to HU (air at 0) or cropped to
soft tissue reads as MR and gets the MR weights: store CTs in HU, as DICOM readers and converters do, or
create the session with ``SessionConfig(match_modality=False)``, which keeps the model it is given.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import torch

from pesf.errors import PesfError

__all__ = ["CT_AIR_PERCENTILE_HU", "guess_modality", "model_for_image", "resolve_variant"]

logger = logging.getLogger(__name__)

CT_AIR_PERCENTILE_HU = -500.0
"""An image whose 1st percentile lies below this is a CT (in HU: air -1000, lung -900 to -500, fat -100)."""

_SAMPLES = 1_000_000
_cache: dict[tuple[str, int | None, str], torch.nn.Module] = {}
_cache_lock = threading.Lock()


def guess_modality(array: np.ndarray) -> str:
    """``"CT"`` or ``"MR"`` for an image's voxels (see the module description).

    Args:
        array: the image's voxels (any shape); at most about a million of them, evenly spaced, are read.
    """
    flat = np.asarray(array).reshape(-1)
    if flat.size == 0:
        raise PesfError("cannot tell the modality of an empty image")
    step = max(1, flat.size // _SAMPLES)
    low = float(np.percentile(flat[::step], 1.0))
    return "CT" if low < CT_AIR_PERCENTILE_HU else "MR"


def _pick(model: torch.nn.Module, modality: str, few_slices: bool) -> tuple[str, str] | None:
    """``(variant, the scans it is for)`` that ``model``'s metadata names for scans of ``modality`` (few-slice
    ones with ``few_slices``), or ``None`` when it is meant for them already or names none."""
    metadata: dict[str, Any] = getattr(model, "metadata", None) or {}
    variants = metadata.get("variants")
    if not isinstance(variants, dict):
        return None
    if few_slices and variants.get(f"{modality} few-slice"):
        return str(variants[f"{modality} few-slice"]), f"few-slice {modality}"
    if str(metadata.get("modality", "")).upper() != modality and variants.get(modality):
        return str(variants[modality]), modality
    return None


def model_for_image(model: torch.nn.Module, array: np.ndarray, few_slices: bool = False) -> torch.nn.Module:
    """``model``, or the variant its metadata names for the modality of ``array`` (see :func:`resolve_variant`)."""
    return resolve_variant(model, array, few_slices)[0]


def resolve_variant(
    model: torch.nn.Module, array: np.ndarray, few_slices: bool = False, modality: str | None = None
) -> tuple[torch.nn.Module, str | None]:
    """``(model, None)``, or ``(variant, its name)`` when ``model``'s metadata names a variant for the modality
    of ``array`` (for a few-slice scan with ``few_slices``; loaded once, on the model's device, and shared).
    ``modality``, when given, is that modality as :func:`guess_modality` already told it.

    Raises:
        PesfError: the variant cannot be loaded (a missing or damaged file).
    """
    picked = _pick(model, modality or guess_modality(array), few_slices)
    if picked is None:
        return model, None
    name, scans = picked
    from pesf.models.checkpoint import load_model, resolve_reference

    device = next(model.parameters()).device
    path = resolve_reference(name)
    stamp = path.stat().st_mtime_ns if path is not None and path.is_file() else None
    key = (str(path or name), stamp, str(device))
    with _cache_lock:
        variant = _cache.get(key)
        if variant is None:
            try:
                variant = load_model(name, device=device)
            except PesfError as exc:
                raise PesfError(
                    f"the model's variant for {scans} images ({name}) cannot be loaded: {exc}"
                ) from None
            _cache[key] = variant
    logger.info("the image is a %s scan: using the model's variant %s", scans, name)
    return variant, name
