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
            "every click per organ, with the latency of every click. --method growcut scores 3D Slicer's 'Grow "
            "from seeds' with the same clicks as seeds, as a classical baseline."
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
    p.add_argument(
        "--method",
        choices=("pesf", "growcut"),
        default="pesf",
        help=(
            "pesf: the promptable model (--model); growcut: 3D Slicer's 'Grow from seeds' with the same clicks "
            "as seeds, a classical baseline without confidence (default: %(default)s)"
        ),
    )
    p.add_argument(
        "--model",
        metavar="MODEL",
        help=_MODEL_HELP.replace("%(default)s", "default") + "; with --method pesf only",
    )
    p.add_argument(
        "--no-refine",
        action="store_true",
        help=(
            "with --method pesf only: score the model's masks as they are, without their refinement by the image "
            "(a geodesic grow from the model's mask, its logits and the clicks, from an organ's first click on)"
        ),
    )
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

    _add_demo_parser(sub)
    p = sub.add_parser(
        "train-confidence",
        help="fit a model's PESF confidence module on the accepted organs of a workspace",
        description=(
            "Fit the confidence module (predicts the Dice of a mask from the region's image embedding and the "
            "mask) on masks of varied quality that MODEL itself makes from simulated and perturbed clicks on the "
            "accepted organs of WORKSPACE; calibrate the pseudo-label threshold; write MODEL with its module."
        ),
    )
    p.add_argument("workspace", metavar="WORKSPACE", help="the case store whose accepted organs are used")
    p.add_argument("--model", default="default", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument(
        "--out", required=True, metavar="MODEL.pt", help="where to write the model with its module"
    )
    p.add_argument(
        "--epochs", type=int, default=30, metavar="N", help="training epochs (default: %(default)s)"
    )
    p.add_argument(
        "--regions-per-organ",
        type=int,
        default=2,
        metavar="N",
        help="regions cut around each organ (the first centred on a first click as inference does, the others augmented) (default: %(default)s)",
    )
    p.add_argument(
        "--augmentation",
        metavar="FILE.json",
        help="augmentation settings of the augmented regions, as a JSON object with the keys of a training "
        'config\'s "augmentation" (default: the training defaults)',
    )
    p.add_argument(
        "--target-dice",
        type=float,
        default=0.8,
        metavar="D",
        help="calibrate the threshold so that kept masks have this mean Dice (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: %(default)s)")
    p.add_argument(
        "--modality",
        choices=("CT", "MR"),
        help="record in the written model the modality it is meant for (a session swaps it for a variant "
        "on images of that modality only for a few-slice variant)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="MODALITY=MODEL",
        help="record in the written model the model a session uses instead on images of MODALITY (CT or MR, "
        "or 'CT few-slice' or 'MR few-slice' for scans at most 30 mm thick; a bundled model name or a "
        "checkpoint path), e.g. MR=default-mr; repeatable",
    )
    p.add_argument("--model-version", metavar="NAME", help="record this version name in the written model")
    p.add_argument(
        "--source",
        metavar="TEXT",
        help="record TEXT as the written model's source (default: the file MODEL was read from)",
    )

    _add_cases_parser(sub)
    _add_train_parser(sub)
    _add_pseudo_label_parser(sub)
    _add_studio_parser(sub)
    return parser


# -------------------------------------------------------------------------------------------- pesf demo


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """``pesf demo``: the engine end to end on the bundled sample CT."""
    p = sub.add_parser(
        "demo",
        help="segment organs of the bundled sample CT, write the results, and run one PESF round",
        description=(
            "On the bundled sample CT: segment liver, spleen, kidneys, stomach, aorta and inferior vena cava "
            "with simulated clicks (one inside each organ, then corrective clicks on the largest error), print "
            "Dice against the reference labels, confidence and time per click, and write the label map, a 3D "
            "Slicer segmentation (.seg.nrrd), the clicks (.mrk.json), PNG overlays and report.json. Then one "
            "PESF round: a workspace where one organ is not annotated, its pseudo-label kept or dropped by "
            "confidence, a few fine-tuning steps, and that organ's Dice before and after."
        ),
    )
    p.add_argument(
        "--out",
        default="pesf-demo-output",
        metavar="DIR",
        help="output folder, created if missing; files of an earlier demo are replaced (default: %(default)s)",
    )
    p.add_argument("--model", default="default", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument(
        "--clicks",
        type=int,
        default=3,
        metavar="N",
        help="corrective clicks after the first one, per organ (default: %(default)s)",
    )
    p.add_argument(
        "--skip-training", action="store_true", help="skip the fine-tuning of the PESF round (quicker)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="CPU threads for torch (default: the cores not busy with other work, at least 1)",
    )


# ------------------------------------------------------------------------------------------- pesf cases


def _add_cases_parser(sub: argparse._SubParsersAction) -> None:
    """``pesf cases add|list|remove``: the case store (workspace) the trainer reads."""
    cases = sub.add_parser(
        "cases",
        help="add, list and remove the cases of a training workspace",
        description=(
            "Manage a workspace: a folder of cases (image, label map, and a record per organ saying whether "
            "it is accepted, pseudo-labelled or rejected) that PESF training reads."
        ),
    )
    cases_sub = cases.add_subparsers(dest="cases_command", metavar="ACTION", help="add, list or remove")

    p = cases_sub.add_parser(
        "add",
        help="add an image and its label map as a case",
        description=(
            "Copy IMAGE and LABEL (a label map on IMAGE's grid) into WORKSPACE as one case, with a record per "
            "organ. WORKSPACE is created if missing. Every non-zero value of LABEL must be named in --organs."
        ),
    )
    p.add_argument("workspace", metavar="WORKSPACE", help="the workspace folder (created if missing)")
    p.add_argument("image", metavar="IMAGE", help="input volume: NIfTI, NRRD, MHA, or a DICOM series folder")
    p.add_argument(
        "label", metavar="LABEL", help="label map on IMAGE's grid: .nii.gz, .nii, .nrrd, .mha or .seg.nrrd"
    )
    p.add_argument(
        "--organs",
        metavar="NAME=VALUE,...",
        help=(
            "the organs in LABEL and their label values, e.g. liver=5,spleen=1 "
            "(default: the segment names of a Slicer .seg.nrrd LABEL)"
        ),
    )
    p.add_argument(
        "--status",
        default="accepted",
        metavar="STATUS",
        help="accepted (checked by a person) or pseudo (made by a model, unchecked) (default: %(default)s)",
    )
    p.add_argument(
        "--case-id",
        metavar="ID",
        help="the case id: letters, digits, '.', '_', '-' (default: made from IMAGE's file name)",
    )
    p.add_argument("--author", metavar="NAME", help="who made the labels (default: the current user name)")
    p.add_argument("--overwrite", action="store_true", help="replace a case of the same id")
    p.add_argument(
        "--ignore-unnamed",
        action="store_true",
        help="set label values not named in --organs to background instead of failing",
    )

    p = cases_sub.add_parser(
        "list",
        help="list the cases and their organs",
        description="Print a table of the cases of WORKSPACE: each organ's value, status and confidence.",
    )
    p.add_argument("workspace", metavar="WORKSPACE", help="the workspace folder")
    p.add_argument("--json", action="store_true", help="print the case records as JSON instead of a table")

    p = cases_sub.add_parser(
        "remove",
        help="remove a case",
        description="Remove the case CASE_ID, with its files, from WORKSPACE.",
    )
    p.add_argument("workspace", metavar="WORKSPACE", help="the workspace folder")
    p.add_argument("case_id", metavar="CASE_ID", help="the id of the case to remove")


# ------------------------------------------------------------------------------------------- pesf train


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    """``pesf train``: the background training process of a workspace, and its stop request."""
    p = sub.add_parser(
        "train",
        help="fine-tune the model on a workspace's cases (PESF training), or stop a running training",
        description=(
            "Fine-tune a promptable model on the accepted and pseudo-labelled organs of WORKSPACE with the PESF "
            "method (confidence filtering of pseudo-labels, curriculum with Gaussian perturbation, simulated "
            "clicks as SAM-Med3D trains). Runs in this process until done or stopped; progress goes to "
            "WORKSPACE/status.json, train.log and curves.png, model versions to WORKSPACE/models/vN. "
            "An interrupted run resumes from WORKSPACE/state/last.pt when started again. "
            "Under torchrun, trains on all ranks with DistributedDataParallel."
        ),
    )
    p.add_argument("workspace", metavar="WORKSPACE", help="the workspace folder (made with `pesf cases add`)")
    p.add_argument(
        "--config",
        metavar="CONFIG.json",
        help="training settings as a JSON object (steps, lr, trainable, base_model, ...); unknown keys are errors",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="train for N optimizer steps in all, a resumed run included (overrides the settings' steps)",
    )
    p.add_argument(
        "--device",
        metavar="DEVICE",
        help="auto (CUDA when available), cpu, cuda or cuda:N (overrides the settings' device)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start over from the base model instead of resuming an unfinished run",
    )
    p.add_argument(
        "--stop",
        action="store_true",
        help="ask the trainer running on WORKSPACE to stop after its current step, saving a model version",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="with --stop: wait until the trainer has stopped",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="with --stop --wait: give up after this many seconds (default: %(default)s)",
    )


# ------------------------------------------------------------------------------------ pesf pseudo-label


def _add_pseudo_label_parser(sub: argparse._SubParsersAction) -> None:
    """``pesf pseudo-label``: automatic pseudo-labels of unannotated organs, written into the case store."""
    p = sub.add_parser(
        "pseudo-label",
        help="segment unannotated organs of a workspace's cases automatically (pseudo-labels for training)",
        description=(
            "Segment organs nobody annotated with the promptable model, prompted automatically, and store them "
            "in WORKSPACE as pseudo-labelled organs with the model's confidence (the trainer drops those below "
            "its confidence threshold). Prompts come from another tool's label map (--from-label: clicks at the "
            "most interior voxels of each organ), from the confident part of the case's earlier pseudo-labels "
            "(--from-model: iterative refinement), or from points a person placed (--points). Accepted organs "
            "are never changed; organs that already have a pseudo-label are skipped unless --redo, so an "
            "interrupted run continues where it stopped when started again. With --case, an organ missing "
            "from a case's label map or prompt file is an error; with --all or --images it is reported and "
            "the run goes on. Under torchrun the cases are shared among the processes. Prints a table and "
            "writes a JSON report."
        ),
    )
    p.add_argument("workspace", metavar="WORKSPACE", help="the workspace folder (made with `pesf cases add`)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--case",
        dest="cases",
        action="append",
        metavar="ID",
        help="a case of WORKSPACE to pseudo-label (repeat for several)",
    )
    which.add_argument("--all", action="store_true", help="pseudo-label every case of WORKSPACE")
    which.add_argument(
        "--images",
        metavar="DIR",
        help=(
            "a folder of images (NIfTI, NRRD, MHA files or DICOM series subfolders); each becomes a case named "
            "after its file, added to WORKSPACE with no organs if it is not there yet"
        ),
    )
    p.add_argument(
        "--organs",
        metavar="NAME=VALUE,...",
        help=(
            "the organs to pseudo-label and their label values, in the source label map and in the workspace, "
            "e.g. liver=5,spleen=1 (default with --points: the organs of the prompt file)"
        ),
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--from-label",
        metavar="LABEL",
        help=(
            "prompts from a label map on the case's image grid, e.g. TotalSegmentator's output; with several "
            "cases, a folder of label maps named like the images or case ids. With --from-model: the fallback "
            "for organs without an earlier pseudo-label"
        ),
    )
    source.add_argument(
        "--points",
        metavar="PROMPTS",
        help=(
            "prompts a person placed: a PESF prompt JSON or Slicer .mrk.json; with several cases, a folder of "
            "prompt files named like the case ids"
        ),
    )
    p.add_argument(
        "--from-model",
        action="store_true",
        help=(
            "refine the cases' earlier pseudo-labels: the current model reproduces each one, and the part it "
            "segments confidently becomes the prompt for a new segmentation"
        ),
    )
    p.add_argument("--model", default="default", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help=(
            "confidence threshold (0..1) for the report: organs below it are stored all the same but listed "
            "(default: the model's calibrated threshold, else 0.5)"
        ),
    )
    p.add_argument(
        "--region-confidence",
        type=float,
        default=0.9,
        metavar="C",
        help=(
            "with --from-model: voxel confidence (0..1) an earlier pseudo-label must reach to prompt "
            "(default: %(default)s)"
        ),
    )
    p.add_argument(
        "--positive",
        type=int,
        metavar="N",
        help="positive clicks per organ from a label map (default: by organ size, 1 per 12 cm, at most 4)",
    )
    p.add_argument(
        "--negative",
        type=int,
        default=0,
        metavar="N",
        help="negative clicks just outside each organ of a label map (default: %(default)s)",
    )
    p.add_argument(
        "--redo", action="store_true", help="pseudo-label organs that already have a pseudo-label again"
    )
    p.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto (this process's GPU when CUDA is available), cpu, cuda or cuda:N (default: %(default)s)",
    )
    p.add_argument(
        "--report",
        metavar="REPORT.json",
        help=(
            "where to write the JSON report: per case and organ value, voxels, ml, confidence, whether it is "
            "below the threshold (default: WORKSPACE/reports/pseudo-label-<time>.json)"
        ),
    )


# ------------------------------------------------------------------------------------------- pesf studio


def _add_studio_parser(sub: argparse._SubParsersAction) -> None:
    """``pesf studio``: PESF Studio, the browser GUI (trame-slicer)."""
    p = sub.add_parser(
        "studio",
        help="open PESF Studio, the segmentation and training GUI, in a web browser",
        description=(
            "Serve PESF Studio on this computer and print its address: slice and 3D views of IMAGE, organs "
            "segmented from clicks, review, export, and the background trainer of a workspace. Without IMAGE "
            "it opens the bundled sample CT. It listens on 127.0.0.1 only, unless --host names another "
            "interface; then every request must carry an access token (--token, or one generated and printed)."
        ),
    )
    p.add_argument(
        "image", nargs="?", metavar="IMAGE", help="volume to open: NIfTI, NRRD, MHA or a DICOM series folder"
    )
    p.add_argument(
        "--workspace", metavar="DIR", help="training workspace (case store) to send cases to and train"
    )
    p.add_argument(
        "--model",
        metavar="MODEL",
        help=(
            "a checkpoint file or the name of a bundled model (default: the version chosen for --workspace in "
            "PESF Train, else the bundled default)"
        ),
    )
    p.add_argument(
        "--port",
        type=int,
        default=8080,
        metavar="P",
        help="port to listen on, 0 for any (default: %(default)s)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="HOST",
        help="interface to listen on; anything but a loopback address requires an access token (default: %(default)s)",
    )
    p.add_argument(
        "--token",
        metavar="TOKEN",
        help="access token every request must carry (16 to 128 letters, digits, '-', '_'; generated with --host)",
    )
    p.add_argument(
        "--max-steps", type=int, metavar="N", help="default length of training runs started from the page"
    )
    p.add_argument("--status-api", action="store_true", help=argparse.SUPPRESS)  # JSON status for tests


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
