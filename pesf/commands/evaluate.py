"""``pesf evaluate``: simulated clicks against a reference label map, Dice and NSD per click."""

from __future__ import annotations

import argparse
import dataclasses

from pesf.cli import register
from pesf.commands.common import check_output_path, progress_bar

__all__ = ["run_evaluate"]


@register("evaluate")
def run_evaluate(args: argparse.Namespace) -> int:
    from pesf.errors import PesfError
    from pesf.eval import evaluate_organs, format_report_table
    from pesf.io import parse_organs_arg, read_labelmap, read_volume, write_json_atomic

    if args.clicks < 1:
        raise PesfError(f"--clicks must be at least 1, got {args.clicks}")
    method = getattr(args, "method", "pesf")
    model_name = getattr(args, "model", None)
    no_refine = getattr(args, "no_refine", False)
    if method == "growcut" and (model_name or no_refine):
        option = "--model" if model_name else "--no-refine"
        raise PesfError(
            f"{option} applies to --method pesf only; Grow from seeds (--method growcut) uses no model"
        )
    out = check_output_path(args.out, "report")
    organs = parse_organs_arg(args.organs)
    image = read_volume(args.image)
    label, _ = read_labelmap(args.label, like=image)
    if method == "growcut":
        from pesf.eval.growcut import GrowCutSegmenter

        segmenter = GrowCutSegmenter(image)  # fails now, not after the first click, without slicer-core

        def factory():
            return segmenter

        details = {
            "margin_mm": segmenter.margin_mm,
            "seed_radius_mm": segmenter.seed_radius_mm,
            "seed_locality": segmenter.seed_locality,
        }
    else:
        from pesf.interactive import InteractiveSession, SessionConfig
        from pesf.models import load_model, model_info

        config = SessionConfig(refine=None) if no_refine else SessionConfig()
        # one session for every organ (evaluate_organs asks for one); it reports the model it segments with,
        # the variant for the image's modality if the model names one
        session = InteractiveSession(load_model(model_name or "default"), image, config)

        def factory():
            return session

        info = model_info(session.model)
        details = {k: info.get(k) for k in ("name", "config", "source", "trained") if k in info}
        details["refine"] = None if config.refine is None else dataclasses.asdict(config.refine)
        details["thin_scan"] = {"mm": config.thin_scan_mm, "first_click_offset": config.thin_scan_offset}

    with progress_bar(len(organs) * args.clicks, f"evaluate ({method})") as bar:

        def progress(done: int, total: int, what: str) -> None:
            bar.total = total
            bar.n = done
            bar.set_postfix_str(what)
            bar.refresh()

        report = evaluate_organs(
            factory,
            label.array,
            organs,
            spacing=image.spacing,
            n_clicks=args.clicks,
            seed=args.seed,
            progress=progress,
            tolerance_mm=args.nsd_tolerance,
        )
    report["method"] = method
    report["model" if method == "pesf" else "growcut"] = details
    report["image"] = str(args.image)
    report["label"] = str(args.label)
    write_json_atomic(out, report)
    print(format_report_table(report))
    print(f"wrote {out}")
    return 0
