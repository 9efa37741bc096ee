"""How the engine reports progress, and the arithmetic of showing it.

The engine calls a ``SearchProgress``; the command line draws it (``cli.TerminalProgress``).
The helpers below turn what the engine reports into text and time estimates, apart from
any drawing, so that they can be tested alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .study import attrs


class SearchProgress:
    """Does nothing: the engine's default, and what tests use."""

    def start(self, n_complete: int, budget: int, label: str = "search") -> None:
        """The trial loop (or ``label``'s loop over trials) begins with ``n_complete`` of
        ``budget`` trials already done."""

    def stage(self, trial_number: int | None, stage: str) -> None:
        """Trial ``trial_number`` entered ``stage`` (None: work outside any trial, such as the teacher's)."""

    def steps(self, done: int, total: int, per_epoch: int) -> None:
        """``done`` of ``total`` steps (batches) of the current long step, ``per_epoch`` to an epoch."""

    def trial_finished(self, trial, n_complete: int) -> None:
        """A trial ended (complete, failed or rejected); ``n_complete`` count the study's complete trials."""

    def advance(self, n_done: int) -> None:
        """Outside the search (finalize): ``n_done`` trials of the loop are done; no trial
        outcome to tell, and its stage times are not a search trial's."""

    def message(self, text: str) -> None:
        """A line for the user."""

    def close(self) -> None:
        """The trial loop ended."""


def step_text(done: int, total: int, per_epoch: int, epochs: bool = True) -> str:
    """Where a run of ``total`` steps stands after ``done`` of them (counted from 1, as
    ``fit`` and ``predict_logits`` report them): ``epoch 2/8 batch 12/90`` for a training
    run, ``batch 12/88`` for a pass over images (``epochs=False``).

    The batch count is that of the epoch itself, so the last epoch of a fractional budget
    (2.5 epochs) is shorter. Numbers are padded to the width of their totals: the text
    keeps its width as they grow a digit, and a bar drawn after it does not shift.
    """
    if not epochs:
        return f"batch {_padded(done, total)}"
    n_epochs = math.ceil(total / per_epoch)
    epoch = max(done - 1, 0) // per_epoch  # 0-based; the step just done belongs to it
    in_epoch = min(per_epoch, total - epoch * per_epoch)
    return f"epoch {_padded(epoch + 1, n_epochs)} batch {_padded(done - epoch * per_epoch, in_epoch)}"


def _padded(n: int, of: int) -> str:
    return f"{n:>{len(str(of))}}/{of}"


def duration_text(seconds: float) -> str:
    """``1:05`` (minutes and seconds), ``1:02:03`` from an hour on; whole seconds, rounded up."""
    minutes, secs = divmod(math.ceil(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True)
class TrialEstimate:
    seconds: float
    whole_trial: bool  # False: only the running stage's training run is known, not the stages after it


def trial_text(trial_number: int, stage: str, steps: str | None, estimate: TrialEstimate | None) -> str:
    """``trial 3: train epoch 2/8 batch 12/90, trial ends in ~1:23``; without an estimate
    for the whole trial, the training run's (``train ends in ~0:42``)."""
    text = f"trial {trial_number}: {stage}" + (f" {steps}" if steps else "")
    if estimate is not None:
        what = "trial" if estimate.whole_trial else stage
        text += f", {what} ends in ~{duration_text(estimate.seconds)}"
    return text


class StepRun:
    """One run of steps (a training run, a pass over images) as ``SearchProgress.steps``
    reports it, and its pace."""

    def __init__(self, done: int, total: int, per_epoch: int, now: float):
        self.done, self.total, self.per_epoch = done, total, per_epoch
        self._first_done, self._first_time = done, now
        self._last_time = now

    def continues(self, done: int, total: int, per_epoch: int) -> bool:
        """Whether a report belongs to this run: the next run counts to another total, or
        starts over (the fine-tunes of an iterative prune have equal totals)."""
        return (total, per_epoch) == (self.total, self.per_epoch) and done > self.done

    def advance(self, done: int, now: float) -> None:
        self.done, self._last_time = done, now

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def seconds_left(self) -> float | None:
        """At the pace since the first step reported, which is timed from its end: the
        first step carries the run's start-up, which the others do not. None before the
        second step."""
        if self.done <= self._first_done:
            return None
        per_step = (self._last_time - self._first_time) / (self.done - self._first_done)
        return per_step * (self.total - self.done)


class TrialClock:
    """How long each stage of a trial takes, learned from the trials this process has
    finished, and how long the running trial has left."""

    def __init__(self) -> None:
        self._seconds: dict[str, list[float]] = {}
        self._course: tuple[str, ...] = ()  # the stages of a whole trial, in order

    def learn(self, stages: Sequence[str], user_attrs: Mapping) -> None:
        """A trial finished after entering ``stages``, in order; its ``user_attrs`` hold
        their ``seconds_<stage>``. The stage it failed in ended early: it teaches nothing."""
        failed = user_attrs.get(attrs.FAILED_STAGE)
        for stage in stages:
            key = attrs.SECONDS_PREFIX + stage
            if stage != failed and key in user_attrs:
                self._seconds.setdefault(stage, []).append(float(user_attrs[key]))
        # A trial rejected or failed early went through fewer stages than a whole one.
        if len(stages) > len(self._course):
            self._course = tuple(stages)

    def expected(self, stage: str) -> float | None:
        """Mean seconds of ``stage`` in the trials learned from; None if none ran it."""
        seen = self._seconds.get(stage)
        return sum(seen) / len(seen) if seen else None

    def remaining(self, stage: str, seconds_in_stage: float, run_left: float | None) -> TrialEstimate | None:
        """Time left to a trial that has spent ``seconds_in_stage`` in ``stage``, where a
        training run has ``run_left`` seconds to go (None: no run, or its pace not known yet).

        The run's own pace says more about this candidate than earlier trials do; the
        stages after it are expected to take as long as they took before. When one of them
        has not been seen yet, only the run's time is known (not a whole trial's).
        """
        if run_left is not None:
            current = run_left
        elif (expected := self.expected(stage)) is not None:
            current = max(0.0, expected - seconds_in_stage)
        else:
            return None
        if stage in self._course:
            later = [self.expected(s) for s in self._course[self._course.index(stage) + 1 :]]
            if None not in later:
                return TrialEstimate(current + sum(later), whole_trial=True)
        return TrialEstimate(current, whole_trial=False) if run_left is not None else None
