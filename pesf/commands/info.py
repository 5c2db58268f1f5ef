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
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key:<{width}}  {value}")
    return 0
