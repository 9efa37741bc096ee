"""Hypervolume of a front and its growth trial by trial (search/report/hypervolume.py)."""

from __future__ import annotations

import numpy as np
import pytest

from search.report.hypervolume import REFERENCE, Scaling, hypervolume, hypervolume_by_trial, objective_points
from test_front import sample_trials


def test_the_volume_of_boxes_is_their_union_within_the_unit_cube():
    assert hypervolume(np.array([[0.5, 0.5, 0.5]])) == pytest.approx(0.125)
    # Two boxes of 0.5 and 0.25 that share 0.125.
    assert hypervolume(np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.5]])) == pytest.approx(0.625)
    # A dominated point and points outside the cube add nothing.
    assert hypervolume(np.array([[0.5, 0.5, 0.5], [0.6, 0.6, 0.6], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])) == pytest.approx(0.125)
    assert hypervolume(np.zeros((0, 3))) == 0.0


def test_the_scaling_puts_the_best_values_at_zero_and_the_joint_front_s_worst_at_the_reference():
    points = np.array([[0.1, 0.0, 2.0], [0.3, -1.0, 3.0], [0.5, 1.0, 4.0]])  # the third is dominated by the first
    scaled = Scaling.of([points]).apply(points)
    assert scaled.min(axis=0) == pytest.approx([0, 0, 0])
    assert scaled[:2].max(axis=0) == pytest.approx([1 / REFERENCE] * 3)


def test_the_curve_grows_with_each_feasible_trial_and_ends_at_the_whole_front_s_volume():
    trials = sample_trials()
    curve = hypervolume_by_trial(trials)
    # Complete trials 0, 1, 2, 3, 4, 7 in order; 4 is over a limit, so it adds no point.
    assert [n for n, _ in curve] == [1, 2, 3, 4, 6]
    volumes = [hv for _, hv in curve]
    assert volumes == sorted(volumes) and volumes[0] > 0
    assert volumes[2] == volumes[1]  # trial 2 is dominated by trial 1
    points = objective_points(trials)
    assert volumes[-1] == pytest.approx(hypervolume(Scaling.of([points]).apply(points)))
