"""Stop a candidate that cannot reach the front, from the study's own learning curves.

Optuna's pruners do not work for multi-objective studies, so this is the search's own.
Latency and size of a candidate are known before it trains (the cost stage measures
the untrained network of its final shape); accuracy is what training reveals. Each
trial records its learning curve: validation accuracy at fixed fractions of its proxy
training. For every complete trial of the study, ``final accuracy - curve[k]`` is how
much it still gained after point k (through the rest of training, pruning, fine-tune
and quantization). A candidate's optimistic final accuracy at point k is its accuracy
there plus the largest gain any complete trial made from k, plus a margin. If some
complete trial is at least as fast, at least as small and already more accurate than
that, the candidate cannot reach the front and is stopped.

Pure functions of plain values: the objective applies the rule while a trial trains,
and :func:`replay` asks of a finished study which trials the rule would have stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from optuna.trial import FrozenTrial, TrialState

from . import attrs

MIN_CURVES = 5  # complete trials with a learning curve before the rule may stop anything
# Accuracy added to the largest gain seen: a candidate may do a little better than any so far.
# Replayed over 15 finished digits studies, 0.01 would have stopped 25 trials and one front
# member (it gained 0.077 from three quarters of training to its deployed file, where the
# most before it was 0.049); 0.03 stops 11 and no front member (BENCHMARKS.md).
MARGIN = 0.03


CURVE_POINTS = 4


def curve_fractions(epochs: float) -> tuple[float, ...]:
    """Where the learning curve is taken: after each quarter of training (each second
    epoch of digits' eight; four times within CIFAR-10's one). Each point costs a pass
    over up to 2,000 validation images; per epoch, on digits, that was 4% of a trial."""
    return tuple(i / CURVE_POINTS for i in range(1, CURVE_POINTS + 1))


@dataclass(frozen=True)
class Finished:
    """What the rule needs of a complete trial."""

    number: int
    accuracy: float  # the objective: the deployed file's validation accuracy
    latency_ms: float
    size_kb: float
    curve: tuple[float, ...]  # validation accuracy at each of ``curve_fractions``


@dataclass(frozen=True)
class Stop:
    """Why a candidate was stopped at curve point ``point``."""

    point: int
    fraction: float
    accuracy: float  # the candidate's, at that point
    optimistic: float  # the most it could still reach: accuracy + max_gain + MARGIN
    max_gain: float
    curves: int  # complete trials the gain was taken from
    dominated_by: Finished
    latency_ms: float  # the candidate's, measured before training
    size_kb: float

    def as_dict(self) -> dict:
        return {
            "fraction": self.fraction,
            "accuracy": round(self.accuracy, 6),
            "optimistic": round(self.optimistic, 6),
            "max_gain": round(self.max_gain, 6),
            "curves": self.curves,
            "latency_ms": self.latency_ms,
            "size_kb": round(self.size_kb, 3),
            "dominated_by": {
                "trial": self.dominated_by.number,
                "accuracy": self.dominated_by.accuracy,
                "latency_ms": self.dominated_by.latency_ms,
                "size_kb": round(self.dominated_by.size_kb, 3),
            },
        }

    def reason(self, epochs: float) -> str:
        d = self.dominated_by
        return (
            f"stopped at epoch {self.fraction * epochs:g}/{epochs:g}: validation accuracy {self.accuracy:.3f}, at most "
            f"{self.optimistic:.3f} by the end (the largest gain of {self.curves} complete trials from here, "
            f"{self.max_gain:+.3f}, and {MARGIN}); trial {d.number} is as fast ({d.latency_ms:.4f} <= "
            f"{self.latency_ms:.4f} ms) and as small ({d.size_kb:.1f} <= {self.size_kb:.1f} KB) and already "
            f"{d.accuracy:.3f}"
        )


def check(
    point: int, fraction: float, accuracy: float, latency_ms: float, size_kb: float, finished: Sequence[Finished]
) -> Stop | None:
    """The rule at curve point ``point``: a Stop if the candidate cannot reach the front."""
    curves = [f for f in finished if len(f.curve) > point]
    if len(curves) < MIN_CURVES:
        return None
    max_gain = max(f.accuracy - f.curve[point] for f in curves)
    optimistic = accuracy + max_gain + MARGIN
    dominating = [
        f for f in finished if f.latency_ms <= latency_ms and f.size_kb <= size_kb and f.accuracy > optimistic
    ]
    if not dominating:
        return None
    best = max(dominating, key=lambda f: (f.accuracy, -f.latency_ms))
    return Stop(point, fraction, accuracy, optimistic, max_gain, len(curves), best, latency_ms, size_kb)


def finished_trials(trials: Sequence[FrozenTrial]) -> list[Finished]:
    """The complete, feasible trials that trained (repeats add nothing), as the rule sees them."""
    out = []
    for t in trials:
        ua = t.user_attrs
        if t.state != TrialState.COMPLETE or attrs.REPEAT_OF in ua or t.values is None:
            continue
        if any(v > 0 for v in ua.get(attrs.CONSTRAINT_VIOLATION) or []):
            continue  # an infeasible trial is on no front: it dominates nothing that matters
        accuracy, latency_ms, size_kb = t.values
        out.append(Finished(t.number, accuracy, latency_ms, size_kb, tuple(ua.get(attrs.LEARNING_CURVE) or ())))
    return out


def replay(trials: Sequence[FrozenTrial], fractions: Sequence[float]) -> dict[int, Stop]:
    """Which complete trials of a finished study the rule would have stopped, and where
    (baselines never are): each judged at each curve point against the trials complete before it started,
    with its own final latency and size as the cost stage would have measured them."""
    finished = {f.number: f for f in finished_trials(trials)}
    by_number = {t.number: t for t in trials}
    stops = {}
    for number, f in finished.items():
        if attrs.BASELINE in by_number[number].user_attrs:
            continue  # baselines run to the end, as in the search
        started = by_number[number].datetime_start
        before = [
            g for g in finished.values()
            if by_number[g.number].datetime_complete is not None and by_number[g.number].datetime_complete <= started
        ]
        for point, accuracy in enumerate(f.curve):
            stop = check(point, fractions[point], accuracy, f.latency_ms, f.size_kb, before)
            if stop is not None:
                stops[number] = stop
                break
    return stops
