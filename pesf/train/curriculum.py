"""Curriculum learning for PESF: easy samples first, hard ones later, with random perturbation.

Each training sample (a case and an organ) gets a *difficulty* in ``[0, 1]`` from how much its label can be
trusted (the confidence module's score for a pseudo-label; human labels count as fully confident) and how
small the organ is (small structures are harder to segment and their pseudo-labels are less reliable).

A *pacing* function says which fraction of the samples, easiest first, is available at a given point of
training: ``start_fraction`` at the start, growing to all of them at ``full_at``. Before each draw the
difficulties are perturbed with Gaussian noise ``N(0, sigma)``, so the order is progressive but not rigid: a
slightly harder sample may come in early and a slightly easier one late, as in PESF's curriculum with
Gaussian random perturbation. ``sigma = 0`` gives a strict easy-first order.

Everything here is a pure function of its arguments; :class:`CurriculumSampler` draws the sample of a step
from a generator seeded with ``(seed, step)``, so a resumed run draws the same sequence and several ranks
draw distinct samples without talking to each other.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["PACING_KINDS", "difficulty", "pacing", "curriculum_pool", "CurriculumSampler"]

PACING_KINDS = ("linear", "root", "step")
_STEP_LEVELS = 4  # number of increments of the "step" pacing after the start


def difficulty(
    confidence: float | None,
    voxels: int,
    spacing_ml_per_voxel: float,
    *,
    confidence_weight: float = 0.7,
    size_weight: float = 0.3,
    small_ml: float = 5.0,
    large_ml: float = 500.0,
) -> float:
    """Difficulty of a sample in ``[0, 1]`` (0 easiest).

    Args:
        confidence: the confidence module's score of a pseudo-label in ``[0, 1]``; ``None`` for an accepted
            (human) label, treated as 1.0.
        voxels: number of voxels of the organ in its label.
        spacing_ml_per_voxel: volume of one voxel in millilitres (``prod(spacing_mm) / 1000``).
        confidence_weight: weight of ``1 - confidence``.
        size_weight: weight of the size term.
        small_ml: organs at or below this volume get the full size difficulty (1).
        large_ml: organs at or above this volume get no size difficulty (0); in between the size difficulty
            falls linearly with ``log(volume)``.

    Returns:
        ``(confidence_weight * (1 - confidence) + size_weight * size_term) / (confidence_weight + size_weight)``.
    """
    if confidence_weight < 0 or size_weight < 0 or confidence_weight + size_weight <= 0:
        raise ValueError("difficulty weights must be non-negative and not both zero")
    if not 0 < small_ml < large_ml:
        raise ValueError(f"need 0 < small_ml < large_ml, got {small_ml} and {large_ml}")
    conf = 1.0 if confidence is None else float(np.clip(confidence, 0.0, 1.0))
    ml = max(float(voxels), 0.0) * float(spacing_ml_per_voxel)
    if ml <= small_ml:
        size_term = 1.0
    elif ml >= large_ml:
        size_term = 0.0
    else:
        size_term = 1.0 - math.log(ml / small_ml) / math.log(large_ml / small_ml)
    value = (confidence_weight * (1.0 - conf) + size_weight * size_term) / (confidence_weight + size_weight)
    return float(np.clip(value, 0.0, 1.0))


def _check_pacing(start_fraction: float, full_at: float, kind: str) -> None:
    if not 0.0 < start_fraction <= 1.0:
        raise ValueError(f"start_fraction must be in (0, 1], got {start_fraction}")
    if not 0.0 <= full_at <= 1.0:
        raise ValueError(f"full_at must be in [0, 1], got {full_at}")
    if kind not in PACING_KINDS:
        raise ValueError(f"unknown pacing {kind!r}; choose one of {', '.join(PACING_KINDS)}")


def pacing(progress: float, start_fraction: float = 0.3, full_at: float = 0.7, kind: str = "linear") -> float:
    """Fraction of the samples, easiest first, available at training ``progress``.

    Args:
        progress: fraction of training done, clipped to ``[0, 1]``.
        start_fraction: fraction available at the start, in ``(0, 1]``.
        full_at: progress at which every sample is available, in ``[0, 1]``.
        kind: ``"linear"`` grows linearly; ``"root"`` grows fast first, as the square-root competence of
            Platanios et al. (``sqrt(s^2 + (1 - s^2) t)``); ``"step"`` grows in 4 equal jumps.

    Returns:
        A fraction in ``[start_fraction, 1]``, non-decreasing in ``progress``, 1.0 from ``full_at`` on.
    """
    _check_pacing(start_fraction, full_at, kind)
    p = float(np.clip(progress, 0.0, 1.0))
    t = 1.0 if p >= full_at else p / full_at
    s = start_fraction
    if kind == "linear":
        value = s + (1.0 - s) * t
    elif kind == "root":
        value = math.sqrt(s * s + (1.0 - s * s) * t)
    else:
        value = s + (1.0 - s) * math.floor(t * _STEP_LEVELS + 1e-9) / _STEP_LEVELS
    return float(min(max(value, s), 1.0))


def curriculum_pool(
    difficulties: np.ndarray,
    progress: float,
    rng: np.random.Generator,
    sigma: float = 0.1,
    start_fraction: float = 0.3,
    full_at: float = 0.7,
    kind: str = "linear",
) -> np.ndarray:
    """Indices of the samples available at ``progress``, easiest (after perturbation) first.

    Args:
        difficulties: ``(N,)`` difficulties in ``[0, 1]``.
        progress: fraction of training done.
        rng: draws the perturbation (fresh noise on every call).
        sigma: standard deviation of the Gaussian perturbation of the difficulties; 0 keeps the exact order.
        start_fraction, full_at, kind: see :func:`pacing`.

    Returns:
        int64 array of the first ``max(1, ceil(pacing * N))`` indices in perturbed-difficulty order.
    """
    d = np.asarray(difficulties, dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise ValueError("the curriculum needs at least one sample")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    frac = pacing(progress, start_fraction, full_at, kind)
    if sigma > 0:
        d = d + rng.normal(0.0, sigma, size=d.size)
    order = np.argsort(d, kind="stable")
    count = max(1, min(d.size, math.ceil(frac * d.size - 1e-9)))
    return order[:count].astype(np.int64)


class CurriculumSampler:
    """Draws one sample index per training step, following the curriculum.

    The draw of step ``s`` depends only on ``(seed, s)`` and the rank: a generator seeded with
    ``(seed, s)`` perturbs the difficulties and shuffles the available pool, and rank ``r`` takes element
    ``r`` of the shuffled pool, so ranks draw distinct samples whenever the pool is at least ``world_size``
    long, and a resumed run draws exactly the sequence it would have drawn.

    Args:
        difficulties: ``(N,)`` difficulties (see :func:`difficulty`).
        total_steps: number of training steps; ``progress = step / total_steps``.
        seed: non-negative integer seed.
        sigma, start_fraction, full_at, kind: see :func:`curriculum_pool`.
        enabled: ``False`` samples uniformly among all samples (the no-curriculum ablation).
        rank: this process's rank, in ``[0, world_size)``.
        world_size: number of processes drawing samples.
    """

    def __init__(
        self,
        difficulties: np.ndarray,
        total_steps: int,
        seed: int,
        sigma: float = 0.1,
        start_fraction: float = 0.3,
        full_at: float = 0.7,
        kind: str = "linear",
        enabled: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.difficulties = np.asarray(difficulties, dtype=np.float64).reshape(-1)
        if self.difficulties.size == 0:
            raise ValueError("the curriculum needs at least one sample")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        _check_pacing(start_fraction, full_at, kind)
        self.total_steps = int(total_steps)
        self.seed = int(seed)
        self.sigma = float(sigma)
        self.start_fraction = float(start_fraction)
        self.full_at = float(full_at)
        self.kind = kind
        self.enabled = bool(enabled)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.last_step: int | None = None

    def __len__(self) -> int:
        return int(self.difficulties.size)

    def progress(self, step: int) -> float:
        """Fraction of training done at ``step``, in ``[0, 1]``."""
        return float(np.clip(step / self.total_steps, 0.0, 1.0))

    def _rng(self, step: int) -> np.random.Generator:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return np.random.default_rng([self.seed, int(step)])

    def pool(self, step: int) -> np.ndarray:
        """Indices available at ``step`` (all of them when the curriculum is disabled), in draw order."""
        rng = self._rng(step)
        if not self.enabled:
            return rng.permutation(len(self)).astype(np.int64)
        pool = curriculum_pool(
            self.difficulties,
            self.progress(step),
            rng,
            sigma=self.sigma,
            start_fraction=self.start_fraction,
            full_at=self.full_at,
            kind=self.kind,
        )
        return pool[rng.permutation(pool.size)]

    def sample(self, step: int) -> int:
        """The sample index this rank trains on at ``step`` (deterministic for seed, step and rank)."""
        pool = self.pool(step)
        self.last_step = int(step)
        return int(pool[self.rank % pool.size])

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly state: configuration, number of samples and last step drawn."""
        return {
            "num_samples": len(self),
            "total_steps": self.total_steps,
            "seed": self.seed,
            "sigma": self.sigma,
            "start_fraction": self.start_fraction,
            "full_at": self.full_at,
            "kind": self.kind,
            "enabled": self.enabled,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict` (the difficulties stay those given at construction).

        Raises:
            ValueError: when the number of samples differs from the saved one.
        """
        if int(state["num_samples"]) != len(self):
            raise ValueError(
                f"the saved curriculum has {state['num_samples']} samples, this one has {len(self)}"
            )
        _check_pacing(float(state["start_fraction"]), float(state["full_at"]), str(state["kind"]))
        self.total_steps = int(state["total_steps"])
        self.seed = int(state["seed"])
        self.sigma = float(state["sigma"])
        self.start_fraction = float(state["start_fraction"])
        self.full_at = float(state["full_at"])
        self.kind = str(state["kind"])
        self.enabled = bool(state["enabled"])
        last = state.get("last_step")
        self.last_step = None if last is None else int(last)
