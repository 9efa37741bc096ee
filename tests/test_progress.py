"""The arithmetic of showing progress (search/progress.py): where a run stands, and how long
the running trial has left. tests/test_cli.py draws it in a terminal."""

from __future__ import annotations

import pytest

from search.progress import StepRun, TrialClock, TrialEstimate, duration_text, step_text, trial_text
from search.study import attrs

COURSE = ["cost", "train", "prune", "export"]


def seconds(**by_stage) -> dict:
    return {attrs.SECONDS_PREFIX + stage: s for stage, s in by_stage.items()}


@pytest.mark.parametrize(
    "done, total, per_epoch, text",
    [
        (1, 180, 90, "epoch 1/2 batch  1/90"),  # steps count from 1: the first is batch 1
        (90, 180, 90, "epoch 1/2 batch 90/90"),  # an epoch's last step still belongs to it
        (91, 180, 90, "epoch 2/2 batch  1/90"),
        (180, 180, 90, "epoch 2/2 batch 90/90"),
        (0, 180, 90, "epoch 1/2 batch  0/90"),  # before the first step
        (12, 45, 90, "epoch 1/1 batch 12/45"),  # half an epoch: 45 of its 90 batches
        (180, 225, 90, "epoch 2/3 batch 90/90"),  # 2.5 epochs
        (181, 225, 90, "epoch 3/3 batch  1/45"),  # ... the last one shorter
        (225, 225, 90, "epoch 3/3 batch 45/45"),
        (12, 90, 9, "epoch  2/10 batch 3/9"),
    ],
)
def test_a_training_run_shows_its_epoch_and_the_batch_within_it(done, total, per_epoch, text):
    assert step_text(done, total, per_epoch) == text


def test_a_pass_over_images_shows_its_batch_alone():
    assert step_text(40, 88, 88, epochs=False) == "batch 40/88"


@pytest.mark.parametrize(
    "seconds_left, text",
    [(0, "0:00"), (0.2, "0:01"), (59.5, "1:00"), (83, "1:23"), (600, "10:00"), (3723, "1:02:03")],
)
def test_durations_read_as_minutes_and_seconds_rounded_up(seconds_left, text):
    assert duration_text(seconds_left) == text


def test_a_run_s_time_left_is_at_its_pace_after_its_first_step():
    run = StepRun(1, 100, 10, now=50.0)  # the first step carried the start-up: its time is unknown
    assert run.seconds_left() is None
    run.advance(11, now=52.0)  # 10 steps in 2 s
    assert run.seconds_left() == pytest.approx(89 * 0.2)
    assert not run.finished
    assert run.continues(12, 100, 10)
    assert not run.continues(1, 100, 10)  # the next fine-tune of an iterative prune starts over
    assert not run.continues(12, 50, 10)
    run.advance(100, now=70.0)
    assert run.finished and run.seconds_left() == 0


def test_without_earlier_trials_only_the_training_run_is_estimated():
    clock = TrialClock()
    assert clock.remaining("train", 10.0, run_left=30.0) == TrialEstimate(30.0, whole_trial=False)
    assert clock.remaining("export", 1.0, run_left=None) is None
    assert clock.remaining("train", 0.5, run_left=None) is None  # training, its pace not known yet


def test_earlier_trials_give_the_time_of_the_stages_after_the_running_one():
    clock = TrialClock()
    clock.learn(COURSE, seconds(cost=1, train=50, prune=20, export=4))
    clock.learn(COURSE, seconds(cost=3, train=70, prune=10, export=6))
    assert clock.expected("prune") == 15
    # The run's own pace rather than the earlier trainings: another candidate, another speed.
    assert clock.remaining("train", 10.0, run_left=30.0) == TrialEstimate(30.0 + 15 + 5, whole_trial=True)
    assert clock.remaining("prune", 5.0, run_left=None) == TrialEstimate(10.0 + 5, whole_trial=True)
    assert clock.remaining("export", 9.0, run_left=None) == TrialEstimate(0.0, whole_trial=True)  # late, not negative


def test_the_stage_a_trial_failed_in_teaches_nothing():
    clock = TrialClock()
    clock.learn(COURSE, seconds(cost=1, train=50, prune=20, export=4))
    clock.learn(["cost", "train"], {**seconds(cost=3, train=0.5), attrs.FAILED_STAGE: "train"})
    assert (clock.expected("cost"), clock.expected("train")) == (2, 50)


def test_a_stage_never_timed_to_its_end_leaves_the_trial_s_end_unknown():
    clock = TrialClock()
    clock.learn(COURSE, {**seconds(cost=1, train=50, prune=20, export=0.1), attrs.FAILED_STAGE: "export"})
    assert clock.remaining("train", 1.0, run_left=30.0) == TrialEstimate(30.0, whole_trial=False)
    assert clock.remaining("prune", 1.0, run_left=None) is None


def test_a_trial_rejected_early_does_not_cut_a_whole_trial_short():
    clock = TrialClock()
    clock.learn(["cost"], seconds(cost=2))
    # No whole trial seen yet: the stages after training are unknown.
    assert clock.remaining("train", 1.0, run_left=30.0) == TrialEstimate(30.0, whole_trial=False)
    clock.learn(COURSE, seconds(cost=1, train=50, prune=20, export=4))
    clock.learn(["cost"], seconds(cost=3))
    assert clock.remaining("train", 1.0, run_left=30.0) == TrialEstimate(54.0, whole_trial=True)


@pytest.mark.parametrize(
    "steps, estimate, text",
    [
        ("epoch 2/8 batch 12/90", TrialEstimate(83, True), "trial 3: train epoch 2/8 batch 12/90, trial ends in ~1:23"),
        ("epoch 2/8 batch 12/90", TrialEstimate(42, False), "trial 3: train epoch 2/8 batch 12/90, train ends in ~0:42"),
        ("epoch 2/8 batch 12/90", None, "trial 3: train epoch 2/8 batch 12/90"),
        (None, None, "trial 3: train"),
    ],
)
def test_a_trial_s_text(steps, estimate, text):
    assert trial_text(3, "train", steps, estimate) == text
