"""The early-stop rule on crafted learning curves, its replay over a finished study, and
a stopped trial as the loop and a real objective record it."""

from __future__ import annotations

import datetime

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from search.progress import SearchProgress
from search.study import attrs, early_stop, loop
from search.study.config import StudyConfig
from search.study.early_stop import MARGIN, MIN_CURVES, Finished, check, replay
from search.study.storage import TrialStartLock, open_storage

FRACTIONS = early_stop.curve_fractions(8)


def _finished(n: int = MIN_CURVES, accuracy=0.90, latency_ms=1.0, size_kb=10.0) -> list[Finished]:
    """``n`` complete trials that each gained 0.20 from the first point to the end, 0.05 from the last."""
    return [Finished(i, accuracy, latency_ms, size_kb, (accuracy - 0.20, accuracy - 0.10, accuracy - 0.07, accuracy - 0.05))
            for i in range(n)]


def test_curve_points_are_the_quarters_of_training():
    assert early_stop.curve_fractions(8) == (0.25, 0.5, 0.75, 1.0)
    assert early_stop.curve_fractions(1) == early_stop.curve_fractions(0.5) == (0.25, 0.5, 0.75, 1.0)


def test_a_hopeless_candidate_is_stopped_with_the_numbers_behind_it():
    # At the first point it has 0.50; the largest gain any trial made from there is 0.20:
    # at most 0.71 by the end, and trial 0 is as fast, as small and already 0.90.
    stop = check(0, 0.25, 0.50, latency_ms=2.0, size_kb=20.0, finished=_finished())
    assert stop is not None
    assert stop.optimistic == pytest.approx(0.50 + 0.20 + MARGIN)
    assert stop.max_gain == pytest.approx(0.20) and stop.curves == MIN_CURVES
    assert stop.dominated_by.number == 0 and stop.dominated_by.accuracy == 0.90
    record = stop.as_dict()
    assert record["dominated_by"]["trial"] == 0 and record["accuracy"] == 0.5 and record["latency_ms"] == 2.0
    assert "epoch 2/8" in stop.reason(8) and "trial 0" in stop.reason(8)


def test_a_promising_candidate_is_kept():
    # 0.75 at the first point may still reach 0.96 > 0.90: it may beat every complete trial.
    assert check(0, 0.25, 0.75, 2.0, 20.0, _finished()) is None
    # Late in training the gains left are small: 0.80 at the last point is at most 0.86.
    assert check(3, 1.0, 0.80, 2.0, 20.0, _finished()) is not None
    assert check(3, 1.0, 0.85, 2.0, 20.0, _finished()) is None


def test_only_a_trial_as_fast_and_as_small_can_stop_a_candidate():
    finished = _finished()
    assert check(0, 0.25, 0.50, latency_ms=0.5, size_kb=20.0, finished=finished) is None  # faster than all
    assert check(0, 0.25, 0.50, latency_ms=2.0, size_kb=5.0, finished=finished) is None  # smaller than all
    assert check(0, 0.25, 0.50, latency_ms=1.0, size_kb=10.0, finished=finished) is not None  # ties count


def test_nothing_is_stopped_before_the_study_has_enough_curves():
    assert check(0, 0.25, 0.10, 2.0, 20.0, _finished(MIN_CURVES - 1)) is None
    # Trials without a curve (older studies) do not count towards the gains either.
    no_curves = [Finished(i, 0.9, 1.0, 10.0, ()) for i in range(10)]
    assert check(0, 0.25, 0.10, 2.0, 20.0, no_curves) is None


def test_the_gain_is_the_largest_any_trial_made():
    finished = _finished() + [Finished(9, 0.95, 5.0, 50.0, (0.35, 0.6, 0.8, 0.9))]  # gained 0.60 from point 0
    assert check(0, 0.25, 0.30, 2.0, 20.0, finished) is None  # 0.30 + 0.60 + margin > 0.90
    assert check(0, 0.25, 0.30, 2.0, 20.0, _finished()) is not None


def _frozen(number, values, curve, start, end, **user_attrs):
    trial = optuna.trial.create_trial(
        values=list(values), params={"x": number}, distributions={"x": IntDistribution(0, 100)},
        user_attrs={attrs.LEARNING_CURVE: list(curve), **user_attrs},
    )
    trial.number = number
    base = datetime.datetime(2026, 12, 1)
    trial.datetime_start = base + datetime.timedelta(seconds=start)
    trial.datetime_complete = base + datetime.timedelta(seconds=end)
    return trial


def test_replay_judges_each_trial_against_those_complete_before_it_started():
    good = [_frozen(i, (0.90, 1.0, 10.0), (0.7, 0.8, 0.83, 0.85), i, i + 1) for i in range(MIN_CURVES)]
    weak_late = _frozen(10, (0.55, 2.0, 20.0), (0.3, 0.4, 0.5, 0.52), 10, 11)
    weak_early = _frozen(11, (0.55, 2.0, 20.0), (0.3, 0.4, 0.5, 0.52), 0.5, 11)  # started before any was done
    strong = _frozen(12, (0.93, 2.0, 20.0), (0.72, 0.85, 0.9, 0.92), 10, 11)
    weak_baseline = _frozen(13, (0.55, 2.0, 20.0), (0.3, 0.4, 0.5, 0.52), 10, 11, **{attrs.BASELINE: "b"})
    stops = replay([*good, weak_late, weak_early, strong, weak_baseline], FRACTIONS)
    assert set(stops) == {10}
    assert stops[10].point == 0 and stops[10].dominated_by.accuracy == 0.90
    # Repeats and infeasible trials neither gain nor dominate.
    infeasible = [_frozen(20 + i, (0.99, 0.1, 1.0), (0.9,) * 4, i, i + 1, **{attrs.CONSTRAINT_VIOLATION: [1.0]})
                  for i in range(MIN_CURVES)]
    assert replay([*infeasible, weak_late], FRACTIONS) == {}


class StoppingObjective:
    """Candidates are integers; odd ones are stopped early, as the real objective records it."""

    def sample(self, trial):
        x = trial.suggest_int("x", 0, 10**9)
        trial.set_user_attr(attrs.ARCH_SAMPLED, f"x{x}")
        trial.set_user_attr(attrs.COMPRESSION, "none")
        return x

    def run(self, trial, x):
        if x % 2:
            trial.set_user_attr(attrs.EARLY_STOPPED, {"reason": "stopped at epoch 2/8: crafted"})
            raise optuna.TrialPruned("crafted")
        return 0.5, 1.0, 1.0

    def repeat(self, trial, original):
        raise AssertionError("no repeats among 10**9 candidates")


def test_a_resumed_study_with_stopped_trials_ends_with_exactly_the_budget(tmp_path):
    url = f"sqlite:///{tmp_path}/stop.db"
    optuna.create_study(study_name="stop", storage=open_storage(url), directions=list(attrs.DIRECTIONS))
    config = StudyConfig(sampler="random", seed=1)

    def run(budget):
        study = optuna.load_study(study_name="stop", storage=open_storage(url))
        lock = TrialStartLock(url, "stop")
        loop.run_trials(study, config, budget, StoppingObjective(), lock, SearchProgress())
        lock.close()
        return study

    run(4)
    study = run(9)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    stopped = study.get_trials(states=(TrialState.PRUNED,))
    assert len(complete) == 9
    assert stopped and all(attrs.EARLY_STOPPED in t.user_attrs for t in stopped)
