"""Pseudo-labelling of cases: the promptable model segments organs nobody annotated, prompted automatically.

Each organ of a case gets clicks from one of three sources (see :mod:`pesf.pseudolabel.prompts`):

* ``"label"``: a label map made by another tool (TotalSegmentator, an earlier model...) on the image grid;
  the clicks reproduce its organ region, and the promptable model segments the organ anew.
* ``"model"``: iterative refinement in the manner of SAM-Match. The case's existing pseudo-label of the organ
  is reproduced by the current model; the part of it the model segments stably (voxel confidence at least
  ``region_threshold``) becomes the prompt for a fresh segmentation. Without an existing pseudo-label the
  source label map is used, if one is given.
* ``"points"``: clicks a person placed (a PESF prompt file or Slicer markups), applied in order.

The mask and the organ confidence (predicted Dice from the model's confidence module, else the stability
under perturbed clicks) go into the case store as a ``pseudo`` organ, in one new label revision per case.
Accepted organs are never touched; existing pseudo-labels are redone only on request. Organs whose
confidence is below the threshold are stored all the same (the trainer filters them) but the report lists
them. A case is written at once or not at all, so an interrupted run resumes where it stopped: organs that
already have a pseudo-label are skipped.

Many cases at once (a folder of images, resumable, sharded over ``torchrun`` ranks): see
:mod:`pesf.pseudolabel.cohort`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from pesf.errors import PesfError
from pesf.io import Volume, describe_geometry_difference, load_prompts
from pesf.pseudolabel.prompts import (
    Click,
    prompts_from_confident_region,
    prompts_from_mask,
    prompts_from_points,
)

__all__ = [
    "PROMPT_SOURCES",
    "ProgressCallback",
    "default_threshold",
    "model_identity",
    "pseudo_label_case",
    "skip_reason",
    "skip_reasons",
]

logger = logging.getLogger(__name__)

PROMPT_SOURCES = ("label", "model", "points")
ProgressCallback = Callable[[int, int, str], None]
"""``progress(done, total, message)``."""


def model_identity(model: Any) -> tuple[str, str | None]:
    """``(author, model_version)`` written into pseudo-label records, e.g. ``("pesf-model small v3", "v3")``.

    The version is the model's ``metadata["model_version"]`` (or ``["version"]``), ``None`` when absent.
    """
    meta = getattr(model, "metadata", None) or {}
    version = next(
        (str(meta[k]) for k in ("model_version", "version") if isinstance(meta.get(k), str | int)), None
    )
    name = getattr(getattr(model, "config", None), "name", None) or type(model).__name__
    return f"pesf-model {name}" + (f" {version}" if version else ""), version


def default_threshold(model: Any) -> float:
    """The confidence threshold calibrated for ``model`` (``metadata["confidence"]["threshold"]``), else the
    trainer's default."""
    info = (getattr(model, "metadata", None) or {}).get("confidence")
    if isinstance(info, dict) and isinstance(info.get("threshold"), int | float):
        return float(info["threshold"])
    from pesf.train.config import DEFAULT_CONFIDENCE_THRESHOLD

    return DEFAULT_CONFIDENCE_THRESHOLD


def skip_reason(record: Any, source: str, author: str, version: str | None, redo: bool) -> str | None:
    """Why an organ with store ``record`` (an ``OrganRecord`` or ``None``) is not pseudo-labelled now.

    Accepted organs are always skipped. Existing pseudo-labels are skipped unless ``redo``; for the
    ``"model"`` source (refinement) only those this very model made (same author and version): a
    pseudo-label of an earlier model is what refinement takes as its prompt.
    """
    if record is None or record.status == "rejected":
        return None
    if record.status == "accepted":
        return "accepted by a person; never pseudo-labelled"
    if redo:
        return None
    if source != "model":
        return "already pseudo-labelled; use --redo to label it again"
    if record.author == author and record.model_version == version:
        return "already pseudo-labelled by this model; use --redo to refine it again"
    return None


def skip_reasons(
    record: Any, organs: dict[str, int], source: str, author: str, version: str | None, redo: bool
) -> dict[str, str]:
    """:func:`skip_reason` of each organ of a case ``record`` (a ``CaseRecord``) that is skipped."""
    reasons = {n: skip_reason(record.organs.get(n), source, author, version, redo) for n in organs}
    return {n: r for n, r in reasons.items() if r is not None}


class _OrganFailed(Exception):
    """An organ that cannot be pseudo-labelled in this case (reported, not raised)."""


def _source_mask(source_label: Volume | None, value: int) -> np.ndarray:
    if source_label is None:
        raise _OrganFailed("no source label map to take prompts from")
    mask = source_label.array == value
    if not mask.any():
        raise _OrganFailed(f"label value {value} is absent from the source label map")
    return mask


def _run_clicks(session: Any, name: str, clicks: list[Click]) -> Any:
    result = None
    for ijk, positive in clicks:
        result = session.add_click(name, ijk, positive)
    return result


def _prompts(
    session: Any,
    name: str,
    value: int,
    source: str,
    *,
    previous: np.ndarray | None,
    source_label: Volume | None,
    points: dict[str, Any] | None,
    n_positive: int | None,
    n_negative: int,
    region_threshold: float,
) -> tuple[list[Click], str]:
    """The clicks for one organ and how they were made (``"label"``, ``"model"``, ``"points"``...)."""
    spacing = session.image.spacing
    if source == "points":
        assert points is not None
        if name not in points:
            raise _OrganFailed("the prompt file has no points for it")
        return prompts_from_points(points[name]), "points"
    if source == "model" and previous is not None:
        reproduced = _run_clicks(session, name, prompts_from_mask(previous, spacing, n_positive))
        agree = previous & reproduced.full_mask()
        clicks = prompts_from_confident_region(
            agree if agree.any() else previous,
            reproduced.full_confidence_map(),
            spacing,
            region_threshold,
            n_positive,
            n_negative,
        )
        session.reset(name)
        if clicks:
            return clicks, "model"
        if source_label is None:
            raise _OrganFailed(
                f"no voxel of the earlier pseudo-label reaches voxel confidence {region_threshold}"
            )
        return prompts_from_mask(_source_mask(source_label, value), spacing, n_positive, n_negative), (
            "label (earlier pseudo-label not confident)"
        )
    if source == "model" and source_label is None:
        raise _OrganFailed("no earlier pseudo-label to refine and no source label map to fall back on")
    kind = "label" if source == "label" else "label (no earlier pseudo-label)"
    return prompts_from_mask(_source_mask(source_label, value), spacing, n_positive, n_negative), kind


def _check_inputs(
    case_id: str,
    record: Any,
    image: Volume,
    organs: dict[str, int],
    source: str,
    source_label: Volume | None,
    points: dict[str, Any] | None,
    strict: bool,
    todo: list[str],
) -> None:
    """Raise :class:`PesfError` on bad input before any work (``todo``: the organs to be labelled)."""
    if source_label is not None and not source_label.same_geometry(image):
        raise PesfError(
            f"the source label map of case {case_id!r} has a different geometry from its image: "
            f"{describe_geometry_difference(source_label, image)}; resample it onto the image grid first"
        )
    owners = {r.value: r.name for r in record.organs.values()}
    for name, value in organs.items():
        other = owners.get(value)
        if other is not None and other != name:
            raise PesfError(
                f"label value {value} of {name!r} is already organ {other!r} in case {case_id!r}; "
                "give the organ another value"
            )
    if not strict:
        return
    if source == "label":
        assert source_label is not None
        absent = [f"{n}={v}" for n, v in organs.items() if n in todo and not np.any(source_label.array == v)]
        if absent:
            raise PesfError(
                f"organ {', '.join(absent)} is absent from the source label map of case {case_id!r} "
                "(no voxel has that value); check --organs"
            )
    if source == "points":
        assert points is not None
        absent = [n for n in organs if n in todo and n not in points]
        if absent:
            raise PesfError(f"the prompt file of case {case_id!r} has no points for {', '.join(absent)}")


def pseudo_label_case(
    store: Any,
    case_id: str,
    organs: dict[str, int] | None,
    model: Any,
    *,
    source: str = "label",
    source_label: Volume | None = None,
    source_model_version: str | None = None,
    prompts_file: str | os.PathLike[str] | None = None,
    author: str | None = None,
    confidence_threshold: float | None = None,
    redo: bool = False,
    strict: bool = True,
    n_positive: int | None = None,
    n_negative: int = 0,
    region_threshold: float = 0.9,
    session_config: Any = None,
    image: Volume | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Pseudo-label organs of one case of the store and write them as ``pseudo`` organs.

    Args:
        store: the :class:`~pesf.train.store.CaseStore`.
        case_id: the case.
        organs: organ name to label value (the value in the source label map and in the store); ``None`` with
            ``source="points"`` takes the organs (and values) of the prompt file.
        model: the promptable model (see :func:`pesf.load_model`).
        source: ``"label"``, ``"model"`` or ``"points"`` (see the module description).
        source_label: label map on the case's image grid (``"label"``; the fallback of ``"model"``).
        source_model_version: what made the prompts' source (e.g. ``"TotalSegmentator 2.4"``), for the report;
            for ``"model"`` the earlier pseudo-labels' own versions are reported as well.
        prompts_file: the prompt file (``"points"``).
        author: the records' author; default from :func:`model_identity`.
        confidence_threshold: organs below it are reported as such; default :func:`default_threshold`.
        redo: pseudo-label organs that already have a pseudo-label again.
        strict: raise :class:`PesfError` when an organ's value is absent from the source label map (or the
            prompt file lacks it); otherwise report the organ as failed.
        n_positive: positive clicks per organ; ``None`` chooses by organ size.
        n_negative: negative clicks just outside the organ.
        region_threshold: voxel confidence an earlier pseudo-label must reach to prompt (``"model"``).
        session_config: :class:`~pesf.interactive.SessionConfig` of the segmentation session.
        image: the case's image when already read (saves reading it again).
        progress: called as ``progress(organs_done, organs_total, organ)``.

    Returns:
        ``{"case_id", "revision", "written", "threshold", "source", "source_model_version", "organs"}`` where
        ``organs[name]`` holds ``value``, ``status`` (``"pseudo"`` written, ``"skipped"`` or ``"failed"``),
        ``reason`` (skipped/failed), ``voxels``, ``ml``, ``confidence``, ``confidence_source``,
        ``below_threshold``, ``clicks`` and ``prompts`` (how the clicks were made).

    Raises:
        PesfError: unknown case, missing or mismatching source, value conflicts, or (``strict``) organs absent
            from the source. Nothing is written then.
    """
    from pesf.interactive import InteractiveSession
    from pesf.train.confidence import filter_pseudo_labels
    from pesf.train.store import OrganRecord

    if source not in PROMPT_SOURCES:
        raise PesfError(f"unknown prompt source {source!r}; use one of {', '.join(PROMPT_SOURCES)}")
    if organs is None and source != "points":
        raise PesfError("no organs given; give --organs NAME=VALUE,...")
    default_author, version = model_identity(model)
    author = author or default_author
    threshold = default_threshold(model) if confidence_threshold is None else float(confidence_threshold)
    report: dict[str, Any] = {
        "case_id": case_id,
        "revision": None,
        "written": False,
        "threshold": threshold,
        "source": source,
        "source_model_version": source_model_version,
        "organs": {},
    }
    entries: dict[str, dict[str, Any]] = report["organs"]
    record = store.get(case_id)
    if organs is not None:
        reasons = skip_reasons(record, organs, source, author, version, redo)
        if len(reasons) == len(organs):  # nothing to do: the case is not even read
            report["revision"] = record.revision
            for name, value in organs.items():
                entries[name] = {"value": value, "status": "skipped", "reason": reasons[name]}
            return report
    if source == "label" and source_label is None:
        raise PesfError("pseudo-labelling from a label map needs the label map; give --from-label")
    if source == "points" and prompts_file is None:
        raise PesfError("pseudo-labelling from points needs a prompt file; give --points")

    if image is None:
        data = store.load_case(case_id)
        record, image, label = data.record, data.image, data.label
    else:
        record, label, _ = store.load_labels(case_id)
    points = None
    if source == "points":
        prompts = load_prompts(prompts_file, image, values=organs)  # type: ignore[arg-type]
        points = {p.name: p for p in prompts}
        if organs is None:
            organs = {p.name: p.value for p in prompts}
    assert organs is not None
    skip = skip_reasons(record, organs, source, author, version, redo)
    todo = [n for n in organs if n not in skip]
    _check_inputs(case_id, record, image, organs, source, source_label, points, strict, todo)
    report["revision"] = record.revision
    for name, reason in skip.items():
        entries[name] = {"value": organs[name], "status": "skipped", "reason": reason}
    session = InteractiveSession(model, image, session_config)
    results: dict[str, tuple[Any, int, str]] = {}
    for done, name in enumerate(todo):
        if progress is not None:
            progress(done, len(todo), name)
        value = organs[name]
        old = record.organs.get(name)
        previous = None
        if source == "model" and old is not None and old.status == "pseudo":
            previous = label.array == old.value
            previous = previous if previous.any() else None
        try:
            clicks, kind = _prompts(
                session,
                name,
                value,
                source,
                previous=previous,
                source_label=source_label,
                points=points,
                n_positive=n_positive,
                n_negative=n_negative,
                region_threshold=region_threshold,
            )
            if not clicks:
                raise _OrganFailed("no prompt could be placed")
        except _OrganFailed as exc:
            entries[name] = {"value": value, "status": "failed", "reason": str(exc)}
            continue
        entry: dict[str, Any] = {"value": value, "prompts": kind, "clicks": len(clicks)}
        if previous is not None:
            entry["refined_from"] = {"author": old.author, "model_version": old.model_version}
        entries[name] = entry
        results[name] = (_run_clicks(session, name, clicks), len(clicks), kind)
    if progress is not None:
        progress(len(todo), len(todo), "writing")

    # overlaps between new organs go to the more probable one; painted organs not redone keep their voxels
    labels = session.label_map({n: organs[n] for n in results}) if results else None
    kept_values = [
        r.value for n, r in record.organs.items() if r.status in ("accepted", "pseudo") and n not in results
    ]
    owned = np.isin(label.array, kept_values) if kept_values else np.zeros(image.shape, bool)
    masks: dict[str, np.ndarray] = {}
    records: dict[str, Any] = {}
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    for name, (result, n_clicks, kind) in results.items():
        entry = entries[name]
        mask = (labels == organs[name]) & ~owned
        voxels = int(np.count_nonzero(mask))
        if voxels == 0:
            entry.update(
                status="failed",
                reason="the model predicted an empty mask"
                if not result.voxel_count
                else "its mask lies entirely within other organs",
            )
            continue
        confidence = float(result.confidence)
        confidence = 0.0 if not math.isfinite(confidence) else min(1.0, max(0.0, confidence))
        masks[name] = mask
        records[name] = OrganRecord(
            name,
            organs[name],
            "pseudo",
            confidence=confidence,
            source="clicks" if kind == "points" else "automatic",
            author=author,
            model_version=version,
            n_clicks=n_clicks,
        )
        entry.update(
            status="pseudo",
            voxels=voxels,
            ml=round(voxels * voxel_ml, 3),
            confidence=round(confidence, 4),
            confidence_source=result.confidence_source,
        )
    _, dropped = filter_pseudo_labels(list(records.values()), threshold)
    below = {r.name for r in dropped}
    for name in records:
        entries[name]["below_threshold"] = name in below
    report["organs"] = {n: entries[n] for n in organs}  # in the order asked for
    if masks:
        written = store.set_organ_masks(case_id, masks, records)
        report.update(written=True, revision=written.revision)
        logger.info("case %s: wrote %d pseudo-labels (revision %d)", case_id, len(masks), written.revision)
    return report
