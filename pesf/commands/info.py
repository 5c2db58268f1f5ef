"""``pesf info``: describe a model."""

from __future__ import annotations

import argparse
import json

from pesf.cli import register

__all__ = ["run_info"]


@register("info")
def run_info(args: argparse.Namespace) -> int:
    from pesf.models import load_model, model_info

    info = model_info(load_model(args.model))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    metadata = dict(info.get("metadata") or {})
    confidence = metadata.pop("confidence", None)
    if isinstance(confidence, dict):  # on a line of its own, its Dice map as a count of knots
        info = {**info, "metadata": metadata, "confidence": _confidence_summary(confidence)}
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key:<{width}}  {value}")
    return 0


def _confidence_summary(confidence: dict) -> dict:
    """The confidence module's metadata for the text listing: figures rounded, the Dice map counted."""
    out = {}
    for key, value in confidence.items():
        if key == "dice_map" and isinstance(value, dict):
            value = f"{len(value.get('knots') or [])} knots"
        elif isinstance(value, float):
            value = f"{value:.3g}"
        out[key] = value
    return out
