"""What a training run does: its settings (:class:`TrainConfig`) and the samples they select (:class:`TrainingPlan`).

The settings come from a JSON file (``pesf train --config``) and go into the training card of every model
version; the plan applies them to a case store: pseudo-label filtering, validation split, difficulties.

Example ``config.json`` (every key is optional; unknown keys are an error)::

    {"base_model": "latest", "steps": 2000, "lr": 1e-4, "trainable": "decoder",
     "val_fraction": 0.2, "confidence_threshold": 0.7, "curriculum": true, "perturbation_sigma": 0.1}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from pesf.errors import PesfError

__all__ = [
    "DEFAULT_CONFIDENCE_THRESHOLD",
    "PlanItem",
    "TrainConfig",
    "TrainingPlan",
    "build_plan",
    "load_config",
    "model_confidence_threshold",
]

DEFAULT_CONFIDENCE_THRESHOLD = 0.5
"""Pseudo-labels below this predicted Dice are dropped when neither the config nor the model sets one."""

_CHOICES = {
    "schedule": ("cosine", "constant"),
    "trainable": ("all", "decoder"),
    "curriculum_kind": ("linear", "root", "step"),
    "loss_reduction": ("mean", "sum"),
    "training_clicks": ("fast", "exact"),
}


@dataclass
class TrainConfig:
    """Everything that decides what a training run does; defaults follow SAM-Med3D fine-tuning.

    Attributes:
        base_model: the model to start from: ``"default"``, a bundled model name, a checkpoint path, or
            ``"latest"`` (the newest version in the workspace's ``models/``, else ``"default"``).
        steps: optimizer steps of the whole run (a resumed run continues to this count).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up from 0 to ``lr``.
        schedule: ``"cosine"`` (decay to ``min_lr_ratio * lr`` at ``steps``) or ``"constant"``.
        min_lr_ratio: the cosine schedule's floor relative to ``lr``.
        batch_size: (case, organ) samples per forward pass.
        accumulate: forward passes whose gradients add up before one optimizer step.
        click_iterations: simulated clicks per sample; each decodes with all clicks so far and the previous
            low-resolution mask as prompt, and each adds its loss (SAM-Med3D's interactive training).
        loss_reduction: how the per-click losses combine: ``"mean"`` or ``"sum"``.
        training_clicks: the simulated user of the training steps: ``"fast"`` (SAM-Med3D's random clicks in
            the larger error class, :class:`pesf.train.clicks.TrainingClicker`) or ``"exact"`` (the benchmark
            user, :class:`pesf.eval.clicks.ClickSimulator`, slower on noisy masks). Validation always uses
            the benchmark user.
        loss_size: voxels per side of the grid where the training loss is computed and clicks simulated:
            0 for the region's own (SAM-Med3D), or a divisor of it such as 64 (several times faster on a CPU;
            validation always measures on the region's grid).
        trainable: ``"all"`` or ``"decoder"`` (mask decoder and prompt encoder; the image encoder is frozen).
        amp: mixed precision: ``"auto"`` (on for CUDA), ``true`` or ``false``.
        grad_clip: clip the gradient norm to this value (0: no clipping).
        val_every: steps between validations (0: only at the end).
        save_every: steps between resumable checkpoints in ``state/last.pt``.
        version_every: steps between model versions in ``models/vN`` (0: one version at the end of the run).
        val_cases: case ids held back for validation (never trained on); ``None`` to draw ``val_fraction``.
        val_fraction: fraction of the cases held back when ``val_cases`` is ``None`` (at least one case is
            left for training).
        val_clicks: simulated clicks per validation sample; Dice is reported after 1 and after this many.
        confidence_threshold: pseudo-labels whose confidence is below it are dropped (with
            ``use_filtering``); ``None`` takes the calibrated threshold stored in the base model, else 0.5.
        use_pseudo: train on pseudo-labels as well as on accepted labels.
        use_filtering: drop pseudo-labels below ``confidence_threshold``.
        curriculum: order samples from easy to hard (else uniform sampling).
        curriculum_kind: pacing of the curriculum (``"linear"``, ``"root"``, ``"step"``).
        perturbation_sigma: standard deviation of the Gaussian perturbation of the difficulties (0: none).
        start_fraction: fraction of the easiest samples available at step 0.
        full_at: fraction of the run after which every sample is available.
        augment: random flips, intensity and scale augmentation of the training regions.
        augmentation: probabilities and strengths that replace the defaults of
            :class:`pesf.train.augment.AugmentConfig`, e.g. ``{"flip_prob": 0.05, "rot90_prob": 0}``
            (``null``: the defaults).
        spacing: isotropic spacing (mm) of the training regions (SAM-Med3D: 1.5).
        cache_cases: cases kept in memory between steps.
        seed: seeds sampling, augmentation, click simulation and the validation split.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    base_model: str = "default"
    steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup_steps: int = 50
    schedule: str = "cosine"
    min_lr_ratio: float = 0.01
    batch_size: int = 1
    accumulate: int = 1
    click_iterations: int = 5
    loss_reduction: str = "mean"
    training_clicks: str = "fast"
    loss_size: int = 0
    trainable: str = "all"
    amp: bool | str = "auto"
    grad_clip: float = 1.0
    val_every: int = 100
    save_every: int = 50
    version_every: int = 0
    val_cases: list[str] | None = None
    val_fraction: float = 0.2
    val_clicks: int = 3
    confidence_threshold: float | None = None
    use_pseudo: bool = True
    use_filtering: bool = True
    curriculum: bool = True
    curriculum_kind: str = "linear"
    perturbation_sigma: float = 0.1
    start_fraction: float = 0.3
    full_at: float = 0.7
    augment: bool = True
    augmentation: dict[str, Any] | None = None
    spacing: float = 1.5
    cache_cases: int = 4
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise PesfError("invalid training settings: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Human-readable reasons why these settings cannot run (empty when they can)."""
        p: list[str] = []
        for name in ("steps", "batch_size", "accumulate", "click_iterations", "val_clicks", "cache_cases"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                p.append(f"{name} must be a whole number of at least 1 (got {value!r})")
        for name in ("warmup_steps", "val_every", "save_every", "version_every", "seed", "loss_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                p.append(f"{name} must be a whole number of at least 0 (got {value!r})")
        for name in ("lr", "weight_decay", "grad_clip", "perturbation_sigma", "min_lr_ratio"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                p.append(f"{name} must be a number of at least 0 (got {value!r})")
        if _is_number(self.lr) and self.lr == 0:
            p.append("lr must be positive")
        if not _is_number(self.spacing) or self.spacing <= 0:
            p.append(f"spacing must be a positive number of mm (got {self.spacing!r})")
        for name in ("val_fraction", "start_fraction", "full_at"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                p.append(f"{name} must lie in [0, 1] (got {value!r})")
        threshold = self.confidence_threshold
        if threshold is not None and (not _is_number(threshold) or not 0.0 <= threshold <= 1.0):
            p.append(f"confidence_threshold must lie in [0, 1] or be null (got {threshold!r})")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                p.append(f"{name} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")
        if self.amp not in ("auto", True, False):
            p.append(f"amp must be 'auto', true or false (got {self.amp!r})")
        for name in ("use_pseudo", "use_filtering", "curriculum", "augment"):
            if not isinstance(getattr(self, name), bool):
                p.append(f"{name} must be true or false (got {getattr(self, name)!r})")
        if self.augmentation is not None:
            from pesf.train.augment import AugmentConfig

            try:
                AugmentConfig.from_overrides(self.augmentation)
            except ValueError as exc:
                p.append(f"augmentation: {exc}")
        if not isinstance(self.base_model, str) or not self.base_model:
            p.append(
                f"base_model must be a model name, a checkpoint path or 'latest' (got {self.base_model!r})"
            )
        if not isinstance(self.device, str) or not self.device:
            p.append(f"device must be 'auto', 'cpu' or 'cuda[:N]' (got {self.device!r})")
        if self.val_cases is not None and (
            not isinstance(self.val_cases, list) or not all(isinstance(c, str) for c in self.val_cases)
        ):
            p.append(f"val_cases must be a list of case ids or null (got {self.val_cases!r})")
        return p

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the training settings") -> TrainConfig:
        """Settings from a plain dict; unknown keys raise a :class:`PesfError` that names them."""
        if not isinstance(data, dict):
            raise PesfError(f"{source} must be a JSON object of settings, not a {type(data).__name__}")
        known = cls.field_names()
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise PesfError(
                f"unknown training setting(s) in {source}: {', '.join(unknown)} (known: {', '.join(known)})"
            )
        values = dict(data)
        if isinstance(values.get("val_cases"), (list, tuple)):
            values["val_cases"] = [str(c) for c in values["val_cases"]]
        return cls(**values)

    @classmethod
    def field_names(cls) -> list[str]:
        """The setting names accepted in a config file."""
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict of every setting (for the training card and the resumable state)."""
        d = asdict(self)
        if d["val_cases"] is not None:
            d["val_cases"] = list(d["val_cases"])
        return d

    def updated(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed (validated like the original)."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise PesfError(f"unknown training setting(s): {', '.join(unknown)}")
        return replace(self, **changes)

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of the settings whose values differ from ``other``."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if a[k] != b[k]]

    # ------------------------------------------------------------------ derived values
    def use_amp(self, device_type: str) -> bool:
        """Whether mixed precision is on for a device type (``"auto"``: only on CUDA)."""
        return device_type == "cuda" if self.amp == "auto" else bool(self.amp)

    def learning_rate_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at optimizer step ``step`` (0-based): warm-up, then the schedule."""
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_settings_file(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object of settings in ``path``; ``what`` names the file in errors ("training config").

    Raises:
        PesfError: a missing or unreadable file, invalid JSON, or JSON that is not an object.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise PesfError(f"{what} {file} not found")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PesfError(f"cannot read {what} {file}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PesfError(
            f"{what} {file} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(data, dict):
        raise PesfError(f"{what} {file} must hold a JSON object of settings")
    return data


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> TrainConfig:
    """Settings from a JSON file (or the defaults), with some values overridden.

    Args:
        path: a JSON object of settings (see :class:`TrainConfig`); ``None`` for the defaults.
        **overrides: settings that take precedence over the file (``None`` values are ignored).

    Raises:
        PesfError: missing or unreadable file, invalid JSON, unknown keys, invalid values.
    """
    data: dict[str, Any] = {}
    source = "the training settings"
    if path is not None:
        source = str(Path(path).expanduser())
        data = read_settings_file(path, "training config")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data, source)


# ---------------------------------------------------------------------------------------------- the plan
# Which (case, organ) samples a run trains on and validates on follows from the settings and the case store.


@dataclass
class PlanItem:
    """One (case, organ) sample of a run.

    Attributes:
        case_id: the case in the store.
        organ: organ name.
        value: the organ's value in the case's label map.
        status: ``"accepted"`` or ``"pseudo"``.
        confidence: the confidence module's score of a pseudo-label; ``None`` for an accepted label.
        voxels: voxels of the organ in the label map.
        difficulty: curriculum difficulty in ``[0, 1]`` (0 easiest).
        reason: why a dropped sample was dropped (empty for used samples).
    """

    case_id: str
    organ: str
    value: int
    status: str
    confidence: float | None
    voxels: int = 0
    difficulty: float = 0.0
    reason: str = ""

    @property
    def key(self) -> str:
        """``"case/organ"``."""
        return f"{self.case_id}/{self.organ}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["reason"]:
            d.pop("reason")
        return d


@dataclass
class TrainingPlan:
    """The samples of a run: ``train`` (drawn by the curriculum), ``val`` (held-back cases, never trained on)
    and ``dropped`` (pseudo-labels below the threshold, empty organs), with the threshold applied."""

    train: list[PlanItem]
    val: list[PlanItem]
    dropped: list[PlanItem]
    val_cases: list[str]
    confidence_threshold: float

    def summary(self) -> dict[str, Any]:
        """Plain description for the training card and the run report."""
        return {
            "confidence_threshold": self.confidence_threshold,
            "train_cases": sorted({i.case_id for i in self.train}),
            "val_cases": list(self.val_cases),
            "counts": {"train": len(self.train), "val": len(self.val), "dropped": len(self.dropped)},
            "train": [i.to_dict() for i in self.train],
            "val": [i.to_dict() for i in self.val],
            "dropped": [i.to_dict() for i in self.dropped],
        }


def model_confidence_threshold(metadata: dict[str, Any]) -> float | None:
    """The calibrated pseudo-label threshold stored in a model's checkpoint metadata, if any."""
    candidates = [metadata.get("confidence_threshold")]
    nested = metadata.get("confidence")
    if isinstance(nested, dict):
        candidates += [nested.get("threshold"), nested.get("confidence_threshold")]
    for value in candidates:
        if _is_number(value) and 0.0 <= value <= 1.0:
            return float(value)
    return None


def _split_cases(config: TrainConfig, case_ids: list[str], known: set[str]) -> list[str]:
    if config.val_cases is not None:
        unknown = [c for c in config.val_cases if c not in known]
        if unknown:
            raise PesfError(
                f"val_cases names case(s) not in the store: {', '.join(unknown)} (cases: {', '.join(sorted(known))})"
            )
        return list(config.val_cases)
    count = min(len(case_ids) - 1, round(config.val_fraction * len(case_ids)))
    if config.val_fraction > 0 and len(case_ids) > 1:
        count = max(count, 1)
    if count <= 0:
        return []
    rng = np.random.default_rng([config.seed, 104_729])
    return sorted(rng.choice(sorted(case_ids), size=count, replace=False).tolist())


def build_plan(store: Any, config: TrainConfig, model_metadata: dict[str, Any]) -> TrainingPlan:
    """Select the samples of a run from a case store.

    Accepted labels always; pseudo-labels when ``use_pseudo``, those below the confidence threshold dropped
    when ``use_filtering``. Validation cases (``val_cases`` or a seeded ``val_fraction`` of the cases) are held
    back; their accepted organs (or, if a case has none, its kept pseudo-labels) are the validation samples.

    Raises:
        PesfError: an empty store, unknown validation cases, or no training sample left.
    """
    from pesf.train.confidence import filter_pseudo_labels
    from pesf.train.curriculum import difficulty

    store.require_samples()
    threshold = config.confidence_threshold
    if threshold is None:
        threshold = model_confidence_threshold(model_metadata)
    if threshold is None:
        threshold = DEFAULT_CONFIDENCE_THRESHOLD
    statuses = ("accepted", "pseudo") if config.use_pseudo else ("accepted",)
    items = [
        PlanItem(
            case_id, rec.name, int(rec.value), rec.status, rec.confidence if rec.status == "pseudo" else None
        )
        for case_id, rec in store.samples(statuses=statuses)
    ]
    if not items:
        raise PesfError(
            f"the case store {store.root} has no {' or '.join(statuses)} organs to train on; "
            "add cases with `pesf cases add`"
        )
    dropped: list[PlanItem] = []
    if config.use_filtering:
        items, low = filter_pseudo_labels(items, threshold)
        for item in low:
            item.reason = f"confidence {item.confidence:.3f} below threshold {threshold:.3f}"
        dropped += low
    kept: list[PlanItem] = []
    for case_id in sorted({i.case_id for i in items}):
        label = store.load_label(case_id)
        ml_per_voxel = float(np.prod(label.spacing)) / 1000.0
        counts = dict(zip(*np.unique(label.array, return_counts=True), strict=True))
        for item in (i for i in items if i.case_id == case_id):
            item.voxels = int(counts.get(item.value, 0))
            if item.voxels == 0:
                item.reason = f"no voxel of value {item.value} in the label map"
                dropped.append(item)
                continue
            item.difficulty = difficulty(item.confidence, item.voxels, ml_per_voxel)
            kept.append(item)
    case_ids = sorted({i.case_id for i in kept})
    val_cases = _split_cases(config, case_ids, set(store.case_ids()))
    held = [i for i in kept if i.case_id in val_cases]
    val = [i for i in held if i.status == "accepted"]
    val += [i for i in held if i.status != "accepted" and not any(v.case_id == i.case_id for v in val)]
    train = [i for i in kept if i.case_id not in val_cases]
    if not train:
        raise PesfError(
            f"no training sample left: {len(kept)} usable organ(s) in {len(case_ids)} case(s), "
            f"{len(val_cases)} held back for validation and {len(dropped)} dropped; add cases, "
            "lower val_fraction or confidence_threshold"
        )
    return TrainingPlan(train, val, dropped, val_cases, float(threshold))
