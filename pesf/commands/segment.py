"""``pesf segment``: organs from point prompts, written as a label map on the input grid."""

from __future__ import annotations

import argparse
import time

import numpy as np

from pesf.cli import register
from pesf.commands.common import check_output_path, progress_bar

__all__ = ["run_segment"]


@register("segment")
def run_segment(args: argparse.Namespace) -> int:
    from pesf.interactive import InteractiveSession
    from pesf.io import (
        default_segment_info,
        load_prompts,
        read_volume,
        write_json_atomic,
        write_labelmap,
        write_volume,
    )
    from pesf.models import load_model, model_info

    out = check_output_path(args.out, "label map")
    report_path = check_output_path(args.report, "report") if args.report else None
    conf_path = check_output_path(args.confidence_map, "confidence map") if args.confidence_map else None
    steps: dict[str, float] = {}

    t0 = time.perf_counter()
    image = read_volume(args.image)
    steps["read_image_s"] = time.perf_counter() - t0
    organs = load_prompts(args.points, image)

    t0 = time.perf_counter()
    model = load_model(args.model)
    steps["load_model_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    session = InteractiveSession(model, image)
    organ_reports = {}
    total = sum(len(o.points) for o in organs)
    with progress_bar(total, "segment") as bar:
        for organ in organs:
            clicks = []
            result = None
            for point in organ.points:
                result = session.add_click(organ.name, point.position_ijk, point.positive)
                clicks.append(
                    {"positive": point.positive, **{k: round(v, 4) for k, v in result.timings.items()}}
                )
                bar.update(1)
            assert result is not None
            organ_reports[organ.name] = {
                "value": organ.value,
                "voxels": result.voxel_count,
                "volume_ml": round(result.volume_ml(image.spacing), 3),
                "confidence": round(result.confidence, 4),
                "confidence_source": result.confidence_source,
                "regions": result.n_regions,
                "clicks": clicks,
            }
    steps["segment_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    values = {o.name: o.value for o in organs}
    labels = session.label_map(values)
    segments = {o.value: default_segment_info(o.name, o.value) for o in organs}
    write_labelmap(image.with_array(labels), out, segments)
    if conf_path is not None:
        conf = np.ones(image.shape, dtype=np.float32)
        for organ in organs:
            res = session.result(organ.name)
            np.minimum(conf, res.full_confidence_map(), out=conf)
        write_volume(image.with_array(conf), conf_path)
    steps["write_s"] = time.perf_counter() - t0

    if report_path is not None:
        info = model_info(session.model)  # the variant for the image's modality, if the model names one
        write_json_atomic(
            report_path,
            {
                "image": str(args.image),
                "output": str(out),
                "model": {k: info.get(k) for k in ("name", "config", "source", "trained") if k in info},
                "organs": organ_reports,
                "timings": {k: round(v, 4) for k, v in steps.items()},
            },
        )
    for name, rep in organ_reports.items():
        print(
            f"{name:<24} value {rep['value']:>3}  {rep['volume_ml']:>9.1f} ml  confidence {rep['confidence']:.2f}"
        )
    print(f"wrote {out}")
    return 0
