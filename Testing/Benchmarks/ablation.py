"""Ablation of PESF's training parts: the same starting model, the same cases, each part switched off in turn.

Run::

    python Testing/Benchmarks/ablation.py [--base MODEL] [--steps N] [--clicks 5] [--workspace DIR]
        [--out ablation.json] [--threads T] [--variants full,no-pseudo,...] [--seeds 0,1,2]

Variants (every trained variant starts from the same checkpoint, trains on copies of the same case store with
the same steps, seed and settings, and differs from ``full`` in one setting only):

* ``full``: pseudo-labels + confidence filtering + curriculum (easy to hard) + Gaussian perturbation.
* ``no-pseudo``: accepted labels only (``use_pseudo=false``).
* ``no-filtering``: every pseudo-label kept, however low its confidence (``use_filtering=false``).
* ``no-curriculum``: uniform sampling (``curriculum=false``).
* ``no-perturbation``: strict easy-first curriculum (``perturbation_sigma=0``).
* ``baseline``: no training at all, the starting model as is ("plain SAM-Med3D" when ``--base`` is an
  official SAM-Med3D checkpoint).

The setup, built from the bundled sample data (``Resources/SampleData``) in ``WORKSPACE/setup``:

* case ``A`` (the whole sample CT, ``A_ct_full``): a few organs of its TotalSegmentator labels as *accepted*
  labels (:data:`ACCEPTED`); other organs (:data:`PSEUDO`) pseudo-labelled by the starting model itself through
  :func:`pesf.pseudolabel.pseudo_label_case`, prompted from the reference labels, so their masks and
  confidences are the model's (predicted Dice of its confidence module, else stability under perturbed
  clicks); and degraded copies of reference labels (:data:`DEGRADED`; ``--degraded none`` leaves them out):
  shifted diagonally in i and j and dilated by one voxel, the shift growing until the Dice with the reference
  is at most 0.35, stored as pseudo-labels whose confidence is that Dice, i.e. what an ideal confidence module
  would say. These are the known-bad pseudo-labels that filtering must drop; a weak starting model's own bad
  pseudo-labels may well come with a high confidence and pass the filter (the JSON records each pseudo-label's
  confidence *and* its real Dice).
* held back, never in the store: further structures of A (:data:`HELD_OUT`) and the DICOM CT ``E`` (another
  scanner and patient) with its liver, spine and heart (:data:`EXTERNAL`).

After training, every variant is scored with :func:`pesf.eval.evaluate_organs` (simulated clicks, the same
seed for every variant) on the held-back structures; the table gives the mean Dice after 1, 3 and 5 clicks,
its difference to ``full`` and to ``baseline`` and the training time. Each variant runs in a child process of
its own (memory and thread settings isolated; ``--in-process`` to skip that). ``--seeds 0,1,2`` repeats the
whole comparison with other seeds (training sampling, augmentation and evaluation clicks) and reports the mean
and spread, which is how to tell an effect from noise. The JSON (``--out``) holds the settings, the setup
(every pseudo-label's confidence and real Dice), each run's training plan (kept and dropped samples, read from
the model version's ``card.json``), the samples drawn per step (from ``train.log``), the loss curve and the
per-structure, per-click Dice.

With the default random ``tiny`` model and a few dozen steps the differences are noise; the harness is meant
for a real starting model (``--base sam_med3d_turbo.pth``) and enough steps, typically on a GPU
(``--device cuda``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ACCEPTED",
    "DEGRADED",
    "EXTERNAL",
    "HELD_OUT",
    "PSEUDO",
    "VARIANTS",
    "Setup",
    "build_setup",
    "format_table",
    "prepare_base",
    "run_ablation",
    "run_variant",
    "summarize",
    "variant_settings",
]

# TotalSegmentator "total" values of the sample CT A (A_ct_full_seg_total_fast), see
# Resources/SampleData/totalsegmentator_total_labels.json.
ACCEPTED = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3}
PSEUDO = {
    "stomach": 6,
    "gallbladder": 4,
    "pancreas": 7,
    "inferior_vena_cava": 63,
    "hip_left": 77,
    "autochthon_left": 86,
}
DEGRADED = {"femur_left": 75, "iliopsoas_left": 88}
HELD_OUT = {"urinary_bladder": 21, "aorta": 52, "vertebrae_L3": 29, "duodenum": 19}
# The DICOM CT E and its combined label map (E_labels.json).
EXTERNAL = {"liver": 1, "spine": 2, "heart": 3}

VARIANTS: dict[str, dict[str, Any] | None] = {
    "full": {},
    "no-pseudo": {"use_pseudo": False},
    "no-filtering": {"use_filtering": False},
    "no-curriculum": {"curriculum": False},
    "no-perturbation": {"perturbation_sigma": 0.0},
    "baseline": None,  # no training
}
DESCRIPTIONS = {
    "full": "pseudo-labels + filtering + curriculum + perturbation",
    "no-pseudo": "accepted labels only",
    "no-filtering": "all pseudo-labels kept",
    "no-curriculum": "uniform sampling",
    "no-perturbation": "curriculum with sigma=0",
    "baseline": "no training: the starting model as is",
}
DEGRADED_MAX_DICE = 0.35
TABLE_CLICKS = (1, 3, 5)
MARKER = "pesf-ablation-workspace.json"
_STEP_LINE = re.compile(r"step (\d+)/(\d+) loss .*\[([^\]]*)\]\s*$")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _say(message: str) -> None:
    print(message, flush=True)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def _sample_paths() -> dict[str, Path]:
    from pesf.resources import sample_data_dir

    root = sample_data_dir()
    return {
        "A_image": root / "A_ts_ct" / "A_ct_full_image.nii.gz",
        "A_label": root / "A_ts_ct" / "A_ct_full_seg_total_fast.nii.gz",
        "E_image": root / "E_dcmqi_ct3slice" / "E_ct_dicom",
        "E_label": root / "E_dcmqi_ct3slice" / "E_seg_combined.nii.gz",
    }


# ---------------------------------------------------------------------------------------------- setup
class Setup:
    """Which organs of the sample data play which role (defaults: the module's constants).

    Attributes:
        accepted: organs of A stored as accepted labels.
        pseudo: organs of A pseudo-labelled by the starting model.
        degraded: organs of A stored as degraded, low-confidence pseudo-labels.
        held_out: organs of A never stored (evaluated).
        external: organs of the DICOM CT E (evaluated; E is never stored).
    """

    def __init__(
        self,
        accepted: dict[str, int] | None = None,
        pseudo: dict[str, int] | None = None,
        degraded: dict[str, int] | None = None,
        held_out: dict[str, int] | None = None,
        external: dict[str, int] | None = None,
    ) -> None:
        self.accepted = dict(ACCEPTED if accepted is None else accepted)
        self.pseudo = dict(PSEUDO if pseudo is None else pseudo)
        self.degraded = dict(DEGRADED if degraded is None else degraded)
        self.held_out = dict(HELD_OUT if held_out is None else held_out)
        self.external = dict(EXTERNAL if external is None else external)
        in_a = [self.accepted, self.pseudo, self.degraded, self.held_out]
        names = [n for group in in_a for n in group]
        values = [v for group in in_a for v in group.values()]
        if len(set(names)) != len(names) or len(set(values)) != len(values):
            raise ValueError("an organ of A appears in two roles; give each organ one role")
        if not self.accepted:
            raise ValueError("give at least one accepted organ")
        if not self.held_out and not self.external:
            raise ValueError("give at least one held-back structure to evaluate")

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {
            "accepted": self.accepted,
            "pseudo": self.pseudo,
            "degraded": self.degraded,
            "held_out": self.held_out,
            "external": self.external,
        }


def prepare_base(work: Path, base: str | None) -> str:
    """The starting model as a reference the trainer and :func:`pesf.load_model` accept.

    ``None`` writes a ``tiny`` model with seeded random weights to ``work/base.pt``; a path is made absolute;
    a bundled model name (``default``...) is returned as is.
    """
    from pesf.models import build_model, save_checkpoint

    if base is None:
        path = work / "base.pt"
        save_checkpoint(build_model("tiny", seed=0), path, metadata={"source": "ablation: tiny, seed 0"})
        return str(path.resolve())
    candidate = Path(base).expanduser()
    return str(candidate.resolve()) if candidate.is_file() else base


def _degrade(mask: np.ndarray, max_dice: float = DEGRADED_MAX_DICE) -> tuple[np.ndarray, int, float]:
    """A shifted (diagonally in i and j, 1..15 voxels, until its Dice is at most ``max_dice``) and 1-voxel
    dilated copy of ``mask``; returns ``(copy, shift, dice)``."""
    from scipy import ndimage

    out, dice_value = mask, 1.0
    for shift in range(1, 16):
        moved = np.zeros_like(mask)
        moved[shift:, shift:] = mask[:-shift, :-shift]
        out = ndimage.binary_dilation(moved, iterations=1)
        dice_value = _dice(out, mask)
        if dice_value <= max_dice:
            break
    return out, shift, dice_value


def build_setup(
    store_dir: Path, base_ref: str, setup: Setup, *, threshold: float | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Make the training case store (case ``A``) and describe it.

    Returns:
        ``{"organs": setup roles, "threshold", "pseudo_label_report": pesf's report, "pseudo_labels":
        {name: {"kind": "model"|"degraded", "confidence", "dice_vs_reference", "voxels", "below_threshold"}},
        "eval_groups": [...]}``.
    """
    from pesf.io import read_labelmap, read_volume
    from pesf.models import load_model
    from pesf.pseudolabel import default_threshold, pseudo_label_case
    from pesf.train.store import CaseStore, OrganRecord

    paths = _sample_paths()
    image = read_volume(paths["A_image"])
    reference = read_labelmap(paths["A_label"], like=image)[0]
    ref = reference.array
    present = set(np.unique(ref).tolist())
    roles = setup.to_dict()
    absent = [
        f"{n}={v}"
        for role in ("accepted", "pseudo", "degraded", "held_out")
        for n, v in roles[role].items()
        if v not in present
    ]
    if setup.external:
        e_values = set(np.unique(read_labelmap(paths["E_label"])[0].array).tolist())
        absent += [f"E {n}={v}" for n, v in setup.external.items() if v not in e_values]
    if absent:
        raise ValueError(f"label value(s) absent from the sample label maps: {', '.join(absent)}")
    store = CaseStore(store_dir, create=True)
    accepted = np.where(np.isin(ref, list(setup.accepted.values())), ref, 0).astype(ref.dtype)
    records = [
        OrganRecord(n, v, "accepted", source="import", author="TotalSegmentator")
        for n, v in setup.accepted.items()
    ]
    store.add_case(image, reference.with_array(accepted), records, case_id="A")

    model = load_model(base_ref, device=device)
    cut = default_threshold(model) if threshold is None else float(threshold)
    described: dict[str, dict[str, Any]] = {}
    if setup.degraded:
        masks, recs = {}, {}
        for name, value in setup.degraded.items():
            mask, shift, dice_value = _degrade(ref == value)
            masks[name] = mask
            recs[name] = OrganRecord(
                name,
                value,
                "pseudo",
                confidence=round(dice_value, 4),
                source="automatic",
                author="ablation: degraded reference",
            )
            described[name] = {"kind": "degraded", "shift_voxels": [shift, shift, 0], "dilation_voxels": 1}
        store.set_organ_masks("A", masks, recs)
    report: dict[str, Any] = {}
    if setup.pseudo:
        report = pseudo_label_case(
            store,
            "A",
            dict(setup.pseudo),
            model,
            source="label",
            source_label=reference,
            source_model_version="TotalSegmentator (sample labels) as prompt source",
            confidence_threshold=cut,
            strict=False,
            image=image,
        )
        for name in setup.pseudo:
            entry = report["organs"].get(name, {})
            described[name] = {"kind": "model", "status": entry.get("status"), "reason": entry.get("reason")}
    record = store.get("A")
    stored = store.load_label("A").array
    for name, info in described.items():
        organ = record.organs.get(name)
        value = (setup.pseudo | setup.degraded)[name]
        mask = stored == value
        info.update(
            value=value,
            confidence=None if organ is None else organ.confidence,
            confidence_source=(report.get("organs", {}).get(name) or {}).get("confidence_source"),
            voxels=int(mask.sum()),
            reference_voxels=int((ref == value).sum()),
            dice_vs_reference=round(_dice(mask, ref == value), 4),
            below_threshold=None if organ is None else bool(organ.confidence < cut),
        )
    groups = [
        {
            "name": "A-held-out",
            "case": "A",
            "image": str(paths["A_image"]),
            "label": str(paths["A_label"]),
            "organs": setup.held_out,
            "held_back": True,
        },
        {
            "name": "E",
            "case": "E",
            "image": str(paths["E_image"]),
            "label": str(paths["E_label"]),
            "organs": setup.external,
            "held_back": True,
        },
        {
            "name": "A-seen",
            "case": "A",
            "image": str(paths["A_image"]),
            "label": str(paths["A_label"]),
            "organs": setup.accepted,
            "held_back": False,
        },
    ]
    return {
        "organs": setup.to_dict(),
        "threshold": cut,
        "base_model": base_ref,
        "pseudo_label_report": report,
        "pseudo_labels": described,
        "eval_groups": [g for g in groups if g["organs"]],
    }


# ---------------------------------------------------------------------------------------------- variants
def variant_settings(variant: str, common: dict[str, Any]) -> dict[str, Any] | None:
    """The :class:`~pesf.train.config.TrainConfig` settings of a variant (``None``: not trained)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    changes = VARIANTS[variant]
    return None if changes is None else {**common, **changes}


def common_settings(
    base_ref: str,
    steps: int,
    seed: int,
    *,
    device: str = "cpu",
    train_clicks: int | None = None,
    trainable: str | None = None,
    lr: float | None = None,
    sigma: float | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Settings every trained variant shares: the defaults of :class:`~pesf.train.config.TrainConfig` except
    what a short comparison needs (no validation split, no intermediate checkpoints, a warm-up of a tenth)."""
    from pesf.train.config import TrainConfig

    settings: dict[str, Any] = {
        "base_model": base_ref,
        "steps": int(steps),
        "warmup_steps": max(1, int(steps) // 10),
        "val_fraction": 0.0,
        "val_every": 0,
        "save_every": 0,
        "version_every": 0,
        "seed": int(seed),
        "device": device,
    }
    optional = {
        "click_iterations": train_clicks,
        "trainable": trainable,
        "lr": lr,
        "perturbation_sigma": sigma,
        "confidence_threshold": threshold,
    }
    settings.update({k: v for k, v in optional.items() if v is not None})
    TrainConfig.from_dict(settings)  # fail early on bad values
    return settings


def _drawn_samples(log: Path) -> list[str]:
    """The sample trained on at each step, from the trainer's ``train.log`` (one line per step up to 200)."""
    drawn: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            match = _STEP_LINE.search(line)
            if match:
                drawn[int(match.group(1))] = match.group(3)
    return [drawn[s] for s in sorted(drawn)]


def _plan_from_card(card: dict[str, Any]) -> dict[str, Any]:
    data = card.get("data", {})
    return {
        "confidence_threshold": data.get("confidence_threshold"),
        "counts": data.get("counts"),
        "train": {f"{i['case_id']}/{i['organ']}": i for i in data.get("train", [])},
        "dropped": {f"{i['case_id']}/{i['organ']}": i.get("reason", "") for i in data.get("dropped", [])},
    }


def _curriculum_trace(plan: dict[str, Any], drawn: list[str]) -> dict[str, Any]:
    """Counts of the samples drawn and the mean difficulty drawn in each half of the run."""
    difficulty = {k: float(v.get("difficulty", 0.0)) for k, v in plan["train"].items()}
    values = [difficulty[k] for k in drawn if k in difficulty]
    half = len(values) // 2
    mean = lambda xs: round(float(np.mean(xs)), 4) if xs else None  # noqa: E731
    return {
        "counts": dict(Counter(drawn)),
        "mean_difficulty_first_half": mean(values[:half]),
        "mean_difficulty_second_half": mean(values[half:]),
    }


def run_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one variant (unless it is ``baseline``) and evaluate it on the held-back structures.

    Args:
        spec: ``{"variant", "seed", "workspace" (a copy of the setup store, for trained variants),
            "settings" (TrainConfig dict or None), "base_model", "eval_groups", "clicks", "threads",
            "device"}``.

    Returns:
        ``{"variant", "seed", "model", "train_s", "plan", "drawn", "curriculum", "loss", "eval_s",
        "groups": {group: evaluate_organs report}}``.
    """
    from pesf.eval import evaluate_organs
    from pesf.interactive import InteractiveSession
    from pesf.io import read_labelmap, read_volume
    from pesf.models import load_model
    from pesf.train.config import TrainConfig
    from pesf.train.worker import latest_version, run_training

    _set_threads(spec.get("threads", 1))
    result: dict[str, Any] = {"variant": spec["variant"], "seed": spec["seed"], "train_s": 0.0}
    model_ref = spec["base_model"]
    if spec.get("settings") is not None:
        ws = Path(spec["workspace"])
        t0 = time.perf_counter()
        outcome = run_training(ws, TrainConfig.from_dict(spec["settings"]), fresh=True, progress=False)
        result["train_s"] = round(time.perf_counter() - t0, 2)
        result["outcome"] = outcome.message
        model_path = latest_version(ws)
        if model_path is None:
            raise RuntimeError(f"variant {spec['variant']}: training wrote no model version in {ws}")
        model_ref = str(model_path)
        card = json.loads((model_path.parent / "card.json").read_text(encoding="utf-8"))
        result["card"] = str(model_path.parent / "card.json")
        result["settings"] = card.get("settings")
        result["plan"] = _plan_from_card(card)
        result["drawn"] = _drawn_samples(ws / "train.log")
        result["curriculum"] = _curriculum_trace(result["plan"], result["drawn"])
        with contextlib.suppress(OSError, ValueError):
            curves = json.loads((ws / "curves.json").read_text(encoding="utf-8"))
            result["loss"] = curves.get("loss")
    result["model"] = model_ref
    model = load_model(model_ref, device=spec.get("device", "cpu"))
    t0 = time.perf_counter()
    result["groups"] = {}
    for group in spec["eval_groups"]:
        image = read_volume(group["image"])
        label = read_labelmap(group["label"], like=image)[0]
        result["groups"][group["name"]] = evaluate_organs(
            lambda image=image: InteractiveSession(model, image),
            label.array,
            group["organs"],
            spacing=image.spacing,
            n_clicks=int(spec["clicks"]),
            seed=int(spec["seed"]),
        )
    result["eval_s"] = round(time.perf_counter() - t0, 2)
    return result


def _run_isolated(spec: dict[str, Any], folder: Path, label: str) -> dict[str, Any]:
    """:func:`run_variant` in a child process (this script with ``--child``), printing its step progress."""
    from pesf.train.status import read_status

    folder.mkdir(parents=True, exist_ok=True)
    spec_path, out_path, log_path = folder / "spec.json", folder / "result.json", folder / "child.log"
    spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    out_path.unlink(missing_ok=True)
    threads = str(max(1, int(spec.get("threads", 1))))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)  # never a torchrun rank
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path), str(out_path)]
    last = ""
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                time.sleep(2.0)
                status = read_status(spec["workspace"]) if spec.get("workspace") else None
                if status and status.get("state") in ("running", "starting"):
                    line = (
                        f"  {label}: training step {status.get('step', 0)}/{status.get('total_steps', '?')}"
                    )
                    if line != last and (status.get("step", 0) % 10 == 0 or not last):
                        _say(line)
                        last = line
        except BaseException:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.poll() is None:
                proc.kill()
            raise
    if proc.returncode != 0 or not out_path.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{label} failed (exit code {proc.returncode}); end of {log_path}:\n{tail}")
    return json.loads(out_path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- results
def _table_clicks(clicks: int) -> list[int]:
    wanted = [c for c in TABLE_CLICKS if c <= clicks]
    return wanted + ([clicks] if clicks not in wanted else [])


def held_back_dice(result: dict[str, Any], groups: list[dict[str, Any]], held_back: bool = True) -> dict:
    """Per-structure Dice lists (``"group/organ"``) of the held-back (or the seen) structures, and their
    mean per click."""
    per: dict[str, list[float]] = {}
    for group in groups:
        if bool(group.get("held_back", True)) != held_back:
            continue
        report = result["groups"].get(group["name"])
        if report is None:
            continue
        for organ, entry in report["organs"].items():
            per[f"{group['name']}/{organ}"] = [float(d) for d in entry["dice"]]
    mean = np.mean(list(per.values()), axis=0).round(6).tolist() if per else []
    return {"per_structure": per, "mean": mean}


def summarize(
    runs: dict[str, dict[str, dict[str, Any]]], groups: list[dict[str, Any]], clicks: int
) -> dict[str, dict[str, Any]]:
    """Per variant: held-back Dice per click (mean over seeds, and its spread), paired deltas to ``full`` and
    ``baseline`` (per seed, then averaged), training time, plan counts.

    Args:
        runs: ``{variant: {seed (str): run_variant result}}``.
        groups: the evaluation groups.
        clicks: clicks per structure.
    """
    summary: dict[str, dict[str, Any]] = {}
    means = {
        v: {s: np.asarray(held_back_dice(r, groups)["mean"]) for s, r in by_seed.items()}
        for v, by_seed in runs.items()
    }
    for variant, by_seed in runs.items():
        seeds = sorted(by_seed, key=int)
        stack = np.stack([means[variant][s] for s in seeds])
        entry: dict[str, Any] = {
            "description": DESCRIPTIONS.get(variant, ""),
            "seeds": [int(s) for s in seeds],
            "dice": stack.mean(axis=0).round(6).tolist(),
            "dice_std": (stack.std(axis=0, ddof=1).round(6).tolist() if len(seeds) > 1 else None),
            "train_s": round(float(np.mean([by_seed[s]["train_s"] for s in seeds])), 2),
            "eval_s": round(float(np.mean([by_seed[s].get("eval_s", 0.0) for s in seeds])), 2),
        }
        for ref in ("full", "baseline"):
            paired = [s for s in seeds if s in means.get(ref, {})]
            entry[f"delta_vs_{ref}"] = (
                np.mean([means[variant][s] - means[ref][s] for s in paired], axis=0).round(6).tolist()
                if paired and ref in runs
                else None
            )
        seen = [held_back_dice(by_seed[s], groups, held_back=False)["mean"] for s in seeds]
        entry["seen_dice"] = np.mean(seen, axis=0).round(6).tolist() if all(seen) and seen else None
        traces = [by_seed[s]["curriculum"] for s in seeds if by_seed[s].get("curriculum")]
        halves = [(t["mean_difficulty_first_half"], t["mean_difficulty_second_half"]) for t in traces]
        halves = [h for h in halves if None not in h]
        entry["drawn_difficulty_halves"] = np.mean(halves, axis=0).round(4).tolist() if halves else None
        plan = by_seed[seeds[0]].get("plan")
        if plan:
            entry["plan_counts"] = plan["counts"]
            entry["dropped"] = sorted(plan["dropped"])
        summary[variant] = entry
    return summary


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def format_table(summary: dict[str, dict[str, Any]], clicks: int) -> str:
    """One row per variant: Dice@1/@3/@5 (mean over held-back structures; ``±`` spread over seeds),
    deltas at the first and last click vs ``full`` and ``baseline``, training time, samples trained/dropped
    and the mean curriculum difficulty of the samples drawn in the first and second half of the run."""
    shown = _table_clicks(clicks)
    last = clicks - 1
    header = [
        "variant",
        *(f"Dice@{c}" for c in shown),
        "Δfull @1/@last",
        "Δbase @1/@last",
        "train s",
        "train/drop",
        "difficulty 1st/2nd",
    ]
    rows = []
    for variant, s in summary.items():
        cells = [variant]
        for c in shown:
            cell = _fmt(s["dice"][c - 1])
            if s.get("dice_std"):
                cell += f"±{s['dice_std'][c - 1]:.3f}"
            cells.append(cell)
        for ref in ("full", "baseline"):
            delta = s.get(f"delta_vs_{ref}")
            cells.append("-" if delta is None else f"{_fmt(delta[0], True)}/{_fmt(delta[last], True)}")
        cells.append(f"{s['train_s']:.0f}" if s["train_s"] else "-")
        counts = s.get("plan_counts")
        cells.append(f"{counts['train']}/{counts['dropped']}" if counts else "-")
        halves = s.get("drawn_difficulty_halves")
        cells.append(f"{halves[0]:.3f}/{halves[1]:.3f}" if halves else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), "-" * len(line(header)), *(line(r) for r in rows)])


def format_structures(
    runs: dict[str, dict[str, dict[str, Any]]], groups: list[dict[str, Any]], clicks: int
) -> str:
    """Dice after the last click per held-back structure (rows) and variant (columns), mean over seeds."""
    variants = list(runs)
    per = {
        v: [held_back_dice(r, groups)["per_structure"] for r in by_seed.values()]
        for v, by_seed in runs.items()
    }
    names = list(per[variants[0]][0]) if variants else []
    header = [f"Dice@{clicks}", *variants]
    rows = [
        [name, *(_fmt(float(np.mean([p[name][clicks - 1] for p in per[v]]))) for v in variants)]
        for name in names
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    )


# ---------------------------------------------------------------------------------------------- the run
def _prepare_workspace(workspace: Path | None) -> tuple[Path, bool]:
    """The working folder (a new temporary one when ``None``) and whether to delete it at the end."""
    if workspace is None:
        return Path(tempfile.mkdtemp(prefix="pesf-ablation-")), True
    work = workspace.expanduser().resolve()
    if work.exists() and any(work.iterdir()) and not (work / MARKER).is_file():
        raise SystemExit(f"{work} is not empty and not an ablation workspace; give an empty or new folder")
    work.mkdir(parents=True, exist_ok=True)
    for name in ("setup", "runs"):
        shutil.rmtree(work / name, ignore_errors=True)
    (work / MARKER).write_text(json.dumps({"created": _now()}), encoding="utf-8")
    return work, False


def run_ablation(
    work: Path,
    *,
    base: str | None = None,
    steps: int = 30,
    clicks: int = 5,
    variants: list[str] | None = None,
    seeds: list[int] | None = None,
    threads: int = 1,
    device: str = "cpu",
    setup: Setup | None = None,
    isolate: bool = True,
    train_clicks: int | None = None,
    trainable: str | None = None,
    lr: float | None = None,
    sigma: float | None = None,
    threshold: float | None = None,
    eval_seen: bool = False,
) -> dict[str, Any]:
    """Build the setup in ``work``, train and evaluate every variant for every seed; return the report.

    The report (JSON-ready) holds ``settings``, ``setup``, ``runs`` (``{variant: {seed: result}}``, see
    :func:`run_variant`), ``summary`` (:func:`summarize`) and ``table``.
    """
    variants = list(variants or VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    seeds = [int(s) for s in (seeds or [0])]
    _set_threads(threads)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    base_ref = prepare_base(work, base)
    _say(f"starting model: {base_ref}")
    _say("setup: case A (accepted + pseudo-labels by the starting model + degraded copies) ...")
    t0 = time.perf_counter()
    described = build_setup(work / "setup", base_ref, setup or Setup(), threshold=threshold, device=device)
    groups = [g for g in described["eval_groups"] if g["held_back"] or eval_seen]
    described["seconds"] = round(time.perf_counter() - t0, 2)
    for name, info in described["pseudo_labels"].items():
        _say(
            f"  pseudo-label {name:<22} {info['kind']:<8} confidence {_fmt(info['confidence'])}  "
            f"Dice vs reference {_fmt(info['dice_vs_reference'])}"
            + ("  (below threshold)" if info.get("below_threshold") else "")
        )
    held = [f"{g['name']}/{o}" for g in groups if g["held_back"] for o in g["organs"]]
    _say(f"  threshold {described['threshold']:.3f}; held-back structures: {', '.join(held)}")

    runs: dict[str, dict[str, dict[str, Any]]] = {v: {} for v in variants}
    total = len(variants) * len(seeds)
    done = 0
    for seed in seeds:
        common = common_settings(
            base_ref,
            steps,
            seed,
            device=device,
            train_clicks=train_clicks,
            trainable=trainable,
            lr=lr,
            sigma=sigma,
            threshold=threshold,
        )
        for variant in variants:
            done += 1
            label = f"[{done}/{total}] {variant} (seed {seed})"
            settings = variant_settings(variant, common)
            folder = work / "runs" / f"{variant}-s{seed}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            ws = None
            if settings is not None:
                ws = folder / "workspace"
                shutil.copytree(work / "setup", ws)
            spec = {
                "variant": variant,
                "seed": seed,
                "workspace": None if ws is None else str(ws),
                "settings": settings,
                "base_model": base_ref,
                "eval_groups": groups,
                "clicks": clicks,
                "threads": threads,
                "device": device,
            }
            what = f"training {steps} steps, then" if settings is not None else "no training,"
            _say(f"{label}: {what} evaluating {len(held)} held-back structures x {clicks} clicks")
            t0 = time.perf_counter()
            result = _run_isolated(spec, folder, label) if isolate else run_variant(spec)
            result["wall_s"] = round(time.perf_counter() - t0, 2)
            runs[variant][str(seed)] = result
            mean = held_back_dice(result, groups)["mean"]
            shown = ", ".join(f"@{c} {mean[c - 1]:.3f}" for c in _table_clicks(clicks))
            plan = result.get("plan")
            extra = ""
            if plan:
                extra = f"; {plan['counts']['train']} samples trained, dropped: {', '.join(plan['dropped']) or 'none'}"
            _say(
                f"  {label}: Dice {shown}; train {result['train_s']:.0f} s, eval {result['eval_s']:.0f} s{extra}"
            )

    summary = summarize(runs, groups, clicks)
    table = format_table(summary, clicks)
    structures = format_structures(runs, groups, clicks)
    notes = [
        "Dice: mean over the held-back structures (never in the training store) after each simulated click;"
        " deltas are paired per seed, then averaged.",
        "train/drop: samples in the training plan and samples dropped (low confidence) from the model card;"
        " difficulty 1st/2nd: mean curriculum difficulty of the samples drawn in each half of the run"
        " (from train.log; easy-first training shows a rise).",
        "train s: wall time of the training alone; it depends on the other load of the machine.",
    ]
    if base is None:
        notes.append(
            "The starting model is a tiny model with random weights: its pseudo-labels are poor whatever their "
            "confidence, and differences between variants after a few dozen steps are noise."
        )
    return {
        "format": "pesf-ablation",
        "version": 1,
        "created": _now(),
        "settings": {
            "base": base,
            "base_model": base_ref,
            "steps": steps,
            "clicks": clicks,
            "variants": variants,
            "seeds": seeds,
            "threads": threads,
            "device": device,
            "isolated": isolate,
            "eval_seen": eval_seen,
            "training": common_settings(
                base_ref,
                steps,
                seeds[0],
                device=device,
                train_clicks=train_clicks,
                trainable=trainable,
                lr=lr,
                sigma=sigma,
                threshold=threshold,
            ),
            "variant_changes": {v: VARIANTS[v] for v in variants},
            "workspace": str(work),
        },
        "setup": described,
        "runs": runs,
        "summary": summary,
        "table": table,
        "structures_table": structures,
        "notes": notes,
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def _organs_text(organs: dict[str, int]) -> str:
    return ",".join(f"{n}={v}" for n, v in organs.items())


def _organs_arg(text: str | None) -> dict[str, int] | None:
    """``None`` (the default organs), ``{}`` for ``none``, else the parsed ``NAME=VALUE,...`` list."""
    from pesf.io import parse_organs_arg

    if text is None:
        return None
    return {} if text.strip().lower() in ("", "none") else parse_organs_arg(text)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base", help="starting model: checkpoint path or bundled name (default: tiny, random)"
    )
    parser.add_argument(
        "--steps", type=int, default=30, help="optimizer steps per trained variant (default 30)"
    )
    parser.add_argument("--clicks", type=int, default=5, help="simulated clicks per structure (default 5)")
    parser.add_argument("--workspace", type=Path, help="working folder, kept (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("ablation.json"), help="the JSON report")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS)
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; >1 gives mean and spread")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--train-clicks", type=int, help="simulated clicks per training sample (default 5)")
    parser.add_argument("--trainable", choices=("all", "decoder"), help="trained parts (default all)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 1e-4)")
    parser.add_argument("--sigma", type=float, help="perturbation sigma of the curriculum (default 0.1)")
    parser.add_argument(
        "--threshold", type=float, help="pseudo-label confidence threshold (default: model's)"
    )
    roles = "organs of the sample CT A as NAME=VALUE,... (TotalSegmentator values) or 'none'"
    parser.add_argument("--accepted", help=f"accepted {roles} (default: {_organs_text(ACCEPTED)})")
    parser.add_argument("--pseudo", help=f"pseudo-labelled {roles} (default: {_organs_text(PSEUDO)})")
    parser.add_argument("--degraded", help=f"degraded-copy {roles} (default: {_organs_text(DEGRADED)})")
    parser.add_argument("--held-out", help=f"held-out {roles} (default: {_organs_text(HELD_OUT)})")
    parser.add_argument(
        "--external", help=f"organs of the DICOM CT E, or 'none' (default: {_organs_text(EXTERNAL)})"
    )
    parser.add_argument("--eval-seen", action="store_true", help="also score the accepted (trained) organs")
    parser.add_argument("--in-process", action="store_true", help="run the variants in this process")
    parser.add_argument("--child", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is None:
        if args.steps < 1 or args.clicks < 1 or args.threads < 1:
            parser.error("--steps, --clicks and --threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from pesf.io import write_json_atomic

    args = _parse_args(argv)
    if args.child is not None:  # a variant in its own process
        spec = json.loads(Path(args.child[0]).read_text(encoding="utf-8"))
        result = run_variant(spec)
        write_json_atomic(args.child[1], result)  # the parent reads it once the child has exited
        return 0
    out = args.out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work, temporary = _prepare_workspace(args.workspace)
    try:
        report = run_ablation(
            work,
            base=args.base,
            steps=args.steps,
            clicks=args.clicks,
            variants=[v.strip() for v in args.variants.split(",") if v.strip()],
            seeds=[int(s) for s in args.seeds.split(",") if s.strip()],
            threads=args.threads,
            device=args.device,
            setup=Setup(
                accepted=_organs_arg(args.accepted),
                pseudo=_organs_arg(args.pseudo),
                degraded=_organs_arg(args.degraded),
                held_out=_organs_arg(args.held_out),
                external=_organs_arg(args.external),
            ),
            isolate=not args.in_process,
            train_clicks=args.train_clicks,
            trainable=args.trainable,
            lr=args.lr,
            sigma=args.sigma,
            threshold=args.threshold,
            eval_seen=args.eval_seen,
        )
        report["command"] = ["ablation.py", *(sys.argv[1:] if argv is None else argv)]
        write_json_atomic(out, report, indent=1)  # an interrupted run never leaves half a report
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    _say("")
    _say(report["table"])
    _say("")
    _say(report["structures_table"])
    for note in report["notes"]:
        _say(f"- {note}")
    _say(f"wrote {out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
