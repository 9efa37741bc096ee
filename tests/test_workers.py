"""Per-worker status of a study (search/study/workers.py) and its table in ``nas.py status``."""

from __future__ import annotations

import datetime
import re

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState, create_trial

import nas
from search.cli import format_workers
from search.study import attrs
from search.study.storage import open_storage, study_summaries
from search.study.workers import WorkerStatus, worker_statuses
from test_retry import backdate_heartbeat

VALUES = [0.9, 1.0, 30.0]


def started(worker: tuple[str, int], state: TrialState, seconds_ago: float = 0.0, **user_attrs):
    """A trial that ``worker`` started; ended (or, RUNNING, started) ``seconds_ago``."""
    when = datetime.datetime.now() - datetime.timedelta(seconds=seconds_ago)
    trial = create_trial(
        state=state,
        values=VALUES if state == TrialState.COMPLETE else None,
        user_attrs={attrs.WORKER: {"host": worker[0], "pid": worker[1]}, **user_attrs},
    )
    trial.datetime_start = when - datetime.timedelta(seconds=5)
    trial.datetime_complete = when if state.is_finished() else None
    if state == TrialState.RUNNING:
        trial.datetime_start = when
    return trial


A, B, DEAD = ("host-a", 11), ("host-b", 22), ("host-b", 33)


@pytest.fixture()
def known_study(tmp_path):
    """Worker A finished its trials a minute ago: two complete, one failed, a repeat and a
    rejected one; B has one complete and one running for 42 s, beating now; DEAD's trial
    was failed just now by another worker, its last heartbeat 100 s ago."""
    url = f"sqlite:///{tmp_path}/study.db"
    storage = open_storage(url)
    study = optuna.create_study(study_name="known", storage=storage, directions=list(attrs.DIRECTIONS))
    study.add_trials([
        started(A, TrialState.COMPLETE, 70),
        started(A, TrialState.COMPLETE, 60),
        started(A, TrialState.FAIL, 65),
        started(A, TrialState.COMPLETE, 62, **{attrs.REPEAT_OF: 0}),
        started(A, TrialState.PRUNED, 61, **{attrs.REJECTED: "before training: too big"}),
        started(B, TrialState.COMPLETE, 300),
        started(B, TrialState.RUNNING, 42),
        started(DEAD, TrialState.RUNNING, 200),
    ])
    study.enqueue_trial({})  # waiting: no worker yet
    trials = study.get_trials()
    storage.record_heartbeat(trials[6]._trial_id)
    storage.record_heartbeat(trials[7]._trial_id)
    backdate_heartbeat(url, trials[7]._trial_id, datetime.timedelta(seconds=100))
    storage.set_trial_state_values(trials[7]._trial_id, TrialState.FAIL)  # by another worker, now
    return url, storage, study


def test_each_worker_s_trials_running_trial_and_last_sighting(known_study):
    url, storage, study = known_study
    statuses = {(s.host, s.pid): s for s in worker_statuses(storage, study._study_id, study.get_trials())}
    assert list(statuses) == [A, B, DEAD]
    a, b, dead = statuses.values()
    assert (a.complete, a.failed, a.set_aside, a.running) == (2, 1, 2, ())
    assert a.last_seen == pytest.approx(60, abs=3)  # its latest trial end
    assert (b.complete, b.failed, b.set_aside) == (1, 0, 0)
    ((number, age),) = b.running
    assert number == 6 and age == pytest.approx(42, abs=3)
    assert b.last_seen == pytest.approx(0, abs=3)  # its heartbeat
    assert (dead.complete, dead.failed, dead.running) == (0, 1, ())
    # Failed now, by the worker that found it dead: its own last heartbeat is what says when it was there.
    assert dead.last_seen == pytest.approx(100, abs=3)


def test_the_status_table_has_a_row_per_worker():
    statuses = [
        WorkerStatus("host-a", 11, complete=12, failed=1, set_aside=3, running=(), last_seen=61.2),
        WorkerStatus("gpu-box-7", 2204, complete=3, failed=0, set_aside=0, running=((40, 42.0),), last_seen=1.5),
        WorkerStatus("host-b", 33, complete=0, failed=0, set_aside=0, running=(), last_seen=None),
    ]
    assert format_workers(statuses) == [
        "  worker              complete  failed  set aside  running            last seen",
        "  host-a pid 11             12       1          3  -                  1:02 ago",
        "  gpu-box-7 pid 2204         3       0          0  trial 40 for 0:42  0:02 ago",
        "  host-b pid 33              0       0          0  -                  -",
    ]
    assert format_workers([]) == ["  no worker has started a trial"]


def test_nas_status_shows_the_study_line_and_its_workers(known_study, tmp_path, capsys):
    url, _, _ = known_study
    assert nas.main(["status", "--study", "known", "--storage", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("known: 3 complete, 2 failed, 1 rejected, 0 stopped early, 1 repeats, 1 running, 1 waiting")
    assert lines[2].split() == ["worker", "complete", "failed", "set", "aside", "running", "last", "seen"]
    rows = [re.sub(r"\d+:\d\d", "T", line).split() for line in lines[3:]]
    assert rows == [
        ["host-a", "pid", "11", "2", "1", "2", "-", "T", "ago"],
        ["host-b", "pid", "22", "1", "0", "0", "trial", "6", "for", "T", "T", "ago"],
        ["host-b", "pid", "33", "0", "1", "0", "-", "T", "ago"],
    ]
    (summary,) = study_summaries(url, "known", tmp_path)
    assert [(w.host, w.pid) for w in summary.workers] == [A, B, DEAD]
