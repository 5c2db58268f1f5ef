"""The ``pesf`` command.

Every subcommand prints one line ``pesf: error: ...`` and exits with status 2 on bad input; it never
leaves a partial output file behind (outputs are written under a temporary name, then renamed).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pesf import __version__
from pesf.errors import PesfError

__all__ = ["main", "build_parser"]

logger = logging.getLogger("pesf")

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}

_MODEL_HELP = (
    "a checkpoint file (SAM-Med3D .pth such as sam_med3d_turbo.pth, or a PESF .pt) or the name of a "
    "bundled model (default: %(default)s)"
)


def _command(name: str):
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        _COMMANDS[name] = fn
        return fn

    return register


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pesf`` command and all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="pesf",
        description="PESF: promptable 3D organ segmentation (SAM-Med3D compatible) with PESF training.",
    )
    parser.add_argument("--version", action="version", version=f"pesf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    parser.add_argument("--debug", action="store_true", help="show a traceback on unexpected errors")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "segment",
        help="segment organs in a volume from point prompts",
        description=(
            "Segment organs in IMAGE from point prompts and write a label map on IMAGE's grid, one label "
            "value per organ. Each prompt point is applied as one click, in file order, so the result equals "
            "an interactive session with the same clicks."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="input volume: NIfTI, NRRD, MHA, or a DICOM series folder")
    p.add_argument(
        "--points",
        required=True,
        metavar="PROMPTS",
        help="prompt file: PESF JSON (space IJK, LPS or RAS) or a Slicer markups file (.mrk.json)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="LABELMAP",
        help="output label map: .nii.gz, .nii, .nrrd, .mha or .seg.nrrd",
    )
    p.add_argument("--model", default="default", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument(
        "--report",
        metavar="REPORT.json",
        help="write a JSON report: per organ value, voxels, ml, confidence, timings",
    )
    p.add_argument(
        "--confidence-map",
        metavar="FILE",
        help="also write the voxel confidence map (float, on IMAGE's grid)",
    )

    p = sub.add_parser(
        "evaluate",
        help="simulate clicks against a reference label map and report Dice/NSD per click",
        description=(
            "Simulate clicks as SAM-Med3D does (first click inside the organ, each later click in the largest "
            "error region, positive or negative), deterministically for a seed, and report Dice and NSD after "
            "every click per organ, with the latency of every click."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="input volume")
    p.add_argument("label", metavar="LABEL", help="reference label map on IMAGE's grid")
    p.add_argument(
        "--organs", required=True, metavar="NAME=VALUE,...", help="organs to evaluate, e.g. liver=5,spleen=1"
    )
    p.add_argument(
        "--clicks", type=int, default=5, metavar="N", help="clicks per organ (default: %(default)s)"
    )
    p.add_argument("--model", default="default", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the click simulation (default: %(default)s)"
    )
    p.add_argument(
        "--nsd-tolerance",
        type=float,
        default=2.0,
        metavar="MM",
        help="NSD tolerance in mm (default: %(default)s)",
    )
    p.add_argument("--out", required=True, metavar="REPORT.json", help="where to write the JSON report")

    p = sub.add_parser(
        "info",
        help="describe a model: architecture, parameter count, where its weights came from",
        description="Print a model's architecture, parameter counts and the origin of its weights.",
    )
    p.add_argument("--model", default="default", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _configure(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pesf`` command; returns the exit status."""
    from pesf import commands  # noqa: F401  (registers the subcommands)

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    _configure(args)
    try:
        return _COMMANDS[args.command](args)
    except PesfError as exc:
        print(f"pesf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pesf: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("pesf: error: out of memory; try a smaller model or fewer threads", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line, the traceback only with --debug
        if args.debug:
            raise
        print(
            f"pesf: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1


register = _command

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
