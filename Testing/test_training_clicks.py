"""The fast simulated user of training steps (:class:`pesf.train.clicks.TrainingClicker`)."""

from __future__ import annotations

import numpy as np
import pytest

from pesf.errors import PesfError
from pesf.eval.clicks import ClickSimulator
from pesf.train.clicks import TrainingClicker, _erode


def _ball(shape=(64, 64, 64), center=(30, 32, 34), radius=12.0) -> np.ndarray:
    grid = np.indices(shape)
    return ((grid - np.array(center)[:, None, None, None]) ** 2).sum(0) < radius**2


@pytest.mark.parametrize("radius", [4.0, 12.0, 24.0])  # the largest goes through the half-resolution path
def test_first_click_is_deep_inside(radius):
    gt = _ball(shape=(80, 80, 80), center=(40, 38, 41), radius=radius)
    for seed in range(5):
        ijk, positive = TrainingClicker(seed).first_click(gt, (1.5, 1.5, 1.5))
        assert positive and gt[tuple(ijk)]
        # near the centre: within a fifth of the radius plus the half-resolution rounding
        assert np.linalg.norm(ijk - np.array([40, 38, 41])) <= 0.2 * radius + 2.0


def test_corrective_click_fixes_the_larger_error():
    gt = _ball()
    missed = gt.copy()
    missed[:, :, 34:] = False  # half the organ is a false negative
    ijk, positive = TrainingClicker(0).next_click(gt, missed, (1.5,) * 3)
    assert positive and gt[tuple(ijk)] and not missed[tuple(ijk)]
    spill = gt | _ball(center=(30, 32, 55), radius=8.0)  # a false positive blob beside the organ
    ijk, positive = TrainingClicker(0).next_click(gt, spill, (1.5,) * 3)
    assert not positive and spill[tuple(ijk)] and not gt[tuple(ijk)]
    # away from the border of the error when it has an interior
    assert _erode(spill & ~gt, 1)[tuple(ijk)]
    assert TrainingClicker(0).next_click(gt, gt.copy(), (1.5,) * 3) is None


def test_clicks_are_reproducible_and_vary_with_the_seed():
    gt = _ball()
    pred = _ball(center=(36, 32, 34))
    runs = [[TrainingClicker(seed).next_click(gt, pred)[0].tolist() for _ in range(1)] for seed in (1, 1, 2)]
    assert runs[0] == runs[1]
    clicks = {tuple(TrainingClicker(seed).next_click(gt, pred)[0]) for seed in range(10)}
    assert len(clicks) > 1


def test_thin_error_without_interior_still_gets_a_click():
    gt = np.zeros((20, 20, 20), bool)
    gt[5:15, 5:15, 5:15] = True
    pred = gt.copy()
    pred[5:15, 5:15, 5] = False  # a one-voxel-thin false-negative sheet: nothing survives the erosion
    ijk, positive = TrainingClicker(0).next_click(gt, pred)
    assert positive and ijk[2] == 5


def test_same_interface_and_errors_as_the_benchmark_user():
    gt = _ball()
    for user in (TrainingClicker(0), ClickSimulator(0)):
        with pytest.raises(PesfError, match="empty organ mask"):
            user.first_click(np.zeros_like(gt))
        with pytest.raises(ValueError, match="differ in shape"):
            user.next_click(gt, gt[:-1])
