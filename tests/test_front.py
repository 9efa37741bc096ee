"""The front as data (search/report/front.py): the Pareto mask, then build_report,
format_table, to_csv and staircase from real Optuna trials carrying the user attributes
the objective records."""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.report.front import CSV_FIELDS, add_measurements, build_report, format_table, pareto_mask, staircase, to_csv
from search.report.retime import Retimed
from search.study import attrs

DIRS = ("maximize", "minimize", "minimize")

LOCAL = {"host": "box", "cpu": "Test CPU", "arch": "x86_64", "threads": 2, "onnxruntime": "1.32.0",
         "via": "local", "emulated": False}
EMULATED_BOARD = {**LOCAL, "host": "pi", "arch": "aarch64", "cpu": "Cortex-A76", "via": "agent", "emulated": True}


def complete(accuracy: float, latency_ms: float, size_kb: float, **user_attrs):
    """A complete trial as the objective leaves it: objectives, then what the report reads."""
    recorded = {
        attrs.LATENCY_P90: latency_ms * 1.25,
        attrs.PARAMS: 12345,
        attrs.MACS: 67890,
        attrs.ARCH: "in1-stem8_s1_hs-ir_k3_s2_x16_c16_re-conv32_hs-cls10",
        attrs.COMPRESSION: "prune0.3_round8_int8-static/minmax",
        attrs.ONNX_SHA256: "",
        attrs.MEASURED_ON: LOCAL,
        attrs.CONSTRAINT_VIOLATION: [],
    }
    return create_trial(values=[accuracy, latency_ms, size_kb], user_attrs={**recorded, **user_attrs})


def numbered(trials) -> list:
    """The trials as a study returns them: numbered 0, 1, ... in order."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=list(attrs.DIRECTIONS))
    study.add_trials(trials)
    return study.get_trials()


def sample_trials(**overrides) -> list:
    """Trials 0-7: front {0, 1, 3, 7}, 2 dominated, 4 over a limit, 5 failed, 6 rejected.
    ``overrides`` maps a trial number (as "tN") to extra user attributes of that trial."""
    extra = {int(k[1:]): v for k, v in overrides.items()}
    spec = [
        (0.95, 2.0, 40.0),  # most accurate
        (0.90, 1.0, 30.0),
        (0.85, 1.5, 35.0),  # dominated by 1: slower, larger, less accurate
        (0.80, 0.5, 50.0),  # fastest
        (0.99, 0.1, 5.0),  # would dominate every trial, but is over a limit
        None,
        None,
        (0.88, 3.0, 10.0),  # smallest
    ]
    trials = []
    for number, values in enumerate(spec):
        if number == 4:
            trials.append(complete(*values, **{attrs.CONSTRAINT_VIOLATION: [0.2, -1.0], **extra.get(4, {})}))
        elif number == 5:
            trials.append(create_trial(state=TrialState.FAIL, user_attrs={
                attrs.FAILED_STAGE: "train", attrs.FAIL_REASON: "RuntimeError: boom"}))
        elif number == 6:
            trials.append(create_trial(state=TrialState.PRUNED, user_attrs={attrs.REJECTED: "size 90.0 KB > 64 KB"}))
        else:
            trials.append(complete(*values, **extra.get(number, {})))
    return numbered(trials)


def report_of(trials, test_accuracy=None):
    return build_report("s", "digits", "host", trials, test_accuracy or {})


def test_front_is_the_feasible_non_dominated_trials_fastest_first():
    report = report_of(sample_trials())
    assert [p.number for p in report.front] == [3, 1, 0, 7]
    by_number = {p.number: p for p in report.points}
    assert not by_number[2].on_front and by_number[2].feasible
    assert not by_number[4].on_front and not by_number[4].feasible  # over a limit: never on the front


def test_failed_and_rejected_trials_are_counted_not_drawn():
    report = report_of(sample_trials())
    assert sorted(p.number for p in report.points) == [0, 1, 2, 3, 4, 7]
    assert (report.n_failed, report.n_rejected) == (1, 1)
    states = [TrialState.PRUNED, TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING]
    report = report_of(numbered([complete(0.9, 1.0, 30.0)] + [create_trial(state=s) for s in states]))
    assert [p.number for p in report.points] == [0]
    assert (report.n_failed, report.n_rejected) == (1, 2)  # a running trial is neither
    assert report.n_running == 1 and report_of(sample_trials()).n_running == 0  # the page marks a running study


def test_points_carry_the_recorded_attributes_and_the_test_accuracy_given():
    report = report_of(sample_trials(), test_accuracy={0: 0.93, 3: 0.79})
    p = {p.number: p for p in report.points}
    assert (p[0].test_accuracy, p[3].test_accuracy, p[1].test_accuracy) == (0.93, 0.79, None)
    assert (p[1].accuracy, p[1].latency_ms, p[1].size_kb, p[1].latency_ms_p90) == (0.90, 1.0, 30.0, 1.25)
    assert (p[1].params, p[1].macs, p[1].compression) == (12345, 67890, "prune0.3_round8_int8-static/minmax")
    assert p[1].accuracy_on_target is None


def test_provenance_names_the_machine_and_labels_an_emulated_board():
    report = report_of(sample_trials())
    assert report.measured_on == "x86_64 Test CPU, 2 threads, ORT 1.32.0, host box" and not report.emulated

    mixed = report_of(sample_trials(t7={attrs.MEASURED_ON: EMULATED_BOARD}))
    board = "aarch64 Cortex-A76, 2 threads, ORT 1.32.0, host pi, via agent (EMULATED: not the board's timing)"
    assert {p.number: p.measured_on for p in mixed.points}[7] == board
    assert mixed.emulated
    assert mixed.measured_on == "; ".join(sorted([board, report.measured_on]))
    assert f"latency measured on: {mixed.measured_on}" in format_table(mixed).splitlines()


def test_format_table_lists_the_front_fastest_first():
    lines = format_table(report_of(sample_trials(), test_accuracy={0: 0.93})).splitlines()
    assert lines[0] == "Pareto front of study s: 4 of 6 complete trials (1 failed, 1 rejected by constraints, 0 stopped early)"
    assert lines[2].split() == ["trial", "val", "acc", "test", "acc", "p50", "ms", "p90", "ms", "KB", "params",
                                "compression"]
    rows = [line.split() for line in lines[3:]]
    assert [r[0] for r in rows] == ["3", "1", "0", "7"]
    assert rows[2] == ["0", "0.9500", "0.9300", "2.000", "2.500", "40.0", "12,345", "prune0.3_round8_int8-static/minmax"]
    assert rows[0][2:5] == ["not", "measured", "here"]  # no test accuracy was given for trial 3


def test_measurements_added_to_a_report_land_on_their_trials_and_leave_the_front_as_it_was():
    report = report_of(sample_trials(), test_accuracy={0: 0.93})
    added = add_measurements(report, {3: 0.8}, {1: Retimed(0.6, 0.7, 5), "teacher": Retimed(9.0, 9.5, 5)})
    p = {p.number: p for p in added.points}
    assert [q.number for q in added.front] == [3, 1, 0, 7]
    assert (p[3].test_accuracy, p[0].test_accuracy, p[1].test_accuracy) == (0.8, 0.93, None)  # 0's kept
    assert (p[1].retimed_p50_ms, p[1].retimed_p90_ms, p[1].fair_latency_ms) == (0.6, 0.7, 0.6)
    assert p[0].retimed_p50_ms is None and p[0].fair_latency_ms == 2.0
    assert build_report("s", "digits", "host", sample_trials(), {3: 0.8, 0: 0.93}, (), {1: Retimed(0.6, 0.7, 5)}) == added


def test_format_table_says_why_front_members_have_no_test_accuracy():
    report = dataclasses.replace(report_of(sample_trials()), test_note="test accuracy not measured here for trials 3")
    assert format_table(report).splitlines()[2] == "test accuracy not measured here for trials 3"
    assert format_table(report_of(sample_trials())).splitlines()[2].split()[:2] == ["trial", "val"]


def test_format_table_shows_board_accuracy_and_notes_a_drift_over_a_point():
    board = {"t0": {attrs.ACCURACY_ON_TARGET: 0.93}, "t1": {attrs.ACCURACY_ON_TARGET: 0.895}}
    lines = format_table(report_of(sample_trials(**board))).splitlines()
    assert lines[2].split()[:5] == ["trial", "val", "acc", "board", "acc"]
    rows = {line.split()[0]: line.split() for line in lines[3:-1]}
    assert (rows["0"][2], rows["1"][2], rows["3"][2]) == ("0.9300", "0.8950", "-")
    # 0.95 vs 0.93 is two points off; 0.90 vs 0.895 is half a point.
    assert lines[-1] == "note: on the board's kernels trials 0 differ from this machine's accuracy by more than 1 point"
    assert not format_table(report_of(sample_trials())).splitlines()[-1].startswith("note")


def test_format_table_shows_the_teacher_s_validation_accuracy_beside_the_front():
    from dataclasses import replace

    from search.report.front import TeacherPoint

    report = report_of(sample_trials())
    assert not any(line.startswith("teacher") for line in format_table(report).splitlines())
    recorded = format_table(replace(report, teacher_accuracy=0.9477)).splitlines()
    assert recorded[7] == "teacher (ResNet-18, every trial distilled from it): validation accuracy 0.9477 (not measured here)"
    measured = replace(report, teacher_accuracy=0.9477, teacher=TeacherPoint(0.9443, 1.5, 1.75, 44000.0, "here"))
    assert format_table(measured).splitlines()[7] == (
        "teacher (ResNet-18, every trial distilled from it): validation accuracy 0.9443, p50 1.500 ms, 44000.0 KB"
    )


def test_a_study_with_nothing_complete_reports_an_empty_front():
    report = report_of(numbered([create_trial(state=TrialState.FAIL)]))
    assert report.points == () and report.front == [] and report.measured_on == "nothing measured yet"
    lines = format_table(report).splitlines()
    assert lines[0] == "Pareto front of study s: 0 of 0 complete trials (1 failed, 0 rejected by constraints, 0 stopped early)"
    assert len(lines) == 3  # the header row, no member rows


def test_csv_lists_every_complete_trial_front_first_each_part_fastest_first():
    rows = list(csv.DictReader(io.StringIO(to_csv(report_of(sample_trials(), test_accuracy={0: 0.93})))))
    assert list(rows[0]) == CSV_FIELDS
    assert [r["number"] for r in rows] == ["3", "1", "0", "7", "4", "2"]
    assert [r["on_front"] for r in rows] == ["True"] * 4 + ["False"] * 2
    # A front member without a test accuracy says so; a trial off the front never has one.
    assert [r["test_accuracy"] for r in rows] == ["not measured here", "not measured here", "0.93", "not measured here",
                                                  "", ""]


@pytest.mark.parametrize(
    "points, expected",
    [
        ([(1.0, 0.5, 0), (2.0, 0.7, 1), (3.0, 0.6, 2), (0.5, 0.5, 4)], [(0.5, 0.5, 4), (2.0, 0.7, 1)]),
        ([(3.0, 0.6, 2), (3.0, 0.8, 3), (1.0, 0.2, 0)], [(1.0, 0.2, 0), (3.0, 0.8, 3)]),  # a tie in x: the best
        ([], []),
    ],
)
def test_staircase_keeps_the_best_accuracy_reachable_at_each_x(points, expected):
    assert staircase(points) == expected


def test_a_repeated_candidate_is_shown_once():
    # A repeat (the loop met a candidate again) carries the earlier trial's values.
    trials = numbered([complete(0.9, 1.0, 30.0), complete(0.9, 1.0, 30.0, **{attrs.REPEAT_OF: 0})])
    report = report_of(trials)
    assert [p.number for p in report.points] == [0] and [p.number for p in report.front] == [0]



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


def test_baselines_are_reference_points_with_the_front_member_that_dominates_each():
    from search.report.front import dominated_by

    trials = numbered([
        complete(0.95, 0.2, 50.0),
        complete(0.90, 0.5, 400.0, **{attrs.BASELINE: "mnv3-small-0.5-fp32"}),  # slower, larger, less accurate
        complete(0.99, 0.9, 900.0, **{attrs.BASELINE: "mnv3-small-1-fp32"}),  # the most accurate: on the front
        create_trial(state=TrialState.PRUNED, user_attrs={attrs.EARLY_STOPPED: {"reason": "crafted"}}),
    ])
    report = report_of(trials)
    assert [p.baseline for p in report.baselines] == ["mnv3-small-0.5-fp32", "mnv3-small-1-fp32"]
    weak, strong = report.baselines
    assert dominated_by(weak, report.front) == 0 and not weak.on_front
    assert strong.on_front and dominated_by(strong, report.front) is None
    assert (report.n_rejected, report.n_stopped) == (0, 1)
    lines = format_table(report).splitlines()
    assert any("mnv3-small-0.5-fp32" in line and "dominated by trial 0" in line for line in lines)
    assert any("mnv3-small-1-fp32" in line and "on the front" in line for line in lines)
