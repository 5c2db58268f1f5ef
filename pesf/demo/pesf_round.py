"""One PESF round on the sample CT, as the demo runs it.

A fresh workspace gets the CT as one case in which some organs are *accepted* (the reference labels, as if a
person had checked them) and one organ is not annotated. The current model pseudo-labels that organ from the
bundled prompt file (one interior click, as a person would place it), the pseudo-label is kept or dropped by
its confidence against the threshold, the model is fine-tuned for a few steps (decoder only, short click
iterations, so it takes seconds on a CPU), and the organ's Dice before and after is measured with the same
clicks: those the simulated user made for the model before fine-tuning, replayed on the fine-tuned model.

With a handful of steps the change is small and may go either way; the round shows the workflow, not a
training result.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pesf.errors import PesfError

__all__ = ["PesfRoundSettings", "run_pesf_round"]

CASE_ID = "A_ct_full"


@dataclass
class PesfRoundSettings:
    """What the round does.

    Attributes:
        organ: the organ left unannotated and pseudo-labelled (kidney_left: the bundled default model was not
            trained on it, so this is PESF's use case: a new organ learned from pseudo-labels).
        accepted: organs given as accepted labels.
        steps: optimizer steps of the fine-tuning.
        click_iterations: simulated clicks per training sample.
        lr: learning rate (constant, no warm-up: there are only a few steps).
        skip_training: stop after pseudo-labelling and filtering.
        seed: training seed.
    """

    organ: str = "kidney_left"
    accepted: tuple[str, ...] = ("liver", "spleen", "kidney_right", "stomach")
    steps: int = 6
    click_iterations: int = 2
    lr: float = 2e-4
    skip_training: bool = False
    seed: int = 0


def _fresh_workspace(path: Path) -> Path:
    """An empty folder at ``path``; a workspace left there by an earlier demo is removed first."""
    if path.exists():
        if not path.is_dir():
            raise PesfError(f"{path} is a file; the demo needs that name for its workspace folder")
        if any(path.iterdir()) and not (path / "workspace.json").is_file():
            raise PesfError(
                f"{path} exists and is not a PESF workspace; move it away or choose another --out"
            )
        trash = path.with_name(f".trash-{path.name}-{secrets.token_hex(4)}")
        os.rename(path, trash)  # gone at once, even if the removal below is interrupted
        shutil.rmtree(trash, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _replay(model: Any, image: Any, organ: str, gt: np.ndarray, clicks: list[list[Any]]) -> list[float]:
    """Dice of ``organ`` after each of ``clicks`` (``[i, j, k, positive]``) on a fresh session of ``model``."""
    from pesf.eval import dice
    from pesf.interactive import InteractiveSession

    session = InteractiveSession(model, image)
    scores = []
    for i, j, k, positive in clicks:
        result = session.add_click(organ, np.array([i, j, k]), bool(positive))
        scores.append(round(dice(gt, result.full_mask()), 4))
    return scores


def _base_model_ref(model_ref: str) -> str:
    path = Path(model_ref).expanduser()
    return str(path.resolve()) if path.is_file() else model_ref


def run_pesf_round(
    workspace: Path,
    *,
    image: Any,
    label: Any,
    organs: dict[str, int],
    model: Any,
    model_ref: str,
    prompts_file: Path,
    before: dict[str, Any],
    settings: PesfRoundSettings,
    callbacks: Any,
) -> dict[str, Any]:
    """Run the round (see the module description) and return its report.

    Args:
        workspace: the folder of the fresh workspace (replaced if an earlier demo left one).
        image: the CT.
        label: its reference label map.
        organs: organ name to reference value (must hold the round's organs).
        model: the current model.
        model_ref: its name or checkpoint path (the fine-tuning's base model).
        prompts_file: the PESF prompt file with a click for ``settings.organ``.
        before: the demo's evaluation report with the current model (its clicks are replayed).
        settings: what the round does.
        callbacks: the demo's :class:`~pesf.demo.run.DemoCallbacks`.

    Returns:
        ``{"organ", "accepted", "workspace", "pseudo_label": {...}, "training": {...} | None,
        "dice_before", "dice_after", "clicks"}``.
    """
    from pesf.eval import dice
    from pesf.pseudolabel import pseudo_label_case
    from pesf.train import CaseStore, OrganRecord

    organ = settings.organ
    missing = [n for n in (organ, *settings.accepted) if n not in organs]
    if missing:
        raise PesfError(f"the PESF round needs organs {', '.join(missing)} among the demo's organs")
    value = organs[organ]
    accepted = {n: organs[n] for n in settings.accepted}
    report: dict[str, Any] = {
        "organ": organ,
        "accepted": list(accepted),
        "workspace": str(workspace),
        "case_id": CASE_ID,
        "pseudo_label": None,
        "training": None,
        "clicks": before["organs"][organ]["clicks"],
        "dice_before": None,
        "dice_after": None,
    }

    _fresh_workspace(workspace)
    store = CaseStore(workspace, create=True)
    case_label = label.with_array(np.where(np.isin(label.array, list(accepted.values())), label.array, 0))
    records = [
        OrganRecord(n, v, "accepted", source="import", author="TotalSegmentator (reference labels)")
        for n, v in accepted.items()
    ]
    store.add_case(image, case_label, records, case_id=CASE_ID)
    callbacks._info(
        f"workspace {workspace}: case {CASE_ID} with {len(accepted)} accepted organs "
        f"({', '.join(accepted)}); {organ} not annotated"
    )

    t0 = time.perf_counter()
    pseudo = pseudo_label_case(
        store,
        CASE_ID,
        {organ: value},
        model,
        source="points",
        prompts_file=prompts_file,
        image=image,
    )
    entry = pseudo["organs"][organ]
    threshold = float(pseudo["threshold"])
    if entry.get("status") != "pseudo":
        raise PesfError(f"pseudo-labelling {organ} failed: {entry.get('reason', 'unknown reason')}")
    stored = store.load_label(CASE_ID).array == value
    kept = not entry["below_threshold"]
    report["pseudo_label"] = {
        "confidence": entry["confidence"],
        "confidence_source": entry.get("confidence_source"),
        "threshold": threshold,
        "kept": kept,
        "kept_count": int(kept),
        "dropped_count": int(not kept),
        "voxels": entry["voxels"],
        "ml": entry["ml"],
        "clicks": entry["clicks"],
        "dice_vs_reference": round(dice(label.array == value, stored), 4),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    callbacks._info(
        f"pseudo-label of {organ}: confidence {entry['confidence']:.3f}, threshold {threshold:.3f} -> "
        f"{'kept (1 kept, 0 dropped)' if kept else 'dropped (0 kept, 1 dropped)'}; "
        f"Dice against the reference {report['pseudo_label']['dice_vs_reference']:.3f}"
    )
    made = len(report["clicks"])
    report["dice_before"] = [round(float(d), 4) for d in before["organs"][organ]["dice"][:made]]
    if settings.skip_training:
        callbacks._info("fine-tuning skipped (--skip-training)")
        return report

    report["training"] = _fine_tune(workspace, model_ref, threshold, settings, callbacks)
    from pesf.models import load_model

    tuned = load_model(report["training"]["model"])
    report["dice_after"] = _replay(tuned, image, organ, label.array == value, report["clicks"])
    callbacks._info(
        f"{organ}: Dice {report['dice_before'][-1]:.3f} before, {report['dice_after'][-1]:.3f} after "
        f"fine-tuning (the same {made} clicks)"
    )
    return report


def _fine_tune(
    workspace: Path, model_ref: str, threshold: float, settings: PesfRoundSettings, callbacks: Any
) -> dict[str, Any]:
    from pesf.train import TrainConfig, latest_version, read_status, run_training

    config = TrainConfig(
        base_model=_base_model_ref(model_ref),
        steps=settings.steps,
        lr=settings.lr,
        warmup_steps=0,
        schedule="constant",
        trainable="decoder",
        click_iterations=settings.click_iterations,
        val_fraction=0.0,
        val_every=0,
        save_every=settings.steps,
        version_every=0,
        confidence_threshold=threshold,
        cache_cases=1,
        device="cpu",
        seed=settings.seed,
    )
    callbacks._info(
        f"fine-tuning {settings.steps} steps (decoder only, {settings.click_iterations} click iterations, "
        f"lr {settings.lr:g}) with pesf.train.run_training"
    )
    t0 = time.perf_counter()
    outcome = run_training(workspace, config, progress=callbacks.train_progress)
    seconds = time.perf_counter() - t0
    version = latest_version(workspace)
    if version is None:
        raise PesfError(f"the fine-tuning wrote no model version into {workspace / 'models'}")
    status = read_status(workspace) or {}
    loss = status.get("loss")
    callbacks._info(
        f"fine-tuning {outcome.state} after {outcome.step} steps in {seconds:.0f} s"
        + (f", last loss {loss:.4f}" if isinstance(loss, int | float) else "")
        + f"; model version {version.parent.name}"
    )
    return {
        "config": config.to_dict(),
        "state": outcome.state,
        "steps": outcome.step,
        "seconds": round(seconds, 2),
        "model": str(version),
        "status": {k: status.get(k) for k in ("state", "step", "loss", "message") if k in status},
    }
