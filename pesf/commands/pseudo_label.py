"""``pesf pseudo-label``: unannotated organs, segmented by the model from automatic prompts, into the store.

Prints one row per case and organ (volume, confidence, kept or below the threshold, skipped or failed) and
writes a JSON report (``--report``, default ``WORKSPACE/reports/pseudo-label-<time>.json``). Under
``torchrun`` every rank pseudo-labels its share of the cases; rank 0 prints the table and writes the report.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pesf.cli import register
from pesf.commands.common import check_output_path
from pesf.errors import PesfError

__all__ = ["format_table", "run_pseudo_label"]


def _source(args: argparse.Namespace) -> str:
    if args.from_model and args.points:
        raise PesfError("--from-model refines earlier pseudo-labels; it cannot take --points")
    if args.from_model:
        return "model"
    if args.from_label:
        return "label"
    if args.points:
        return "points"
    raise PesfError("no prompt source given; add --from-label LABEL, --from-model or --points PROMPTS")


def _check_numbers(args: argparse.Namespace) -> None:
    for flag, value in (("--threshold", args.threshold), ("--region-confidence", args.region_confidence)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise PesfError(f"{flag} must be between 0 and 1, got {value}")
    if args.positive is not None and args.positive < 1:
        raise PesfError(f"--positive must be at least 1, got {args.positive}")
    if args.negative < 0:
        raise PesfError(f"--negative must be 0 or more, got {args.negative}")


def _result_text(entry: dict[str, Any], threshold: float) -> str:
    if entry["status"] == "pseudo":
        return f"below threshold {threshold:.2f}" if entry.get("below_threshold") else "kept"
    return f"{entry['status']}: {entry.get('reason', '')}"


def format_table(report: dict[str, Any]) -> str:
    """The run as a text table: one row per case and organ (case errors as one row)."""
    rows = [("case", "organ", "ml", "confidence", "result")]
    for case in report["cases"]:
        if case.get("error"):
            rows.append((case["case_id"], "-", "-", "-", f"error: {case['error']}"))
        for name, entry in case.get("organs", {}).items():
            ml = f"{entry['ml']:.1f}" if "ml" in entry else "-"
            conf = f"{entry['confidence']:.2f}" if "confidence" in entry else "-"
            rows.append((case["case_id"], name, ml, conf, _result_text(entry, case["threshold"])))
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}"
        for r in rows
    ]
    s = report["summary"]
    lines.append(
        f"{s['cases']} cases: {s['cases_written']} written; {s['organs_written']} organs pseudo-labelled, "
        f"{len(s['below_threshold'])} below the confidence threshold, {s['organs_skipped']} skipped, "
        f"{len(s['organs_failed'])} failed"
    )
    return "\n".join(lines)


def _default_report_path(workspace: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = workspace / "reports"
    folder.mkdir(exist_ok=True)
    return folder / f"pseudo-label-{stamp}.json"


@register("pseudo-label")
def run_pseudo_label(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pesf.io import parse_organs_arg, write_json_atomic
    from pesf.models import load_model
    from pesf.pseudolabel import plan_cases, pseudo_label_folder
    from pesf.train.distributed import setup_distributed
    from pesf.train.store import CaseStore

    source = _source(args)
    _check_numbers(args)
    organs = parse_organs_arg(args.organs) if args.organs else None
    if organs is None and source != "points":
        raise PesfError("no organs given; add --organs NAME=VALUE,..., e.g. --organs liver=5,spleen=1")
    store = CaseStore(args.workspace)
    report_path = check_output_path(args.report, "report") if args.report else None
    selection: dict[str, Any] = {"images_dir": args.images, "case_ids": args.cases}
    files = {"labels": args.from_label, "prompts": args.points}
    plan_cases(store, **selection, **files, source=source)  # bad input fails here, before the model is loaded

    with setup_distributed(args.device) as ctx:
        model = load_model(args.model, device=ctx.device)
        with tqdm(
            desc="pseudo-label", unit="case", leave=False, disable=None if ctx.is_main else True
        ) as bar:

            def progress(done: int, total: int, what: str) -> None:
                bar.total = total
                bar.n = done
                bar.set_postfix_str(what)
                bar.refresh()

            report = pseudo_label_folder(
                store.root,
                organs,
                model,
                **selection,
                **files,
                source=source,
                dist_ctx=ctx,
                progress=progress,
                redo=args.redo,
                confidence_threshold=args.threshold,
                n_positive=args.positive,
                n_negative=args.negative,
                region_threshold=args.region_confidence,
            )
        if not ctx.is_main:
            return 2 if report["summary"]["cases_failed"] else 0

    failed = [c for c in report["cases"] if c.get("error")]
    if failed and len(failed) == len(report["cases"]) and len(failed) == 1:
        raise PesfError(failed[0]["error"])
    if failed and len(failed) == len(report["cases"]):
        raise PesfError(f"all {len(failed)} cases failed; {failed[0]['case_id']}: {failed[0]['error']}")
    report_path = report_path or _default_report_path(store.root)
    write_json_atomic(report_path, report)
    print(format_table(report))
    print(f"wrote {report_path}")
    if failed:
        raise PesfError(
            f"{len(failed)} of {len(report['cases'])} cases failed (the others were written); "
            f"{failed[0]['case_id']}: {failed[0]['error']}; details in {report_path}"
        )
    return 0
