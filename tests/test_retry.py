"""Trials of dead workers, failed and run again (search/study/retry.py), on real storage
with real worker processes: killed (SIGKILL) or frozen (SIGSTOP, its heartbeat stale)."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy as sa
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from conftest import ROOT
from search.progress import SearchProgress
from search.study import attrs, loop, retry
from search.study.config import StudyConfig
from search.study.storage import TrialStartLock, open_storage
from test_loop import STUDY, SleepyObjective, create_study, trials_of

WORKER_ENV = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}


@pytest.fixture()
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/study.db"


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=open_storage(url))


def start_stuck_worker(url: str) -> subprocess.Popen:
    """A real worker whose trial runs for ten minutes; returns once that trial is RUNNING with
    its parameters sampled (a kill between the two would leave nothing to run again)."""
    code = f"from test_loop import run_worker; run_worker({url!r}, 5, 10**9, 600)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=WORKER_ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    def started(t: optuna.trial.FrozenTrial) -> bool:
        return t.state == TrialState.RUNNING and attrs.WORKER in t.user_attrs and bool(t.params)

    while not any(started(t) for t in trials_of(url)):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the worker never started a trial"
        time.sleep(0.2)
    return proc


def finish_study(url: str, budget: int) -> list[str]:
    """This process joins as a worker and runs the study to ``budget``; the lines it printed."""
    lines = []

    class Messages(SearchProgress):
        def message(self, text):
            lines.append(text)

    lock = TrialStartLock(url, STUDY)
    loop.run_trials(load(url), StudyConfig(sampler="random"), budget, SleepyObjective(10**9, 0), lock, Messages())
    lock.close()
    return lines


def assert_retried(url: str, killed_number: int, budget: int) -> optuna.trial.FrozenTrial:
    trials = trials_of(url)
    killed = trials[killed_number]
    assert killed.state == TrialState.FAIL
    (again,) = [t for t in trials if t.user_attrs.get(attrs.RETRIED_FROM) == killed.number]
    assert again.number > killed.number and again.state == TrialState.COMPLETE
    assert again.params == killed.params
    assert again.user_attrs[attrs.WORKER]["pid"] == os.getpid()  # its own worker, not the dead one's
    assert sum(loop.counts_towards_budget(t) for t in trials) == budget  # the retry counted like any other
    return killed


def test_a_killed_workers_trial_is_failed_and_its_parameters_run_again(sqlite_url):
    create_study(sqlite_url)
    worker = start_stuck_worker(sqlite_url)
    worker.kill()
    worker.wait()
    lines = finish_study(sqlite_url, budget=3)
    killed = assert_retried(sqlite_url, 0, budget=3)
    assert killed.user_attrs[attrs.FAIL_REASON] == f"its worker (pid {worker.pid} on {socket.gethostname()}) died"
    assert lines == [f"trial 0 failed: {killed.user_attrs[attrs.FAIL_REASON]}; its candidate runs again as trial 1"]


def backdate_heartbeat(url: str, trial_id: int, by: datetime.timedelta = datetime.timedelta(hours=1)) -> None:
    """As if the worker had been silent for ``by`` longer (the storage's grace period is 30 s)."""
    beats = sa.table("trial_heartbeats", sa.column("trial_id"), sa.column("heartbeat", sa.DateTime))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        row = conn.execute(sa.select(beats.c.heartbeat).where(beats.c.trial_id == trial_id)).first()
        assert row is not None, "the running trial has no heartbeat"
        conn.execute(beats.update().where(beats.c.trial_id == trial_id)
                     .values(heartbeat=row[0] - by))
    engine.dispose()


def test_a_silent_workers_trial_is_failed_once_its_heartbeat_is_stale_and_runs_again(sqlite_url):
    """A frozen process is alive to os.kill but sends no heartbeat: as a worker on a
    machine that lost its network looks to the others."""
    create_study(sqlite_url)
    worker = start_stuck_worker(sqlite_url)
    try:
        worker.send_signal(signal.SIGSTOP)
        (running,) = trials_of(sqlite_url)
        assert retry.find_dead_trials(load(sqlite_url)) == []  # alive, and its heartbeat is fresh
        backdate_heartbeat(sqlite_url, running._trial_id)
        finish_study(sqlite_url, budget=2)
    finally:
        worker.kill()
        worker.wait()
    killed = assert_retried(sqlite_url, 0, budget=2)
    assert killed.user_attrs[attrs.FAIL_REASON] == (
        f"its worker (pid {worker.pid} on {socket.gethostname()}) stopped sending heartbeats"
    )


def dead_pid() -> int:
    """The pid of a process of this machine that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def start_as_dead_worker(study: optuna.Study, pid: int, sampled: bool = True) -> optuna.Trial:
    """Start the next trial (a waiting one first) as a worker that then died would have,
    after drawing its parameter or (not ``sampled``) before."""
    trial = study.ask()
    if sampled:
        trial.suggest_int("x", 0, 10**9)
    trial.set_user_attr(attrs.WORKER, {"host": socket.gethostname(), "pid": pid})
    return trial


def retry_dead(study: optuna.Study) -> list[retry.Retried]:
    return retry.retry_dead_trials(study, retry.find_dead_trials(study))


def test_a_candidate_is_retried_at_most_twice_with_optunas_history(sqlite_url):
    create_study(sqlite_url)
    study, pid = load(sqlite_url), dead_pid()
    first = start_as_dead_worker(study, pid)
    numbers = [first.number]
    for _ in range(retry.MAX_RETRIES):
        (r,) = retry_dead(study)
        assert r.number == numbers[-1] and r.retry is not None
        assert start_as_dead_worker(study, pid).number == r.retry  # the retry is the next trial started
        numbers.append(r.retry)
    (r,) = retry_dead(study)
    assert (r.number, r.retry) == (numbers[-1], None)  # the third death of the candidate: given up
    trials = trials_of(sqlite_url)
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 and len({str(t.params) for t in trials}) == 1
    assert [t.user_attrs.get(attrs.RETRIED_FROM) for t in trials] == [None, 0, 1]
    last = trials[-1]
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(last) == 0
    assert RetryHeartbeatStaleTrialCallback.retry_history(last) == [0, 1]
    assert retry_dead(study) == []  # nothing left running


def test_a_retried_baseline_is_still_that_baseline_and_nothing_of_the_dead_run_is_copied(sqlite_url):
    create_study(sqlite_url)
    study = load(sqlite_url)
    enqueued_with = {attrs.BASELINE: "mnv3-small-0.5-fp32", attrs.ARCH_SAMPLED: "in1-stem8_s1_re-cls10"}
    study.enqueue_trial({"x": 7}, user_attrs=enqueued_with)
    dead = start_as_dead_worker(study, dead_pid(), sampled=False)  # killed while drawing its candidate
    for key, value in ((attrs.LEARNING_CURVE, [0.5]), (attrs.SECONDS_PREFIX + "train", 3.0), (attrs.COMPRESSION, "c")):
        dead.set_user_attr(key, value)
    (r,) = retry_dead(study)
    again = trials_of(sqlite_url)[r.retry]
    assert again.state == TrialState.WAITING
    assert again.user_attrs == {**enqueued_with, attrs.RETRIED_FROM: dead.number}
    # Started, it draws the parameters it was enqueued with (Optuna's fixed_params), though
    # its dead run had drawn none yet.
    started = study.ask()
    assert started.number == again.number and started.suggest_int("x", 0, 10**9) == 7
    assert started.user_attrs[attrs.BASELINE] == enqueued_with[attrs.BASELINE]


RACE_CODE = """
import sys, time
from pathlib import Path
from test_loop import STUDY
from test_retry import load
from search.study import retry
from search.study.storage import TrialStartLock
url, barrier, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
study = load(url)
dead = retry.find_dead_trials(study)
lock = TrialStartLock(url, STUDY)
(barrier / f"looked-{time.time_ns()}").touch()
while len(list(barrier.iterdir())) < n:  # every worker has looked: none has failed anything yet
    time.sleep(0.05)
with lock():
    print(len(dead), len(retry.retry_dead_trials(study, dead)))
lock.close()
"""


def fail_together(url: str, n: int, barrier) -> list[tuple[int, int]]:
    """``n`` worker processes that all look for dead trials, then, once all have looked,
    fail what they saw; for each, how many dead trials it saw and how many it retried."""
    workers = [subprocess.Popen([sys.executable, "-c", RACE_CODE, url, str(barrier), str(n)], env=WORKER_ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    seen = []
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        seen.append(tuple(map(int, out.split())))
    return seen


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_workers_noticing_one_dead_trial_together_retry_it_once(request, tmp_path, backend):
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "fresh_database")
    create_study(url)
    start_as_dead_worker(load(url), dead_pid())
    (tmp_path / "barrier").mkdir()
    seen = fail_together(url, 6, tmp_path / "barrier")
    assert [s for s, _ in seen] == [1] * 6  # all of them saw it dead
    assert sum(r for _, r in seen) == 1
    trials = trials_of(url)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]


class HeartbeatWhileSampling(SleepyObjective):
    """Records how many heartbeats the database holds for the trial while its candidate is drawn."""

    def __init__(self, url: str):
        super().__init__(choices=10**9, seconds=0)
        self.url = url

    def sample(self, trial):
        engine = sa.create_engine(self.url)
        with engine.connect() as conn:
            beats = conn.execute(sa.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t"),
                                 {"t": trial._trial_id}).scalar()
        engine.dispose()
        trial.set_user_attr("heartbeats_seen", beats)
        return super().sample(trial)


def test_a_trial_beats_from_its_start_so_a_worker_killed_while_sampling_is_noticed(sqlite_url):
    """Without a heartbeat, a trial whose worker died elsewhere before its first beat would
    never go stale: RUNNING forever, holding a place in the budget."""
    create_study(sqlite_url)
    lock = TrialStartLock(sqlite_url, STUDY)
    loop.run_trials(load(sqlite_url), StudyConfig(sampler="random"), 2, HeartbeatWhileSampling(sqlite_url), lock,
                    SearchProgress())
    lock.close()
    assert [t.user_attrs["heartbeats_seen"] for t in trials_of(sqlite_url)] == [1, 1]
