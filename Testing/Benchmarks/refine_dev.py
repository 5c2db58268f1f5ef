"""The structures the session's refinement was tuned on, scored with and without it, and with Grow from seeds.

    python Testing/Benchmarks/refine_dev.py [--model default] [--refine FIELD=VALUE ...] [--seeds K] [--sets A,...]
                                            [--out dev.json]

The widths of :mod:`pesf.interactive.refine` were chosen on structures that the evaluation table
(``eval_table.py``) does not score, so that the table stays an honest measure. This benchmark reruns that
comparison on the repository's sample data (5 simulated clicks per structure, seed 0; mean Dice after clicks
1, 3 and 5):

* ``A``: ten structures of the sample CT (kidney_right, urinary_bladder, duodenum, iliopsoas_right,
  femur_right, vertebrae_L1, gluteus_medius_left, adrenal_gland_right, colon, small_bowel);
* ``A thin``: five thin ones of it (portal vein, iliac artery and vein, spinal cord, a rib);
* ``MR``: nine structures of the sample MR that the table does not score (gallbladder, pancreas, colon,
  vertebrae, aorta, inferior vena cava, autochthon, duodenum, spinal cord).

Each row is one way of segmenting: ``model`` (the model alone, ``refine=None``), ``refine`` (the session as
users get it) and ``growcut`` (Slicer's Grow from seeds with the same clicks). ``--refine FIELD=VALUE`` (any
field of :class:`~pesf.interactive.refine.RefineConfig`, repeatable) adds a row with those widths changed, to
try a variant against the default on the same clicks. ``--seeds K`` averages every Dice over click seeds
0..K-1 (one simulated user is one draw of where the clicks land): over seeds 0-3, refine 0.622 / 0.688 / 0.736
(0.618 / 0.680 / 0.729 before ``smooth_blocks_mr``, 0.606 / 0.671 / 0.725 before ``candidate_contrast``, 0.606
/ 0.670 / 0.725 before ``lift_cost_missed``, 0.606 / 0.669 / 0.725 before ``lift_cost``), model 0.556 / 0.598
/ 0.609, growcut 0.378 / 0.582 / 0.628.

As users get it, ``--model default`` segments the MR structures with the default model's MR weights
(``default-mr``; see :mod:`pesf.models.variants`): refine 0.621 / 0.696 / 0.754 over all 24 (0.614 / 0.685 /
0.741 before ``smooth_blocks_mr``, 0.609 / 0.674 / 0.743 before ``candidate_contrast``, 0.609 / 0.672 / 0.740
before ``lift_cost_missed``, 0.609 / 0.671 / 0.740 before ``lift_cost``), MR 0.584 / 0.715 / 0.768 (0.568 /
0.685 / 0.731 before ``smooth_blocks_mr``, 0.554 / 0.658 / 0.738 before ``candidate_contrast``, 0.554 / 0.652
/ 0.741 before ``lift_cost_missed``; with the earlier MR weights ``default-mr-2``: 0.610 / 0.665 / 0.728 and
0.556 / 0.638 / 0.708). A checkpoint that names no variants (such as ``default-7``'s weights before the pair)
segments every set with itself: refine 0.564 / 0.657 / 0.712, MR 0.432 / 0.617 / 0.667. This is how the MR
weights were chosen (``Resources/Models/README.md``).

``--sets`` scores only some groups. With ``--sets A`` and ``--model`` a proxy trained without A's ten
structures (``Resources/Models/recipe/dev-holdout``, about 50 minutes), those ten become structures the model
never learned, as the evaluation table's held-out ones are for the default model. Over seeds 0-3 the proxy's
refine 0.397 / 0.533 / 0.606, model 0.321 / 0.394 / 0.407, growcut 0.282 / 0.601 / 0.668; a second training
run of the same recipe, refine 0.406 / 0.556 / 0.613, 0.406 / 0.563 / 0.631 with ``lift_cost`` and
0.406 / 0.582 / 0.664 with ``lift_cost_missed`` as well, 0.407 / 0.593 / 0.670 with ``candidate_contrast`` (``Resources/Models/README.md``, "A proxy for
structures the model never learned").
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

CLICKS = (1, 3, 5)
SEED = 0
A_IMAGE = "A_ts_ct/A_ct_full_image.nii.gz"
A_LABEL = "A_ts_ct/A_ct_full_seg_total_fast.nii.gz"
SETS = (
    (
        "A",
        A_IMAGE,
        A_LABEL,
        {
            "kidney_right": 2,
            "urinary_bladder": 21,
            "duodenum": 19,
            "iliopsoas_right": 89,
            "femur_right": 76,
            "vertebrae_L1": 31,
            "gluteus_medius_left": 82,
            "adrenal_gland_right": 8,
            "colon": 20,
            "small_bowel": 18,
        },
    ),
    (
        "A thin",
        A_IMAGE,
        A_LABEL,
        {
            "portal_vein": 64,
            "iliac_artery_left": 65,
            "iliac_vena_right": 68,
            "spinal_cord": 79,
            "rib_left_10": 101,
        },
    ),
    (
        "MR",
        "C_ts_mr/C_mr_image.nii.gz",
        "C_ts_mr/C_mr_seg_total_mr.nii.gz",
        {
            "gallbladder": 4,
            "pancreas": 7,
            "colon": 15,
            "vertebrae": 19,
            "aorta": 23,
            "inferior_vena_cava": 24,
            "autochthon_left": 46,
            "duodenum": 14,
            "spinal_cord": 21,
        },
    ),
)


def _refine_overrides(items: list[str]) -> dict[str, float | int | bool]:
    """``FIELD=VALUE`` strings as RefineConfig overrides (values of the field's type)."""
    from pesf.interactive.refine import RefineConfig

    known = {f.name: f for f in dataclasses.fields(RefineConfig)}
    out: dict[str, float | int | bool] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in known or not value:
            raise SystemExit(
                f"refine_dev.py: --refine wants FIELD=VALUE with a field of RefineConfig ({', '.join(known)})"
            )
        kind = type(getattr(RefineConfig(), name))
        try:
            out[name] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
        except ValueError:
            raise SystemExit(f"refine_dev.py: --refine {item}: {value!r} is not a {kind.__name__}") from None
    return out


def chosen_sets(text: str | None) -> list[str]:
    """The groups a comma-separated ``--sets`` names (all of them for ``None``), in the order of ``SETS``."""
    groups = [g for g, *_ in SETS]
    if text is None:
        return groups
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in groups]
    if unknown or not names:
        raise ValueError(
            f"--sets names {', '.join(repr(n) for n in unknown) or 'no set'}; choose from "
            + ", ".join(repr(g) for g in groups)
        )
    return [g for g in groups if g in names]


def run(
    model_name: str, overrides: dict, seeds: int = 1, sets: list[str] | None = None
) -> dict[str, dict[str, list[float]]]:
    """``{row: {"group:organ": Dice after each click}}`` for the rows model, refine, growcut (and variant),
    each the mean over click seeds ``0 .. seeds - 1``, on the groups ``sets`` (default: all)."""
    from pesf.interactive import SessionConfig
    from pesf.interactive.refine import RefineConfig
    from pesf.io import read_labelmap, read_volume
    from pesf.models import load_model
    from pesf.resources import sample_data_dir

    model = load_model(model_name)
    root = sample_data_dir()
    configs = {"model": SessionConfig(refine=None), "refine": SessionConfig()}
    if overrides:
        configs["variant"] = SessionConfig(refine=RefineConfig(**overrides))
    rows: dict[str, dict[str, list[float]]] = {name: {} for name in [*configs, "growcut"]}
    for group, image_path, label_path, organs in SETS:
        if sets is not None and group not in sets:
            continue
        image = read_volume(root / image_path)
        label, _ = read_labelmap(root / label_path, like=image)
        score(rows, model, configs, group, image, label.array, organs, seeds)
    return rows


def score(
    rows: dict,
    model,
    configs: dict,
    group: str,
    image,
    label: np.ndarray,
    organs: dict[str, int],
    seeds: int = 1,
) -> None:
    """Simulate the clicks on ``organs`` of ``image`` (``label`` on its grid) for every row of ``rows``: a
    session with ``configs[row]``, or Slicer's Grow from seeds for ``"growcut"``; each structure's Dice after
    every click, the mean over click seeds ``0 .. seeds - 1``, goes to ``rows[row]["group:organ"]``."""
    from pesf.eval import evaluate_organs
    from pesf.eval.growcut import GrowCutSegmenter
    from pesf.interactive import InteractiveSession

    for name in rows:
        t0 = time.perf_counter()
        dice: dict[str, list[list[float]]] = {}
        for seed in range(SEED, SEED + seeds):
            # a new segmenter or session per simulated user: they keep every organ's clicks
            if name == "growcut":
                factory = lambda: GrowCutSegmenter(image)  # noqa: E731
            else:
                factory = lambda config=configs[name]: InteractiveSession(model, image, config)  # noqa: E731
            report = evaluate_organs(factory, label, organs, image.spacing, max(CLICKS), seed)
            for organ, result in report["organs"].items():
                dice.setdefault(organ, []).append([float(d) for d in result["dice"]])
        for organ, runs in dice.items():
            rows[name][f"{group}:{organ}"] = [float(v) for v in np.mean(runs, axis=0)]
        print(f"  {group:22s} {name:8s} {time.perf_counter() - t0:5.1f} s", file=sys.stderr, flush=True)


def mean_dice(scores: dict[str, list[float]], keys: list[str]) -> str:
    """Mean Dice after clicks 1 / 3 / 5 over ``keys`` of ``scores``, formatted."""
    m = np.mean([[scores[k][c - 1] for c in CLICKS] for k in keys], axis=0)
    return " / ".join(f"{x:.3f}" for x in m)


def seeds_text(seeds: int) -> str:
    """Which simulated users a table is over."""
    return f"seed {SEED}" if seeds == 1 else f"mean over click seeds {SEED}-{SEED + seeds - 1}"


def table(rows: dict[str, dict[str, list[float]]], seeds: int = 1) -> str:
    """Mean Dice after clicks 1 / 3 / 5 per row, over all structures and per group."""
    present = {k.split(":")[0] for scores in rows.values() for k in scores}
    groups = [g for g, *_ in SETS if g in present]
    head = "| row | all | " + " | ".join(groups) + " |"
    lines = [head, "|" + "---|" * (2 + len(groups))]
    for name, scores in rows.items():
        per_group = [mean_dice(scores, [k for k in scores if k.split(":")[0] == g]) for g in groups]
        lines.append(f"| {name} | {mean_dice(scores, list(scores))} | " + " | ".join(per_group) + " |")
    n = len(next(iter(rows.values())))
    lines.append("")
    lines.append(
        f"Mean Dice after {' / '.join(map(str, CLICKS))} clicks over {n} structures ({seeds_text(seeds)})."
    )
    return "\n".join(lines)


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """The options these dev benchmarks share: ``--model``, ``--out`` and ``--threads``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model name or checkpoint (default: default)")
    parser.add_argument("--out", type=Path, help="write every structure's Dice after each click as JSON")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="K",
        help="simulated users: every Dice the mean over click seeds 0..K-1 (default: 1, seed 0 alone)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--refine", action="append", default=[], metavar="FIELD=VALUE", help="a variant row")
    parser.add_argument(
        "--sets", metavar="A,...", help="only these groups, comma-separated: A, 'A thin', MR (default: all)"
    )
    args = parser.parse_args(argv)
    try:
        sets = chosen_sets(args.sets)
    except ValueError as exc:
        parser.error(str(exc))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    overrides = _refine_overrides(args.refine)
    t0 = time.perf_counter()
    rows = run(args.model, overrides, args.seeds, sets)
    print(table(rows, args.seeds))
    if overrides:
        print("variant: " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.out:
        from pesf.io import write_json_atomic

        write_json_atomic(args.out, {"variant": overrides, "seeds": args.seeds, "rows": rows}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
