"""Tests for pesf.train.curriculum: difficulty, pacing, the perturbed pool and the sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from pesf.train.curriculum import PACING_KINDS, CurriculumSampler, curriculum_pool, difficulty, pacing

ML = 0.001  # 1 mm^3 voxels

# ---------------------------------------------------------------------------------------------- difficulty


def test_difficulty_bounds_and_directions() -> None:
    easy = difficulty(None, 1_000_000, ML)  # human label, 1000 ml
    hard = difficulty(0.0, 10, ML)  # rejected-level confidence, 0.01 ml
    assert easy == 0.0 and hard == 1.0
    assert difficulty(None, 100_000, ML) == difficulty(1.0, 100_000, ML)
    # lower confidence is harder, smaller is harder
    assert difficulty(0.5, 100_000, ML) > difficulty(0.9, 100_000, ML)
    assert difficulty(0.9, 10_000, ML) > difficulty(0.9, 100_000, ML)
    for conf in (None, 0.0, 0.3, 1.0, 1.7, -2.0):
        for vox in (0, 1, 5000, 50_000, 10**8):
            assert 0.0 <= difficulty(conf, vox, ML) <= 1.0


def test_difficulty_size_term_is_log_scale() -> None:
    only_size = {"confidence_weight": 0.0, "size_weight": 1.0}
    assert difficulty(None, 5000, ML, **only_size) == pytest.approx(1.0)  # 5 ml
    assert difficulty(None, 500_000, ML, **only_size) == pytest.approx(0.0)  # 500 ml
    assert difficulty(None, 50_000, ML, **only_size) == pytest.approx(0.5)  # geometric middle
    only_conf = {"confidence_weight": 1.0, "size_weight": 0.0}
    assert difficulty(0.25, 10, ML, **only_conf) == pytest.approx(0.75)


def test_difficulty_rejects_bad_weights() -> None:
    with pytest.raises(ValueError):
        difficulty(0.5, 10, ML, confidence_weight=0.0, size_weight=0.0)
    with pytest.raises(ValueError):
        difficulty(0.5, 10, ML, small_ml=10.0, large_ml=1.0)


# ---------------------------------------------------------------------------------------------- pacing


@pytest.mark.parametrize("kind", PACING_KINDS)
@pytest.mark.parametrize("start,full_at", [(0.3, 0.7), (0.1, 1.0), (0.5, 0.2), (1.0, 0.5), (0.2, 0.0)])
def test_pacing_monotone_and_bounded(kind, start, full_at) -> None:
    progress = np.linspace(-0.2, 1.2, 281)
    values = np.array([pacing(p, start, full_at, kind) for p in progress])
    assert np.all(np.diff(values) >= 0)
    assert np.all((values >= start) & (values <= 1.0))
    assert values[0] == pytest.approx(start if full_at > 0 else 1.0)
    assert np.all(values[progress >= full_at] == 1.0)


def test_pacing_shapes() -> None:
    assert pacing(0.35, 0.3, 0.7, "linear") == pytest.approx(0.65)
    assert pacing(0.35, 0.3, 0.7, "root") > pacing(0.35, 0.3, 0.7, "linear")
    assert len({pacing(p, 0.3, 0.7, "step") for p in np.linspace(0, 1, 101)}) == 5
    with pytest.raises(ValueError, match="pacing"):
        pacing(0.5, kind="cosine")
    with pytest.raises(ValueError):
        pacing(0.5, start_fraction=0.0)


# ---------------------------------------------------------------------------------------------- pool


def test_pool_without_noise_is_the_easiest_fraction() -> None:
    d = np.random.default_rng(0).random(50)
    pool = curriculum_pool(d, 0.0, np.random.default_rng(1), sigma=0.0)
    assert len(pool) == 15
    assert set(pool) == set(np.argsort(d)[:15])
    assert np.all(np.diff(d[pool]) >= 0)
    full = curriculum_pool(d, 0.9, np.random.default_rng(1), sigma=0.0)
    assert sorted(full) == list(range(50))


def test_pool_has_at_least_one_sample_and_fresh_noise() -> None:
    d = np.linspace(0, 1, 3)
    assert len(curriculum_pool(d, 0.0, np.random.default_rng(0), start_fraction=0.01)) == 1
    rng = np.random.default_rng(0)
    d = np.linspace(0, 1, 200)
    pools = [tuple(curriculum_pool(d, 0.1, rng, sigma=0.1)) for _ in range(3)]
    assert len(set(pools)) == 3  # the perturbation is drawn anew on every call
    with pytest.raises(ValueError):
        curriculum_pool(np.array([]), 0.5, rng)


# ---------------------------------------------------------------------------------------------- sampler


def _entry_and_first_draw(sampler: CurriculumSampler, steps: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Step at which each sample first appears in the pool and is first drawn (steps+1 if never)."""
    n = len(sampler)
    entry = np.full(n, steps + 1)
    first = np.full(n, steps + 1)
    draws = []
    for step in range(steps):
        pool = sampler.pool(step)
        entry[pool] = np.minimum(entry[pool], step)
        idx = sampler.sample(step)
        draws.append(idx)
        first[idx] = min(first[idx], step)
    return entry, first, draws


def test_sigma_zero_draws_only_the_easiest_early() -> None:
    d = np.random.default_rng(3).random(40)
    sampler = CurriculumSampler(d, total_steps=400, seed=7, sigma=0.0)
    easiest = set(np.argsort(d)[:12].tolist())  # 30 % of 40
    assert all(sampler.sample(s) in easiest for s in range(5))
    entry, _, _ = _entry_and_first_draw(sampler, 400)
    order = np.argsort(d)
    assert np.all(np.diff(entry[order]) >= 0)  # strict easy-first entry


def test_sigma_perturbs_the_order_but_keeps_it_mostly_easy_first() -> None:
    d = np.random.default_rng(4).random(60)
    sampler = CurriculumSampler(d, total_steps=600, seed=11, sigma=0.1)
    entry, first, draws = _entry_and_first_draw(sampler, 600)
    rho_first = spearmanr(d, first).statistic
    rho_entry = spearmanr(d, entry).statistic
    assert 0.3 < rho_first < 1.0
    assert 0.5 < rho_entry < 1.0
    order = np.argsort(d)
    assert np.any(np.diff(entry[order]) < 0)  # some harder sample came in before an easier one
    # the draws get harder over training
    draw_d = d[np.array(draws)]
    assert draw_d[:100].mean() < draw_d[250:350].mean() - 0.1
    assert draw_d[:100].mean() < draw_d[-150:].mean() - 0.1


def test_disabled_curriculum_is_uniform() -> None:
    d = np.linspace(0, 1, 20)
    sampler = CurriculumSampler(d, total_steps=2000, seed=5, enabled=False)
    draws = np.array([sampler.sample(s) for s in range(2000)])
    counts = np.bincount(draws, minlength=20)
    assert counts.min() > 60  # expected 100 each
    assert abs(d[draws[:200]].mean() - 0.5) < 0.1


def test_sampler_is_deterministic_and_resumable() -> None:
    d = np.random.default_rng(6).random(30)
    a = CurriculumSampler(d, total_steps=100, seed=1)
    b = CurriculumSampler(d, total_steps=100, seed=1)
    seq = [a.sample(s) for s in range(100)]
    assert [b.sample(s) for s in range(100)] == seq
    # a resumed run (fresh object, state loaded) continues with the same draws
    state = json.loads(json.dumps(a.state_dict()))
    c = CurriculumSampler(d, total_steps=1, seed=99, sigma=0.5)
    c.load_state_dict(state)
    assert [c.sample(s) for s in range(50, 100)] == seq[50:]
    assert c.last_step == 99
    other_seed = CurriculumSampler(d, total_steps=100, seed=2)
    assert [other_seed.sample(s) for s in range(100)] != seq
    with pytest.raises(ValueError, match="samples"):
        CurriculumSampler(d[:10], total_steps=100, seed=1).load_state_dict(state)


def test_ranks_draw_different_samples() -> None:
    d = np.random.default_rng(8).random(30)
    ranks = [CurriculumSampler(d, total_steps=100, seed=3, rank=r, world_size=3) for r in range(3)]
    for step in range(100):
        draws = {s.sample(step) for s in ranks}
        assert len(draws) == 3
    for enabled in (True, False):
        r0 = CurriculumSampler(d, 100, seed=3, rank=0, world_size=2, enabled=enabled)
        r1 = CurriculumSampler(d, 100, seed=3, rank=1, world_size=2, enabled=enabled)
        assert [r0.sample(s) for s in range(100)] != [r1.sample(s) for s in range(100)]


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        CurriculumSampler(np.array([]), 10, 0)
    with pytest.raises(ValueError):
        CurriculumSampler(np.ones(3), 0, 0)
    with pytest.raises(ValueError):
        CurriculumSampler(np.ones(3), 10, 0, rank=2, world_size=2)
    with pytest.raises(ValueError):
        CurriculumSampler(np.ones(3), 10, 0).sample(-1)
