"""``pesf studio``: serve PESF Studio (trame-slicer) and print its address."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from pesf.cli import register
from pesf.errors import PesfError

__all__ = ["run_studio"]

_EXTRA = ("trame", "trame_slicer", "trame_vuetify", "trame_rca", "slicer")


@register("studio")
def run_studio(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise PesfError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_steps is not None and args.max_steps < 1:
        raise PesfError(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.image and not Path(args.image).expanduser().exists():
        raise PesfError(f"the image '{args.image}' does not exist; give a volume file or a DICOM folder")
    missing = [name for name in _EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise PesfError(
            f"PESF Studio needs its extra dependencies ({', '.join(missing)} missing): pip install 'pesf[studio]'"
        )
    from pesf.studio.app import StudioConfig
    from pesf.studio.server import serve

    config = StudioConfig(
        image=args.image,
        workspace=args.workspace,
        model=args.model,
        max_steps=args.max_steps,
        token=args.token,
    )
    return serve(config, host=args.host, port=args.port, status_api=args.status_api)
