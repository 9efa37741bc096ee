"""The model to ship (search/report/decision.py), on sample_trials()'s front:
trial 3 (0.80, 0.5 ms, 50 KB), 1 (0.90, 1.0 ms, 30 KB), 0 (0.95, 2.0 ms, 40 KB), 7 (0.88, 3.0 ms, 10 KB)."""

from __future__ import annotations

import dataclasses

import pytest

from search.report.decision import decide, describe
from test_front import report_of, sample_trials


def decision(**budget):
    return decide(dataclasses.replace(report_of(sample_trials()), **budget))


def number(point):
    return None if point is None else point.number


@pytest.mark.parametrize(
    "budget, choice, runner_up, one_more_ms, one_more_kb",
    [
        ({"max_latency_ms": 1.0}, 1, 3, 0, None),  # 1 ms more reaches trial 0
        ({"max_latency_ms": 2.5}, 0, 1, None, None),  # 1 ms more reaches 7, less accurate: 0 stays
        ({"max_size_kb": 35.0}, 1, 7, None, None),
        ({"max_latency_ms": 2.5, "max_size_kb": 39.5}, 1, None, None, 0),  # 1 KB more lets 0 in
        ({"max_latency_ms": 0.4}, None, None, 1, None),  # nothing fits; 1 ms more reaches 3 and 1
    ],
)
def test_the_choice_is_the_most_accurate_member_within_the_budget(budget, choice, runner_up, one_more_ms, one_more_kb):
    d = decision(**budget)
    assert (number(d.choice), number(d.runner_up), number(d.one_more_ms), number(d.one_more_kb)) == (
        choice, runner_up, one_more_ms, one_more_kb)


def test_ties_in_accuracy_go_to_the_faster():
    from test_front import complete, numbered
    from search.report.front import build_report

    trials = numbered([complete(0.9, 2.0, 10.0), complete(0.9, 1.0, 20.0)])
    d = decide(dataclasses.replace(build_report("s", "d", "host", trials, {}), max_size_kb=100.0))
    assert d.choice.number == 1


def test_without_a_budget_the_choice_is_the_knee_nearest_the_ideal():
    d = decision()
    assert d.knee and number(d.choice) == 1  # 0.90 at 1 ms and 30 KB: near the best of each
    assert "the knee of the front: trial 1" in describe(d)[0]


def test_the_description_says_what_one_more_millisecond_buys():
    lines = describe(decision(max_latency_ms=1.0))
    assert lines[0].startswith("best within 1 ms: trial 1 ")
    assert lines[2].startswith("1 ms more would buy +5.00 points: trial 0 ")


def test_when_nothing_fits_it_says_so_and_what_more_budget_would_reach():
    lines = describe(decision(max_latency_ms=0.4))
    assert lines[0] == "no front member fits within 0.4 ms"
    assert lines[1].startswith("1 ms more would reach trial 1 ")
