"""The PESF training engine: samples from the case store, SAM-Med3D's interactive training step, validation.

:class:`Trainer` owns the model, optimizer, schedule and curriculum, and runs the loop; everything around it
(status file, curves, checkpoints, console progress) is a *handler* that listens to the trainer's events:

* ``on_start(trainer)``: once, before the first step;
* ``on_step_end(trainer, StepResult)``: after every optimizer step;
* ``on_validation_end(trainer, ValidationResult)``: after every validation (rank 0);
* ``on_checkpoint(trainer, CheckpointRequest)``: when resumable state and/or a model version is due;
* ``on_end(trainer, RunOutcome)``: once, after the last step or a stop request.

A handler is any object with some of these methods (``handler.on_step_end(trainer, result)``). Under
``torchrun`` only rank 0 registers handlers; the trainer keeps the ranks in step with barriers.

One training step (per sample, as SAM-Med3D trains): encode the 128^3 region once, then ``click_iterations``
times simulate a click from the current prediction (the first inside the organ, later ones in the largest
error), decode with all clicks so far and the previous low-resolution logits as mask prompt, upsample to the
region and add the partial Dice + cross-entropy loss over the voxels whose label is known.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pesf.errors import PesfError
from pesf.eval.clicks import ClickSimulator
from pesf.models.sam3d import Sam3D
from pesf.train.augment import AugmentConfig
from pesf.train.clicks import TrainingClicker
from pesf.train.config import PlanItem, TrainConfig, TrainingPlan, build_plan
from pesf.train.curriculum import CurriculumSampler
from pesf.train.distributed import DistContext
from pesf.train.losses import partial_dice_ce_loss
from pesf.train.samples import TrainingSample, prepare_sample, simulate_clicks, synthetic_sample
from pesf.train.status import CheckpointRequest, RunOutcome, StepResult, ValidationResult

__all__ = ["EVENTS", "InteractiveStep", "Trainer", "known_dice"]

logger = logging.getLogger(__name__)

EVENTS = ("on_start", "on_step_end", "on_validation_end", "on_checkpoint", "on_end")
STATE_FORMAT = "pesf-train-state"


class InteractiveStep(nn.Module):
    """SAM-Med3D's interactive forward pass as one module, so DistributedDataParallel can wrap it.

    Args:
        model: the promptable model.
        click_iterations: clicks simulated per sample.
        train_encoder: run the image encoder with gradients (else under ``no_grad``).
        reduction: ``"mean"`` or ``"sum"`` of the per-click losses.
        loss_size: voxels per side of the grid where the loss is computed and the clicks are simulated
            (0: the region's own; else a divisor of it). The decoder's masks are 4x coarser than the region,
            so a grid of half the region loses little and costs about a seventh as much per click; the
            target becomes the fraction of organ per coarse voxel and a coarse voxel is known only when all
            its fine voxels are.
    """

    def __init__(
        self,
        model: Sam3D,
        click_iterations: int,
        train_encoder: bool,
        reduction: str = "mean",
        loss_size: int = 0,
    ):
        super().__init__()
        self.model = model
        self.click_iterations = int(click_iterations)
        self.train_encoder = bool(train_encoder)
        self.reduction = reduction
        self.loss_size = int(loss_size)

    def forward(
        self,
        image: Tensor,
        target: Tensor,
        known: Tensor,
        simulators: list[ClickSimulator],
        spacings: list[float],
        first_clicks: list[np.ndarray | None] | None = None,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Run the click iterations on a batch.

        Args:
            image: ``(B, 1, S, S, S)`` regions.
            target: ``(B, 1, S, S, S)`` float, 1 on the organ.
            known: ``(B, 1, S, S, S)`` bool, the voxels whose label is trusted.
            simulators: one click simulator per sample.
            spacings: the region spacing (mm) of each sample, for the click simulation.
            first_clicks: per sample, the region index of its first (positive) click, or ``None`` to let
                its simulator choose it (the default for every sample).

        Returns:
            ``(loss, click_losses (iterations,) detached, predictions)`` with one bool ``(B, S, S, S)``
            prediction per click iteration (on the loss grid).
        """
        model = self.model
        size = tuple(image.shape[-3:])
        factor = 1
        if self.loss_size and self.loss_size < size[0]:
            factor = size[0] // self.loss_size
            if any(s % factor for s in size) or size[0] != self.loss_size * factor:
                raise PesfError(f"loss_size {self.loss_size} does not divide the region size {size[0]}")
            target = F.avg_pool3d(target.float(), factor)
            known = F.avg_pool3d(known.float(), factor) > 1.0 - 1e-6
            size = tuple(s // factor for s in size)
            spacings = [s * factor for s in spacings]
        with contextlib.nullcontext() if self.train_encoder else torch.no_grad():
            embedding = model.encode(image)
        batch = image.shape[0]
        prev = image.new_zeros((batch, 1, *model.config.low_res_mask_size))
        truth = target[:, 0] > 0.5
        if not bool(truth.flatten(1).any(1).all()):  # an organ thinner than a coarse voxel: its best ones
            peak = target[:, 0].flatten(1).amax(1).clamp_min(1e-6)
            truth = truth | (target[:, 0] >= 0.5 * peak[:, None, None, None])
        coords = [np.zeros((0, 3), np.float32) for _ in range(batch)]
        labels = [np.zeros((0,), np.int64) for _ in range(batch)]
        pred: Tensor | None = None
        losses, preds = [], []
        given = list(first_clicks) if first_clicks is not None else [None] * batch
        for _ in range(self.click_iterations):
            for b in range(batch):
                previous = None if pred is None else pred[b]
                if pred is None and given[b] is not None:
                    c, lab = np.asarray(given[b], np.float32).reshape(1, 3), np.ones(1, np.int64)
                else:
                    c, lab = simulate_clicks(truth[b], previous, simulators[b], spacings[b])
                    c = np.asarray(c, np.float32).reshape(-1, 3) * factor + 0.5 * (factor - 1)  # region index
                coords[b] = np.concatenate([coords[b], c])
                labels[b] = np.concatenate([labels[b], np.asarray(lab, np.int64).reshape(-1)])
            points = (
                torch.from_numpy(np.stack(coords)).to(image.device),
                torch.from_numpy(np.stack(labels)).to(image.device),
            )
            low_res, _ = model.decode(embedding, points, prev)
            logits = F.interpolate(low_res.float(), size=size, mode="trilinear", align_corners=False)
            losses.append(partial_dice_ce_loss(logits, target, known))
            prev = low_res.detach()
            pred = logits.detach()[:, 0] > 0
            preds.append(pred)
        stacked = torch.stack(losses)
        loss = stacked.mean() if self.reduction == "mean" else stacked.sum()
        return loss, stacked.detach(), preds


def known_dice(pred: Tensor, target: Tensor, known: Tensor) -> float:
    """Dice of two bool masks over the ``known`` voxels (1.0 when both are empty there)."""
    p, t = pred & known, target & known
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom


class Trainer:
    """Fine-tunes a promptable model on the samples of a case store with the PESF method.

    Args:
        store: the case store (:class:`pesf.train.store.CaseStore`).
        config: the settings.
        model: the model to train (moved to ``dist_ctx.device``; trained in place).
        dist_ctx: this process's place in a ``torchrun`` job (default: a single CPU process).
        handlers: objects listening to the events in :data:`EVENTS`.
    """

    def __init__(
        self,
        store: Any,
        config: TrainConfig,
        model: Sam3D,
        dist_ctx: DistContext | None = None,
        handlers: list[Any] | tuple[Any, ...] = (),
    ) -> None:
        self.store = store
        self.config = config
        self.dist = dist_ctx or DistContext()
        self.device = self.dist.device
        self.handlers: list[Any] = list(handlers)
        self.model = model.to(self.device)
        self.plan: TrainingPlan = build_plan(store, config, getattr(model, "metadata", {}))
        self.step = 0
        self.last_loss: float | None = None
        self.last_validation: ValidationResult | None = None
        self.resumed_from: int | None = None
        self._cases: dict[str, tuple[Any, Any, np.ndarray]] = {}
        self._samples_per_step = config.batch_size * config.accumulate
        self._augmentation = AugmentConfig.from_overrides(config.augmentation)
        self.sampler = CurriculumSampler(
            np.array([s.difficulty for s in self.plan.train], dtype=np.float64),
            total_steps=config.steps * self._samples_per_step,
            seed=config.seed,
            sigma=config.perturbation_sigma,
            start_fraction=max(config.start_fraction, 1e-6),
            full_at=config.full_at,
            kind=config.curriculum_kind,
            enabled=config.curriculum,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self._setup_optimisation()

    # ------------------------------------------------------------------ setup
    def _setup_optimisation(self) -> None:
        cfg = self.config
        size = self.model.config.image_size
        if cfg.loss_size and (cfg.loss_size > size or size % cfg.loss_size):
            raise PesfError(
                f"loss_size {cfg.loss_size} must divide the model's region size {size}; use 0 or e.g. {size // 2}"
            )
        train_encoder = cfg.trainable == "all"
        self.model.image_encoder.requires_grad_(train_encoder)
        self.model.prompt_encoder.requires_grad_(True)
        self.model.mask_decoder.requires_grad_(True)
        self.module = InteractiveStep(
            self.model, cfg.click_iterations, train_encoder, cfg.loss_reduction, cfg.loss_size
        )
        self.forward: nn.Module = self.module
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # The IoU head and some prompt embeddings (no-mask, negative clicks) are unused in some steps.
            self.forward = DistributedDataParallel(
                self.module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cfg.learning_rate_factor(step)
        )
        self.amp = cfg.use_amp(self.device.type)
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.device.type == "cuda")

    def add_handler(self, handler: Any) -> None:
        """Register an object whose ``on_*`` methods are called on the trainer's events."""
        self.handlers.append(handler)

    def fire(self, event: str, *args: Any) -> None:
        """Call ``event`` on every handler that defines it, in registration order."""
        if event not in EVENTS:
            raise ValueError(f"unknown trainer event {event!r}")
        for handler in self.handlers:
            method = getattr(handler, event, None)
            if method is not None:
                method(self, *args)

    @property
    def total_steps(self) -> int:
        return self.config.steps

    @property
    def epoch(self) -> int:
        """Completed passes over the training samples (all ranks together)."""
        seen = self.step * self._samples_per_step * self.dist.world_size
        return seen // max(1, len(self.plan.train))

    # ------------------------------------------------------------------ data
    def _case(self, case_id: str) -> tuple[Any, Any, np.ndarray]:
        """Image, label and unknown mask of a case (one revision), from a small in-memory cache."""
        if case_id in self._cases:
            self._cases[case_id] = self._cases.pop(case_id)  # most recently used last
        else:
            data = self.store.load_case(case_id)
            self._cases[case_id] = (data.image, data.label, data.unknown)
            while len(self._cases) > self.config.cache_cases:
                self._cases.pop(next(iter(self._cases)))
        return self._cases[case_id]

    def _prepare(self, item: PlanItem, rng: np.random.Generator, train: bool) -> TrainingSample:
        """A training region (random centre in the organ, augmented if configured; with augmentation's
        ``synthetic_prob`` a synthetic target instead) or a validation region (centred, never augmented)."""
        synthetic = self._augmentation.synthetic_prob if train and self.config.augment else 0.0
        if synthetic > 0 and rng.random() < synthetic:
            return synthetic_sample(rng, self.model.config.image_size)
        image, label, unknown = self._case(item.case_id)
        return prepare_sample(
            image,
            label,
            item.value,
            unknown,
            rng,
            roi_size=self.model.config.image_size,
            spacing=self.config.spacing,
            augment=train and self.config.augment,
            config=self._augmentation,
            case_id=item.case_id,
            organ=item.organ,
            jitter=train,
        )

    def _batch(self, samples: list[TrainingSample]) -> tuple[Tensor, Tensor, Tensor]:
        dev = self.device
        image = torch.cat([s.image for s in samples]).to(dev, torch.float32)
        target = torch.cat([s.target for s in samples]).to(dev, torch.float32)
        known = torch.cat([s.known for s in samples]).to(dev, torch.bool)
        return image, target, known

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> StepResult:
        """One optimizer step over ``batch_size * accumulate`` samples on this rank; advances ``step``."""
        cfg, step = self.config, self.step
        t0 = time.perf_counter()
        self.model.train()
        if cfg.trainable != "all":
            self.model.image_encoder.eval()
        self.optimizer.zero_grad(set_to_none=True)
        total, clicks, names = 0.0, torch.zeros(cfg.click_iterations), []
        for micro in range(cfg.accumulate):
            samples, simulators = [], []
            for b in range(cfg.batch_size):
                draw = (step * cfg.accumulate + micro) * cfg.batch_size + b
                item = self.plan.train[self.sampler.sample(draw)]
                rng = np.random.default_rng([cfg.seed, step, self.dist.rank, micro, b])
                samples.append(self._prepare(item, rng, train=True))
                clicker = TrainingClicker if cfg.training_clicks == "fast" else ClickSimulator
                simulators.append(clicker(int(rng.integers(2**31))))
                names.append("synthetic" if samples[-1].organ == "synthetic" else item.key)
            image, target, known = self._batch(samples)
            last = micro == cfg.accumulate - 1
            sync = contextlib.nullcontext() if last or not self.dist.distributed else self.forward.no_sync()
            with sync:
                with self._autocast():
                    loss, click_losses, _ = self.forward(
                        image,
                        target,
                        known,
                        simulators,
                        [x.spacing for x in samples],
                        [x.first_click for x in samples],
                    )
                if not torch.isfinite(loss):
                    raise PesfError(
                        f"the training loss became {float(loss)} at step {step + 1} "
                        f"(samples {', '.join(names)}); lower lr or check the labels"
                    )
                self.scaler.scale(loss / cfg.accumulate).backward()
            total += float(loss.detach()) / cfg.accumulate
            clicks += click_losses.float().cpu() / cfg.accumulate
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step = step + 1
        self.last_loss = self.dist.all_reduce_mean(total)
        return StepResult(
            step=self.step,
            total_steps=self.total_steps,
            loss=self.last_loss,
            click_losses=[round(self.dist.all_reduce_mean(v), 6) for v in clicks],
            lr=lr,
            epoch=self.epoch,
            samples=names,
            seconds=time.perf_counter() - t0,
        )

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> ValidationResult | None:
        """Dice after 1 and ``val_clicks`` simulated clicks on the held-back samples (deterministic).

        Runs on rank 0 only (``None`` elsewhere and when there are no validation samples).
        """
        if not self.plan.val or not self.dist.is_main:
            return None
        t0 = time.perf_counter()
        cfg = self.config
        self.model.eval()
        runner = InteractiveStep(self.model, cfg.val_clicks, False, cfg.loss_reduction)
        per_sample: dict[str, list[float]] = {}
        for index, item in enumerate(self.plan.val):
            rng = np.random.default_rng([cfg.seed, 7_919, index])
            sample = self._prepare(item, rng, train=False)
            image, target, known = self._batch([sample])
            with self._autocast():
                _, _, preds = runner(
                    image,
                    target,
                    known,
                    [ClickSimulator(cfg.seed + index, border_is_boundary=True)],
                    [sample.spacing],
                )
            truth, mask = target[:, 0] > 0.5, known[:, 0]
            per_sample[item.key] = [round(known_dice(p, truth, mask), 5) for p in preds]
        scores = np.array(list(per_sample.values()), dtype=np.float64)
        means = scores.mean(axis=0)
        dice = {"click_1": round(float(means[0]), 6), f"click_{cfg.val_clicks}": round(float(means[-1]), 6)}
        result = ValidationResult(self.step, dice, per_sample, time.perf_counter() - t0)
        self.last_validation = result
        return result

    # ------------------------------------------------------------------ the loop
    def run(self, should_stop: Any = None) -> RunOutcome:
        """Train until ``config.steps`` or a stop request, firing the events.

        Args:
            should_stop: a callable returning ``True`` when the run should stop after the current step
                (checked after every step on every rank; one rank asking stops all).

        Returns:
            The :class:`RunOutcome`; resumable state and a final version have been requested through
            ``on_checkpoint`` before ``on_end``.
        """
        cfg = self.config
        self.fire("on_start")
        stopped = False
        if self.step >= cfg.steps:  # resumed at or past the end: still leave a validated version
            self._validate_and_fire()
            self.checkpoint(CheckpointRequest(self.step, True, True, "finished"))
        while self.step < cfg.steps:
            result = self.train_step()
            self.fire("on_step_end", result)
            stopped = self.dist.any(bool(should_stop and should_stop()))
            last = self.step >= cfg.steps
            if last or stopped or (cfg.val_every and self.step % cfg.val_every == 0):
                self._validate_and_fire()
            version_due = bool(cfg.version_every) and self.step % cfg.version_every == 0
            state_due = bool(cfg.save_every) and self.step % cfg.save_every == 0
            if last or stopped or version_due or state_due:
                reason = "finished" if last else "stopped" if stopped else "scheduled"
                self.checkpoint(CheckpointRequest(self.step, True, last or stopped or version_due, reason))
            if stopped:
                break
        state = "stopped" if stopped and self.step < cfg.steps else "finished"
        outcome = RunOutcome(state, self.step, cfg.steps, f"{state} at step {self.step} of {cfg.steps}")
        self.fire("on_end", outcome)
        return outcome

    def _validate_and_fire(self) -> None:
        if self.last_validation is not None and self.last_validation.step == self.step:
            return
        result = self.validate()
        if result is not None:
            self.fire("on_validation_end", result)
        self.dist.barrier()

    def checkpoint(self, request: CheckpointRequest) -> None:
        """Fire ``on_checkpoint`` (rank 0 writes) and keep the ranks together; a failure stops every rank."""
        error: BaseException | None = None
        try:
            self.fire("on_checkpoint", request)
        except (OSError, PesfError) as exc:
            error = exc
        if self.dist.any(error is not None):
            if error is not None:
                raise error
            raise PesfError(f"rank 0 failed to write the checkpoint of step {request.step}; see its log")

    # ------------------------------------------------------------------ resumable state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run: plain tensors and containers only (weights-only loadable)."""
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "step": self.step,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "model_config": self.model.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "sampler": self.sampler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "config": self.config.to_dict(),
            "last_loss": self.last_loss,
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output; raises :class:`PesfError` when it does not fit."""
        if state.get("format") != STATE_FORMAT:
            raise PesfError("the resumable state is not a PESF training state; start over with --fresh")
        if state.get("model_config") != self.model.config.to_dict():
            raise PesfError(
                "the resumable state belongs to another model architecture; start over with --fresh"
            )
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise PesfError(
                f"the saved optimizer does not fit these settings ({exc}); start over with --fresh"
            ) from None
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        try:
            self.sampler.load_state_dict(state["sampler"])
        except (ValueError, KeyError) as exc:
            logger.warning("curriculum restarted: %s (the case store changed since the run started)", exc)
        self.sampler.total_steps = self.config.steps * self._samples_per_step
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = int(state["step"])
        self.last_loss = state.get("last_loss")
        self.resumed_from = self.step
