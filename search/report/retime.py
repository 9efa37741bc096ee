"""Fair latencies for the models a report ranks: timed again together, in interleaved rounds.

Each trial was timed once, during the search, in whatever phase the machine was in then
(another process, a CPU clock, a thermal state). Ranking the front on those figures can
favour a candidate only because it was timed in a quiet minute. Before a report is
written, the front members and baselines are timed again by the study's measurer: every
model once per round, several rounds, the median over rounds (as ``bench/`` compares
variants), so that a slow phase affects all of them alike.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable

from ..board.timing import TimingPlan, measuring_setup
from ..stages.measure import Measurer

ROUNDS = 5
# One load a round, a short look: five rounds of it cost about what one search-time
# measurement costs, and the median over rounds is what removes the machine's drift.
PLAN = TimingPlan(sessions=1, warmup_runs=10, warmup_seconds=0.05, min_runs=50, min_seconds=0.1, max_runs=1000,
                  max_seconds=2.0)


@dataclass(frozen=True)
class Retimed:
    p50_ms: float  # median over rounds of each round's median
    p90_ms: float  # median over rounds of each round's 90th percentile
    rounds: int


def retime(
    models: dict[Hashable, bytes], measurer: Measurer, rounds: int = ROUNDS, plan: TimingPlan = PLAN,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> dict[Hashable, Retimed]:
    """Each of ``models`` (a key, such as a trial number: an ONNX file) timed once per round,
    ``rounds`` rounds."""
    stats = {number: [] for number in models}
    total, done = rounds * len(models), 0
    for _ in range(rounds):
        for number, onnx in models.items():
            stats[number].append(measurer.measure(onnx, plan).stats)
            done += 1
            if on_progress is not None:
                on_progress(done, total, total)
    return {
        number: Retimed(
            statistics.median(s.p50_ms for s in runs), statistics.median(s.p90_ms for s in runs), len(runs)
        )
        for number, runs in stats.items()
    }


def same_setup(measurer: Measurer, measured_on: Iterable[dict]) -> bool:
    """Whether ``measurer`` times where and as the search did: re-timing elsewhere would put
    another machine's figures beside the search's."""
    setups = {measuring_setup(m) for m in measured_on}
    return setups == {measurer.identity()}
