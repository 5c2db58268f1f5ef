"""The evaluation table: our model against Slicer's grow-cut, with the same simulated clicks, on the sample data.

Regenerate it with one command::

    python Testing/Benchmarks/eval_table.py [--model default] [--seeds 1] [--out eval_table.json] [--markdown eval_table.md]

It runs ``pesf evaluate`` (5 clicks, seed 0, or seeds 0..K-1 with ``--seeds K``, each row then the mean over
them; Dice after clicks 1, 3 and 5 of one run is what separate runs
with 1, 3 and 5 clicks would give, since clicks only depend on the clicks and predictions before them) with
``--method pesf`` (the session as users get it: the model, its mask refined by the image from an organ's
first click on), with ``--method pesf --no-refine`` (the model alone) and with ``--method growcut`` on:

a. the sample CT A, structures the bundled default model was not trained on (held out);
b. the sample CT A, organs the default model was trained on (marked as seen);
c. the DICOM CT E: an unseen patient and scanner (liver seen as an organ, heart and spine not);
d. the MR C: an unseen modality (TotalSegmentator ``total_mr`` labels).

It prints a markdown table (dataset, organ, seen in training, Dice@1/@3/@5 of ours and grow-cut), on how
many structures ours is above grow-cut, the model alone's mean Dice, the Spearman rank correlation between
our confidence and the true Dice over every (organ, click) entry, and the mean latency per click of both
methods. Which organs count as seen follows the default model's training set
(of this table's organs: liver, spleen, stomach, aorta, inferior vena cava and right kidney of A); for
another ``--model`` the column is only a label.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLICKS = (1, 3, 5)
SEED = 0
TRAINED_ORGANS = {"liver", "spleen", "stomach", "aorta", "inferior_vena_cava", "kidney_right"}
"""Organs of this table the bundled default model was trained on (all on the sample CT A; the full list is
``Resources/Models/recipe/organs-A_ct_full-all.txt``)."""


@dataclass(frozen=True)
class Dataset:
    key: str
    title: str
    image: str  # relative to the sample data folder
    label: str
    organs: dict[str, int]
    seen_image: bool  # the default model was trained on this image

    def seen(self, organ: str) -> str:
        if organ not in TRAINED_ORGANS:
            return "no"
        return "yes" if self.seen_image else "organ only"


DATASETS = (
    Dataset(
        "a",
        "A CT (held-out structures)",
        "A_ts_ct/A_ct_full_image.nii.gz",
        "A_ts_ct/A_ct_full_seg_total_fast.nii.gz",
        {
            "kidney_left": 3,
            "gallbladder": 4,
            "pancreas": 7,
            "vertebrae_L3": 29,
            "iliopsoas_left": 88,
            "femur_left": 75,
        },
        True,
    ),
    Dataset(
        "b",
        "A CT (trained-on organs)",
        "A_ts_ct/A_ct_full_image.nii.gz",
        "A_ts_ct/A_ct_full_seg_total_fast.nii.gz",
        {"liver": 5, "spleen": 1, "stomach": 6, "aorta": 52, "inferior_vena_cava": 63},
        True,
    ),
    Dataset(
        "c",
        "E CT DICOM (unseen patient, scanner)",
        "E_dcmqi_ct3slice/E_ct_dicom",
        "E_dcmqi_ct3slice/E_seg_combined.nii.gz",
        {"liver": 1, "heart": 3, "spine": 2},
        False,
    ),
    Dataset(
        "d",
        "C MR (unseen modality)",
        "C_ts_mr/C_mr_image.nii.gz",
        "C_ts_mr/C_mr_seg_total_mr.nii.gz",
        {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6},
        False,
    ),
)


METHODS = ("pesf", "model", "growcut")
"""``pesf`` is the session as users get it; ``model`` the same model without its refinement by the
image (``pesf evaluate --no-refine``); ``growcut`` Slicer's Grow from seeds."""


def run_evaluate(
    dataset: Dataset, method: str, model: str, threads: int | None, folder: Path, seed: int = SEED
) -> dict:
    """``pesf evaluate`` on one dataset with one of :data:`METHODS` and one seed of the simulated user;
    returns its JSON report."""
    from pesf.cli import main
    from pesf.resources import sample_data_dir

    root = sample_data_dir()
    out = folder / f"{dataset.key}-{method}-{seed}.json"
    organs = ",".join(f"{n}={v}" for n, v in dataset.organs.items())
    argv = ["--threads", str(threads)] if threads else []
    argv += [
        "evaluate",
        str(root / dataset.image),
        str(root / dataset.label),
        "--organs",
        organs,
        "--clicks",
        str(max(CLICKS)),
        "--seed",
        str(seed),
        "--method",
        "growcut" if method == "growcut" else "pesf",
        "--out",
        str(out),
    ]
    if method != "growcut":
        argv += ["--model", model]
    if method == "model":
        argv.append("--no-refine")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(argv)
    if status != 0:
        raise SystemExit(f"pesf {' '.join(argv)} failed with status {status}")
    return json.loads(out.read_text(encoding="utf-8"))


def _dice_at(organ: dict[str, Any], click: int) -> float:
    return float(organ["dice"][click - 1])


def build_table(reports: dict[tuple, dict]) -> dict[str, Any]:
    """Rows, the confidence/Dice rank correlation and latencies from the reports by (dataset, method) or
    (dataset, method, seed); a row's Dice is the mean over the seeds."""
    from scipy.stats import spearmanr

    by_run: dict[tuple[str, str], list[dict]] = {}
    for key, report in reports.items():
        by_run.setdefault((key[0], key[1]), []).append(report)
    rows = []
    confidences, dices = [], []
    latency: dict[str, list[float]] = {"pesf": [], "growcut": []}

    def mean_dice(runs: list[dict], name: str) -> list[float]:
        return [round(float(np.mean([_dice_at(r["organs"][name], c) for r in runs])), 4) for c in CLICKS]

    for dataset in DATASETS:
        if (dataset.key, "pesf") not in by_run:
            continue
        ours, theirs = by_run[(dataset.key, "pesf")], by_run[(dataset.key, "growcut")]
        alone = by_run.get((dataset.key, "model"))
        for name in dataset.organs:
            row = {
                "dataset": dataset.title,
                "organ": name,
                "seen": dataset.seen(name),
                "ours": mean_dice(ours, name),
                "growcut": mean_dice(theirs, name),
            }
            if alone is not None:
                row["model"] = mean_dice(alone, name)
            rows.append(row)
            for o, g in zip(ours, theirs, strict=True):
                o, g = o["organs"][name], g["organs"][name]
                made = len(o["clicks"])
                for conf, d in zip(o["confidence"][:made], o["dice"][:made], strict=True):
                    if conf is not None:
                        confidences.append(float(conf))
                        dices.append(float(d))
                latency["pesf"] += o["latency_s"][:made]
                latency["growcut"] += g["latency_s"][: len(g["clicks"])]
    rho, p = (math.nan, math.nan)
    if len(confidences) >= 3 and np.ptp(confidences) > 0 and np.ptp(dices) > 0:
        result = spearmanr(confidences, dices)
        rho, p = float(result.statistic), float(result.pvalue)
    return {
        "rows": rows,
        "spearman": {"rho": None if math.isnan(rho) else rho, "p": None if math.isnan(p) else p},
        "confidence_mae": float(np.mean(np.abs(np.subtract(confidences, dices)))) if confidences else None,
        "dice_mae_constant": float(np.mean(np.abs(np.subtract(dices, np.mean(dices))))) if dices else None,
        "entries": len(confidences),
        "latency_s": {k: float(np.mean(v)) if v else None for k, v in latency.items()},
    }


def _model_line(models: dict[str, dict[str, Any]]) -> str:
    """Which model segmented which datasets (the bundled default uses its MR weights on MR)."""
    by_source: dict[str, list[str]] = {}
    for title, model in models.items():
        key = f"{model.get('source')} ({model.get('name')}, trained: {model.get('trained')})"
        titles = by_source.setdefault(key, [])
        if title.split(" (")[0] not in titles:
            titles.append(title.split(" (")[0])
    if len(by_source) == 1:
        return f"Model: {next(iter(by_source))}"
    return "Models: " + "; ".join(f"{key} on {', '.join(titles)}" for key, titles in by_source.items())


def to_markdown(
    table: dict[str, Any], models: dict[str, dict[str, Any]], seeds: tuple[int, ...] | list[int] = (SEED,)
) -> str:
    """The table as markdown, with the correlation and latency lines under it; ``models``: each dataset's
    model (its report's ``model``) by dataset title; ``seeds``: the click seeds each Dice is the mean over."""
    head = ["dataset", "organ", "seen in training"]
    head += [f"ours Dice@{c}" for c in CLICKS] + [f"growcut Dice@{c}" for c in CLICKS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 2 * len(CLICKS)) + "|"]
    for r in table["rows"]:
        cells = [r["dataset"], r["organ"].replace("_", " "), r["seen"]]
        cells += [f"{d:.3f}" for d in r["ours"]] + [f"{d:.3f}" for d in r["growcut"]]
        lines.append("| " + " | ".join(cells) + " |")
    if table["rows"]:
        ours = np.mean([r["ours"] for r in table["rows"]], axis=0)
        theirs = np.mean([r["growcut"] for r in table["rows"]], axis=0)
        cells = ["**mean**", "", ""] + [f"**{d:.3f}**" for d in ours] + [f"**{d:.3f}**" for d in theirs]
        lines.append("| " + " | ".join(cells) + " |")
        rows = table["rows"]
        above = [sum(r["ours"][i] > r["growcut"][i] for r in rows) for i in range(len(CLICKS))]
        lines += [
            "",
            "Ours above grow-cut after "
            + ", ".join(f"{c} click(s): {n} of {len(rows)}" for c, n in zip(CLICKS, above, strict=True))
            + ".",
        ]
        if all("model" in r for r in rows):
            alone = np.mean([r["model"] for r in rows], axis=0)
            lines.append(
                "The model alone (without its refinement by the image, `pesf evaluate --no-refine`): "
                + " / ".join(f"{d:.3f}" for d in alone)
                + f" mean Dice after {' / '.join(str(c) for c in CLICKS)} clicks."
            )
    rho, p = table["spearman"]["rho"], table["spearman"]["p"]
    lat = table["latency_s"]
    lines += [
        "",
        _model_line(models)
        + (
            f"; clicks simulated with seed {seeds[0]}."
            if len(seeds) == 1
            else f"; each Dice the mean over {len(seeds)} simulated users (click seeds {seeds[0]}-{seeds[-1]})."
        ),
        "Confidence vs true Dice, Spearman rank correlation over "
        f"{table['entries']} (organ, click) entries: "
        + ("n/a (constant values)" if rho is None else f"rho = {rho:.3f} (p = {p:.2g})")
        + (
            ""
            if table.get("confidence_mae") is None
            else f"; mean absolute error {table['confidence_mae']:.3f} (the entries' own mean Dice as a "
            f"constant guess: {table['dice_mae_constant']:.3f})"
        )
        + ".",
        "Mean latency per click: ours "
        + ("-" if lat["pesf"] is None else f"{lat['pesf']:.3f} s")
        + " / growcut "
        + ("-" if lat["growcut"] is None else f"{lat['growcut']:.3f} s")
        + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model name or checkpoint (default: %(default)s)")
    parser.add_argument("--out", metavar="JSON", help="write the table and every evaluate report as JSON")
    parser.add_argument("--markdown", metavar="MD", help="write the markdown table to this file")
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=[d.key for d in DATASETS],
        default=[d.key for d in DATASETS],
        help="datasets to run (default: all)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="K",
        help="simulated users (click seeds 0..K-1); each row is the mean over them (default: 1, seed 0)",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    seeds = list(range(args.seeds))

    from pesf.io import write_json_atomic, write_text_atomic

    started = time.perf_counter()
    reports: dict[tuple[str, str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="pesf-eval-table-") as tmp:
        for dataset in (d for d in DATASETS if d.key in args.datasets):
            for method in METHODS:
                t0 = time.perf_counter()
                for seed in seeds:
                    reports[(dataset.key, method, seed)] = run_evaluate(
                        dataset, method, args.model, args.threads, Path(tmp), seed
                    )
                print(
                    f"{dataset.title}: {method} done in {time.perf_counter() - t0:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    table = build_table(reports)
    titles = {d.key: d.title for d in DATASETS}
    models = {titles[k]: r["model"] for (k, m, _), r in reports.items() if m == "pesf" and r.get("model")}
    markdown = to_markdown(table, models, seeds)
    print(markdown)
    if args.markdown:
        write_text_atomic(args.markdown, markdown + "\n")
    if args.out:
        document = {
            **table,
            "models": models,
            "clicks": list(CLICKS),
            "seeds": seeds,
            "seconds": round(time.perf_counter() - started, 1),
            "reports": {f"{k}-{m}-{seed}": r for (k, m, seed), r in reports.items()},
        }
        write_json_atomic(args.out, document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
