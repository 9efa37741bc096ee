"""How much of the objective space a study's front covers, and how that grew trial by trial.

Objectives are taken as validation error, log latency and log size (all minimised; logs
because latencies and sizes of one study span orders of magnitude), scaled so that 0 is
the best value any compared trial reached and 1 the worst value on their joint front,
with the reference point at 1.1 in each. One :class:`Scaling` must serve every study and
every prefix that are compared: hypervolumes under different scalings are not comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from optuna.trial import FrozenTrial

from ..study import attrs
from ..study.loop import counts_towards_budget
from .front import pareto_mask

REFERENCE = 1.1  # in scaled units: trials just beyond the joint front's worst still count


def objective_points(trials: Sequence[FrozenTrial]) -> np.ndarray:
    """(error, log latency, log size) of the complete, feasible, non-repeat trials (n x 3)."""
    return np.array(
        [[1.0 - t.values[0], np.log(t.values[1]), np.log(t.values[2])] for t in counted_feasible(trials)]
    ).reshape(-1, 3)


def counted_feasible(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count towards the budget and keep within the study's limits."""
    return [
        t for t in trials
        if counts_towards_budget(t) and all(v <= 0 for v in t.user_attrs.get(attrs.CONSTRAINT_VIOLATION) or [])
    ]


@dataclass(frozen=True)
class Scaling:
    ideal: np.ndarray  # best value of each objective over every point compared
    nadir: np.ndarray  # worst value of each objective on the joint front

    @classmethod
    def of(cls, point_sets: Sequence[np.ndarray]) -> Scaling:
        points = np.concatenate([p for p in point_sets if len(p)] or [np.zeros((0, 3))])
        if len(points) == 0:
            return cls(np.zeros(3), np.ones(3))
        front = points[pareto_mask(points, ("minimize",) * 3)]
        ideal, nadir = points.min(axis=0), front.max(axis=0)
        return cls(ideal, np.where(nadir > ideal, nadir, ideal + 1.0))  # a flat objective still scales

    def apply(self, points: np.ndarray) -> np.ndarray:
        return (points - self.ideal) / (self.nadir - self.ideal) / REFERENCE


def hypervolume(points: np.ndarray) -> float:
    """Volume dominated by ``points`` (n x 3, minimised, scaled) within the unit cube up to
    (1, 1, 1): a sweep over the first objective of the 2-D areas of the points before each slice."""
    pts = points[np.all(points < 1.0, axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[np.argsort(pts[:, 0])]
    volume = 0.0
    for i in range(len(pts)):
        depth = (pts[i + 1, 0] if i + 1 < len(pts) else 1.0) - pts[i, 0]
        if depth > 0:
            volume += depth * _area(pts[: i + 1, 1:])
    return volume


def _area(points: np.ndarray) -> float:
    area, best_y = 0.0, 1.0
    for x, y in sorted(map(tuple, points)):
        if y < best_y:
            area += (1.0 - x) * (best_y - y)
            best_y = y
    return area


def hypervolume_by_trial(trials: Sequence[FrozenTrial], scaling: Scaling | None = None) -> list[tuple[int, float]]:
    """(number of complete trials so far, hypervolume of their feasible front) after each
    complete trial, in the order they completed; scaled over the study itself by default."""
    done = sorted(counted_feasible(trials), key=lambda t: (t.datetime_complete or t.datetime_start, t.number))
    points = objective_points(done)
    scaled = (scaling or Scaling.of([points])).apply(points)
    complete = sorted(
        (t for t in trials if counts_towards_budget(t)),
        key=lambda t: (t.datetime_complete or t.datetime_start, t.number),
    )
    order = {t.number: i for i, t in enumerate(complete, start=1)}
    # At most CURVE_POINTS prefixes: each hypervolume is quadratic in the front's size.
    ends = sorted({int(i) for i in np.linspace(0, len(done) - 1, min(len(done), CURVE_POINTS)).round()})
    return [(order[done[i].number], hypervolume(scaled[: i + 1])) for i in ends]


CURVE_POINTS = 100
