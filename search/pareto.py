"""Multi-objective helpers as pure functions over arrays."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Which rows of ``values`` (n points x k objectives) no other row dominates.

    A row dominates another when it is at least as good in every objective and
    strictly better in one. Duplicated points are all kept.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(directions):
        raise ValueError(f"expected an n x {len(directions)} array, got shape {values.shape}")
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    costs = values * signs  # everything minimised
    n = len(costs)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        no_worse = np.all(costs <= costs[i], axis=1)
        better = np.any(costs < costs[i], axis=1)
        if np.any(no_worse & better):
            mask[i] = False
    return mask
