"""The interactive benchmark behind ``pesf evaluate``: simulated clicks, per-click Dice/NSD, a report.

For every organ of a label map, a :class:`~pesf.eval.clicks.ClickSimulator` plays the user: a first click
inside the organ, then corrective clicks on the largest remaining error. After each click the segmenter's
prediction is scored (Dice, NSD) and its confidence and latency are recorded.

The report is a plain ``dict`` (JSON-serialisable)::

    {"organs": {NAME: {"value": V, "dice": [...], "nsd": [...], "confidence": [...], "latency_s": [...],
                       "clicks": [[i, j, k, positive], ...], "perfect_after_click": int | None}},
     "summary": {"mean_dice": [...], "mean_nsd": [...], "n_clicks": N, "seed": S}}

``dice``, ``nsd``, ``confidence`` and ``latency_s`` always hold ``n_clicks`` entries (entry ``c`` is after click
``c + 1``). When the prediction becomes perfect after click ``m < n_clicks``, no further click is simulated:
the last values are repeated up to ``n_clicks``, ``clicks`` holds the ``m`` clicks actually made and
``perfect_after_click`` is ``m`` (it is ``None`` otherwise). ``summary`` lists, per click, the mean over organs.
A segmenter without a confidence (its ``confidence`` is NaN or ``None``, e.g. the grow-cut baseline) gets
``None`` entries in ``confidence`` (``null`` in JSON).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from pesf.errors import PesfError
from pesf.eval.clicks import ClickSimulator, box_offset
from pesf.eval.metrics import as_spacing, bounding_box, dice, nsd

__all__ = [
    "ClickSegmenter",
    "OrganResultLike",
    "ProgressCallback",
    "evaluate_organs",
    "format_report_table",
    "organ_seed",
]

ProgressCallback = Callable[[int, int, str], None]
"""``progress(done, total, message)``: ``done`` of ``total`` clicks are finished."""


class OrganResultLike(Protocol):
    """What the segmenter returns after a click (the interactive session's per-organ result)."""

    @property
    def confidence(self) -> float: ...

    @property
    def timings(self) -> Mapping[str, float]:
        """Seconds per stage; ``"total_s"`` is the click's latency."""
        ...

    def full_mask(self) -> np.ndarray:
        """The organ's current mask, boolean, shape of the image ``(I, J, K)``."""
        ...


class ClickSegmenter(Protocol):
    """An interactive segmentation session on one volume; organs are kept apart by name."""

    def add_click(self, organ: str, ijk: np.ndarray, positive: bool) -> OrganResultLike: ...


def organ_seed(seed: int, organ: str) -> int:
    """A 63-bit seed for one organ, derived from the run's ``seed`` and the organ's name.

    Stable across processes and Python versions (SHA-256, not the salted ``hash()``), and independent of the
    other organs, so adding an organ to a run does not change any other organ's clicks.
    """
    digest = hashlib.sha256(f"pesf-eval/{int(seed)}/{organ}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def evaluate_organs(
    segmenter_factory: Callable[[], ClickSegmenter],
    label: np.ndarray,
    organs: Mapping[str, int],
    spacing: Sequence[float] | np.ndarray,
    n_clicks: int,
    seed: int,
    progress: ProgressCallback | None = None,
    tolerance_mm: float = 2.0,
) -> dict[str, Any]:
    """Simulate ``n_clicks`` clicks per organ and score the segmenter after each one.

    One segmenter is made per call (one per volume); every click names its organ so the session keeps
    organs apart. Each organ's clicks come from its own :class:`ClickSimulator` seeded by
    :func:`organ_seed`, so they do not depend on which other organs are evaluated.

    Args:
        segmenter_factory: makes the interactive session for this volume.
        label: ground-truth label map ``(I, J, K)`` of integer organ values.
        organs: organ name -> its value in ``label``, evaluated in this order.
        spacing: voxel size in mm along i, j, k.
        n_clicks: clicks per organ (>= 1).
        seed: run seed (>= 0).
        progress: optional callback ``progress(done, total, message)`` after every click.
        tolerance_mm: NSD tolerance in mm.

    Returns:
        The report described in the module docstring.

    Raises:
        PesfError: on bad arguments, or when an organ's value is absent from ``label``.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise PesfError(f"the label map must be 3D, got shape {label.shape}")
    try:
        sp = as_spacing(spacing)
    except ValueError as exc:
        raise PesfError(str(exc)) from None
    if not organs:
        raise PesfError("no organs to evaluate: give at least one organ name and its label value")
    if isinstance(n_clicks, bool) or int(n_clicks) != n_clicks or n_clicks < 1:
        raise PesfError(f"the number of clicks must be a whole number >= 1, got {n_clicks}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise PesfError(f"the seed must be a whole number >= 0, got {seed}")
    n_clicks, seed = int(n_clicks), int(seed)
    # Check every organ before the (slow) clicking starts.
    for name, value in organs.items():
        if not np.any(label == value):
            present = ", ".join(str(v) for v in np.unique(label).tolist())
            raise PesfError(
                f"organ '{name}' has label value {value}, which is absent from the label map "
                f"(values present: {present})"
            )

    segmenter = segmenter_factory()
    total = len(organs) * n_clicks
    report: dict[str, Any] = {"organs": {}}
    for index, (name, value) in enumerate(organs.items()):

        def tick(click: int, message: str, _base: int = index * n_clicks) -> None:
            if progress is not None:
                progress(_base + click, total, message)

        entry = _evaluate_organ(
            segmenter, name, label == value, sp, n_clicks, organ_seed(seed, name), tolerance_mm, tick
        )
        report["organs"][name] = {"value": _plain(value), **entry}

    per_organ = report["organs"].values()
    report["summary"] = {
        "mean_dice": np.mean([o["dice"] for o in per_organ], axis=0).tolist(),
        "mean_nsd": np.mean([o["nsd"] for o in per_organ], axis=0).tolist(),
        "n_clicks": n_clicks,
        "seed": seed,
    }
    return report


def _evaluate_organ(
    segmenter: ClickSegmenter,
    name: str,
    gt: np.ndarray,
    spacing: np.ndarray,
    n_clicks: int,
    seed: int,
    tolerance_mm: float,
    tick: Callable[[int, str], None],
) -> dict[str, Any]:
    simulator = ClickSimulator(seed)
    scores: dict[str, list[float]] = {"dice": [], "nsd": [], "confidence": [], "latency_s": []}
    clicks: list[list[int | bool]] = []
    perfect_after: int | None = None
    pred: np.ndarray | None = None
    box: tuple[slice, ...] = ()  # bounding box of gt | pred (+1 voxel) after the last click
    for c in range(n_clicks):
        if pred is None:
            click: tuple[np.ndarray, bool] | None = simulator.first_click(gt, spacing)
        else:
            click = simulator.next_click(gt[box], pred[box], spacing)
            if click is not None:
                click = (click[0] + box_offset(box), click[1])
        if click is None:
            perfect_after = c
            for values in scores.values():
                values.extend([values[-1]] * (n_clicks - c))
            tick(n_clicks, f"{name}: perfect after {c} click(s)")
            break
        ijk, positive = click
        started = time.perf_counter()
        result = segmenter.add_click(name, ijk.copy(), positive)
        wall = time.perf_counter() - started
        pred = np.asarray(result.full_mask(), dtype=bool)
        if pred.shape != gt.shape:
            raise ValueError(f"the segmenter returned a mask of shape {pred.shape}, the image is {gt.shape}")
        box = bounding_box(gt, pred, margin=1) or ()  # never empty: gt has voxels
        g, p = gt[box], pred[box]
        scores["dice"].append(dice(g, p))
        scores["nsd"].append(nsd(g, p, spacing, tolerance_mm))
        scores["confidence"].append(_confidence_or_none(result.confidence))
        scores["latency_s"].append(float(result.timings.get("total_s", wall)))
        clicks.append([*(int(v) for v in ijk), bool(positive)])
        tick(c + 1, f"{name}: click {c + 1}/{n_clicks}, Dice {scores['dice'][-1]:.3f}")
    return {**scores, "clicks": clicks, "perfect_after_click": perfect_after}


def _confidence_or_none(value: Any) -> float | None:
    """The confidence as a float, or ``None`` (``null`` in JSON) for a method that has none (NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    """A numpy scalar as the matching Python number (for JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def format_report_table(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table: one row per organ plus the mean.

    Columns: organ, clicks made / asked, Dice after clicks 1, 3, 5 and the last, NSD and confidence after the
    last click, and the mean latency per click actually made. A ``-`` marks a click beyond ``n_clicks``.
    """
    n_clicks = int(report["summary"]["n_clicks"])
    header = [
        "organ",
        "clicks",
        "Dice@1",
        "Dice@3",
        "Dice@5",
        "Dice@last",
        "NSD@last",
        "conf@last",
        "latency_s",
    ]

    def at(values: Sequence[float | None], click: int) -> str:
        return _fmt(values[click - 1]) if click <= len(values) else "-"

    rows: list[list[str]] = []
    latencies: list[float] = []
    confidences: list[float] = []
    for name, organ in report["organs"].items():
        made = len(organ["clicks"])
        lat = organ["latency_s"][:made]
        latencies.extend(lat)
        if organ["confidence"][-1] is not None:
            confidences.append(organ["confidence"][-1])
        rows.append(
            [
                name,
                f"{made}/{n_clicks}",
                *(at(organ["dice"], c) for c in (1, 3, 5, n_clicks)),
                at(organ["nsd"], n_clicks),
                _fmt(organ["confidence"][-1]),
                f"{np.mean(lat):.3f}" if lat else "-",
            ]
        )
    summary = report["summary"]
    rows.append(
        [
            "mean",
            f"{n_clicks}",
            *(at(summary["mean_dice"], c) for c in (1, 3, 5, n_clicks)),
            at(summary["mean_nsd"], n_clicks),
            f"{np.mean(confidences):.3f}" if confidences else "-",
            f"{np.mean(latencies):.3f}" if latencies else "-",
        ]
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])])


def _fmt(value: float | None) -> str:
    """Three decimals; ``-`` for a missing value (``None``, e.g. the confidence of a method without one)."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"
