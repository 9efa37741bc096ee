import numpy as np
import pytest

from search.report.front import pareto_mask

DIRS = ("maximize", "minimize", "minimize")


def test_dominated_points_are_dropped():
    values = np.array(
        [
            [0.9, 1.0, 10.0],  # front
            [0.8, 0.5, 10.0],  # front: faster
            [0.8, 1.0, 10.0],  # dominated by the first
            [0.7, 2.0, 5.0],  # front: smallest
            [0.7, 2.0, 6.0],  # dominated by the previous
        ]
    )
    assert pareto_mask(values, DIRS).tolist() == [True, True, False, True, False]


def test_duplicates_are_all_kept():
    values = np.array([[0.9, 1.0, 1.0], [0.9, 1.0, 1.0]])
    assert pareto_mask(values, DIRS).tolist() == [True, True]


def test_shape_is_checked():
    with pytest.raises(ValueError):
        pareto_mask(np.zeros((3, 2)), DIRS)
