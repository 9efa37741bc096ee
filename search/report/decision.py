"""Which model to ship: the best one inside a latency and size budget, or the knee of the front.

With a budget, the choice is the most accurate front member within it (ties to the
faster; latencies re-timed together where they were, ``retime``), the runner-up beside it, and what one more millisecond, or one more kilobyte,
of budget would buy. Without one, it is the knee: the front member nearest the ideal
point (best accuracy, latency and size at once) once each objective is scaled over the
front (``hypervolume.Scaling``: error, log latency, log size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .front import Report, TrialPoint
from .hypervolume import Scaling


@dataclass(frozen=True)
class Decision:
    max_latency_ms: float | None
    max_size_kb: float | None
    choice: TrialPoint | None  # None: nothing on the front fits the budget
    runner_up: TrialPoint | None
    one_more_ms: TrialPoint | None  # the choice with 1 ms more budget, where that is another model
    one_more_kb: TrialPoint | None  # the choice with 1 KB more budget, where that is another model

    @property
    def knee(self) -> bool:
        return self.max_latency_ms is None and self.max_size_kb is None


def decide(report: Report) -> Decision:
    """The choice on ``report``'s front under its budget (``max_latency_ms``, ``max_size_kb``)."""
    front, max_latency_ms, max_size_kb = report.front, report.max_latency_ms, report.max_size_kb
    if max_latency_ms is None and max_size_kb is None:
        ranked = _by_distance_to_ideal(front)
        return Decision(None, None, ranked[0] if ranked else None, ranked[1] if len(ranked) > 1 else None, None, None)
    ranked = _within(front, max_latency_ms, max_size_kb)
    choice = ranked[0] if ranked else None

    def with_more(ms: float, kb: float) -> TrialPoint | None:
        more = _within(front, _plus(max_latency_ms, ms), _plus(max_size_kb, kb))
        return more[0] if more and more[0] != choice else None

    return Decision(
        max_latency_ms, max_size_kb, choice, ranked[1] if len(ranked) > 1 else None,
        with_more(1.0, 0.0) if max_latency_ms is not None else None,
        with_more(0.0, 1.0) if max_size_kb is not None else None,
    )


def _within(front: Sequence[TrialPoint], max_latency_ms: float | None, max_size_kb: float | None) -> list[TrialPoint]:
    """Front members inside the budget, best first: most accurate, ties to the faster."""
    fits = [
        p for p in front
        if (max_latency_ms is None or p.fair_latency_ms <= max_latency_ms) and (max_size_kb is None or p.size_kb <= max_size_kb)
    ]
    return sorted(fits, key=lambda p: (-p.accuracy, p.fair_latency_ms, p.size_kb))


def _plus(limit: float | None, extra: float) -> float | None:
    return None if limit is None else limit + extra


def _by_distance_to_ideal(front: Sequence[TrialPoint]) -> list[TrialPoint]:
    if not front:
        return []
    points = np.array([[1.0 - p.accuracy, np.log(p.fair_latency_ms), np.log(p.size_kb)] for p in front])
    scaled = Scaling.of([points]).apply(points)
    order = np.argsort(np.linalg.norm(scaled, axis=1), kind="stable")
    return [front[i] for i in order]


def describe(decision: Decision) -> list[str]:
    """The decision in a few sentences, for the terminal and the report page."""
    def model(p: TrialPoint) -> str:
        return (f"trial {p.number} ({p.compression}): validation accuracy {p.accuracy:.4f}, "
                f"p50 {p.fair_latency_ms:.3f} ms, {p.size_kb:.1f} KB")

    if decision.knee:
        if decision.choice is None:
            return ["no feasible trial is complete yet: nothing to choose from"]
        lines = [f"without a budget, the knee of the front: {model(decision.choice)}"]
        if decision.runner_up is not None:
            lines.append(f"next nearest the ideal: {model(decision.runner_up)}")
        lines.append("give --max-latency-ms and/or --max-size-kb to choose within a budget")
        return lines
    budget = " and ".join(
        text for text in (
            None if decision.max_latency_ms is None else f"{decision.max_latency_ms:g} ms",
            None if decision.max_size_kb is None else f"{decision.max_size_kb:g} KB",
        ) if text
    )
    if decision.choice is None:
        lines = [f"no front member fits within {budget}"]
    else:
        lines = [f"best within {budget}: {model(decision.choice)}"]
    if decision.runner_up is not None:
        lines.append(f"runner-up: {model(decision.runner_up)}")
    for more, extra in ((decision.one_more_ms, "1 ms"), (decision.one_more_kb, "1 KB")):
        if more is None:
            continue
        if decision.choice is None:
            lines.append(f"{extra} more would reach {model(more)}")
        else:
            gain = more.accuracy - decision.choice.accuracy
            lines.append(f"{extra} more would buy {100 * gain:+.2f} points: {model(more)}")
    return lines
