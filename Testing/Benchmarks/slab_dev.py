"""Few-slice scans: the sample CT cut to slabs of three slices, scored as the session and as Grow from seeds.

    python Testing/Benchmarks/slab_dev.py [--model default] [--slices 3] [--split 1] [--seeds K] [--out slab.json]

A scan of a few slices (a limited-coverage acquisition, a DICOM example of three slices such as the sample
CT E) gives a promptable model almost no context across slices. This benchmark cuts the sample CT A (3 mm
slices) to slabs of ``--slices`` slices centred on the largest section of the liver, the right kidney and the
urinary bladder, and scores in each slab the organs that have at least 200 voxels there (5 simulated clicks,
seed 0; mean Dice after clicks 1, 3 and 5), with the session as users get it (``refine``), the model alone
(``model``) and Slicer's Grow from seeds (``growcut``).

Most of these organs were training targets of the bundled default model on the whole of that CT; kidney_left,
gallbladder and pancreas were held out (marked in the table). So this measures how well a model copes with
a thin scan of a patient it knows; the evaluation table's E is the measure on a patient it does not know.

The bundled default model segments these slabs with its weights for few-slice CT scans (``default-thin``,
trained on thin slabs read extruded; see :mod:`pesf.models.variants`), which were chosen here (3 mm and
9 mm slabs, 15 and 30 mm checked; ``Resources/Models/README.md``). Mean Dice after 1 / 3 / 5 clicks over 13
structures: refine 0.642 / 0.835 / 0.866, model 0.580 / 0.708 / 0.765, growcut 0.524 / 0.736 / 0.837; the
liver at the liver's level 0.86 / 0.88 / 0.92 refined (0.13 / 0.43 / 0.82 with Grow from seeds; on the whole
scan the model finds it at 0.85 after one click); the held-out kidney_left (the only held-out organ with 200
voxels in a slab) 0.79 / 0.97 / 0.96 refined, 0.93 / 0.95 / 0.95 with Grow from seeds.

With the whole-scan weights (``--model`` a copy of ``default.pt`` without its variants, ``default-7``):
refine 0.583 / 0.816 / 0.880, model 0.545 / 0.669 / 0.728, the liver 0.49 / 0.73 / 0.87. Both session rows
read the first click's mask with the offset for few-slice scans (``SessionConfig.thin_scan_offset``, chosen
here with 3, 5 and 10 slices, and kept for ``default-thin``: offset 0 or 2 gave less after one, three and
five clicks); with ``default-7`` and without it, refine 0.577 / 0.774 / 0.859 and model 0.496 / 0.683 /
0.720; with a working box of the model's mask alone (before ``RefineConfig.cover_unsure``) the liver reached
0.41 / 0.38 / 0.70, and the mean 0.576 / 0.756 / 0.857.

E is thinner still: three 1 mm slices, a region layer or two of the model's 1.5 mm. ``--slices 1 --split 3``
cuts slabs as thin: one 3 mm slice of the sample CT, split into three 1 mm slices of its content (10
structures). There: refine 0.520 / 0.783 / 0.836, model 0.486 / 0.650 / 0.774, growcut 0.424 / 0.752 / 0.835
(with ``default-7``, refine 0.452 / 0.738 / 0.769 and model 0.417 / 0.637 / 0.708: behind Grow from seeds
after three and five clicks).

One simulated user is one draw of where the clicks land; ``--seeds K`` averages every Dice over click seeds
0..K-1 (each seed a new session and a new Grow from seeds). Over seeds 0-3, refined / Grow from seeds:
9 mm slabs 0.623 / 0.794 / 0.864 against 0.501 / 0.758 / 0.835 (``default-7``: 0.559 / 0.776 / 0.856),
3 mm slabs 0.560 / 0.766 / 0.842 against 0.413 / 0.727 / 0.811 (``default-7``: 0.483 / 0.697 / 0.800).
All figures above are with the simulated user before its correction for few-slice scans (its first click
had landed anywhere in an organ's section: ``pesf/eval/clicks.py``); with the corrected user, over seeds
0-3, refined / model alone / Grow from seeds: 9 mm slabs 0.779 / 0.870 / 0.886, 0.751 / 0.800 / 0.816,
0.567 / 0.783 / 0.866; 3 mm slabs 0.763 / 0.877 / 0.895, 0.754 / 0.822 / 0.831, 0.544 / 0.798 / 0.877.
"""

from __future__ import annotations

import sys
import time

import numpy as np

CLICKS = (1, 3, 5)
MIN_VOXELS = 200
IMAGE = "A_ts_ct/A_ct_full_image.nii.gz"
LABEL = "A_ts_ct/A_ct_full_seg_total_fast.nii.gz"
LEVELS = {"liver": 5, "kidney_right": 2, "urinary_bladder": 21}
"""Slabs are centred on the slice where each of these organs has its largest section."""
ORGANS = {
    "liver": 5,
    "spleen": 1,
    "stomach": 6,
    "kidney_right": 2,
    "kidney_left": 3,
    "gallbladder": 4,
    "pancreas": 7,
    "aorta": 52,
    "inferior_vena_cava": 63,
    "urinary_bladder": 21,
    "colon": 20,
    "small_bowel": 18,
    "iliopsoas_right": 89,
    "autochthon_left": 86,
}
HELD_OUT = {"kidney_left", "gallbladder", "pancreas"}
"""Of these organs, those the bundled default model was not trained on."""


def slabs(slices: int, split: int = 1):
    """``(name, image, label array, organs)`` per slab of ``slices`` slices of the sample CT, each slice split
    into ``split`` thinner slices of the same content (a slab as thin as E's with ``slices=1, split=3``)."""
    from pesf.io import read_labelmap, read_volume
    from pesf.io.volume import Volume
    from pesf.resources import sample_data_dir

    root = sample_data_dir()
    image = read_volume(root / IMAGE)
    label, _ = read_labelmap(root / LABEL, like=image)
    axis = int(np.argmax(np.abs(image.direction[2])))  # the axial slices
    other = tuple(a for a in range(3) if a != axis)
    for level, value in LEVELS.items():
        areas = (label.array == value).sum(axis=other)
        centre = int(np.argmax(areas))
        first = int(np.clip(centre - slices // 2, 0, image.shape[axis] - slices))
        cut = [slice(None)] * 3
        cut[axis] = slice(first, first + slices)
        corner = np.zeros(3)
        corner[axis] = first
        lab = np.asarray(label.array[tuple(cut)])
        organs = {n: v for n, v in ORGANS.items() if int((lab == v).sum()) >= MIN_VOXELS}
        array = image.array[tuple(cut)]
        spacing = np.array(image.spacing, dtype=np.float64)
        if split > 1:
            # the first thin slice's centre lies (split - 1) / (2 split) of a slice before the first's
            array, lab = np.repeat(array, split, axis=axis), np.repeat(lab, split, axis=axis)
            corner[axis] -= (split - 1) / (2 * split)
            spacing[axis] /= split
        sub = Volume(array, image.index_to_lps(corner), spacing, image.direction)
        yield f"{level} level", sub, lab, organs


def run(model_name: str, slices: int, split: int = 1, seeds: int = 1) -> dict[str, dict[str, list[float]]]:
    """``{row: {"slab:organ": Dice after each click}}`` for the rows refine, model and growcut, each the mean
    over click seeds ``0 .. seeds - 1``."""
    from refine_dev import score  # this script's folder is on the path when it runs

    from pesf.interactive import SessionConfig
    from pesf.models import load_model

    model = load_model(model_name)
    configs = {"refine": SessionConfig(), "model": SessionConfig(refine=None)}
    rows: dict[str, dict[str, list[float]]] = {name: {} for name in [*configs, "growcut"]}
    for name, image, label, organs in slabs(slices, split):
        score(rows, model, configs, name, image, label, organs, seeds)
    return rows


def table(rows: dict[str, dict[str, list[float]]], seeds: int = 1) -> str:
    """Dice after clicks 1 / 3 / 5 per structure and row, and the means."""
    from refine_dev import mean_dice, seeds_text

    names = list(rows)
    lines = ["| slab | organ | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    keys = list(next(iter(rows.values())))
    for key in keys:
        slab, organ = key.split(":")
        label = organ + (" (held out)" if organ in HELD_OUT else "")
        cells = [" / ".join(f"{rows[n][key][c - 1]:.2f}" for c in CLICKS) for n in names]
        lines.append(f"| {slab} | {label} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | all | " + " | ".join(mean_dice(rows[n], keys) for n in names) + " |")
    held = [k for k in keys if k.split(":")[1] in HELD_OUT]
    if held:
        lines.append("| **mean** | held out | " + " | ".join(mean_dice(rows[n], held) for n in names) + " |")
    lines.append("")
    lines.append(
        f"Dice after {' / '.join(map(str, CLICKS))} clicks, {len(keys)} structures ({seeds_text(seeds)})."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from refine_dev import benchmark_parser

    parser = benchmark_parser(__doc__)
    parser.add_argument("--slices", type=int, default=3, help="slices per slab (default: 3)")
    parser.add_argument(
        "--split",
        type=int,
        default=1,
        help="split every slice into this many thinner ones of the same content (default: 1; "
        "--slices 1 --split 3 gives slabs of three 1 mm slices, as thin as the sample CT E)",
    )
    args = parser.parse_args(argv)
    if args.split < 1:
        parser.error("--split must be at least 1")
    if args.slices * args.split < 2:
        parser.error("a slab needs at least 2 slices (PESF segments 3D volumes): raise --slices or --split")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    rows = run(args.model, args.slices, args.split, args.seeds)
    print(table(rows, args.seeds))
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.out:
        from pesf.io import write_json_atomic

        out = {"slices": args.slices, "split": args.split, "seeds": args.seeds, "rows": rows}
        write_json_atomic(args.out, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
