"""The trial loop on real storage: an exact budget, per-worker seeds, repeats.

Workers here are real processes running ``loop.run_trials`` against SQLite or the
PostgreSQL server, with an objective that only sleeps, so that many of them can race
for the last trials of a budget in seconds. They start at one agreed instant, each
trial takes long enough that the workers move in waves, and each read of the trials is
followed by a pause: a budget that ends mid-wave puts every worker between counting
and starting at once, which without the start lock overshoots every time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from conftest import ROOT
from search.progress import SearchProgress
from search.study import attrs, loop
from search.study.config import StudyConfig
from search.study.storage import SearchError, TrialStartLock, open_storage

STUDY = "race"


class SleepyObjective:
    """Candidates are integers below ``choices``; a trial sleeps and scores its integer."""

    def __init__(self, choices: int, seconds: float):
        self.choices, self.seconds = choices, seconds

    def sample(self, trial):
        x = trial.suggest_int("x", 0, self.choices - 1)
        trial.set_user_attr(attrs.ARCH_SAMPLED, f"x{x}")
        trial.set_user_attr(attrs.COMPRESSION, "none")
        return x

    def run(self, trial, x):
        time.sleep(self.seconds)
        return x / self.choices, 1.0, 1.0

    def repeat(self, trial, original):
        trial.set_user_attr(attrs.REPEAT_OF, original.number)
        return original.values


def create_study(url: str) -> None:
    optuna.create_study(study_name=STUDY, storage=open_storage(url), directions=list(attrs.DIRECTIONS))


def run_worker(url: str, budget: int, choices: int, seconds: float, sampler: str = "random", seed: int = 0,
               read_delay: float = 0.0) -> None:
    """``read_delay`` holds the worker after each read of the trials: between counting them
    and starting one, other workers have all the time they need to start theirs."""
    study = optuna.load_study(study_name=STUDY, storage=open_storage(url))
    if read_delay:
        read = study.get_trials
        study.get_trials = lambda *args, **kwargs: (read(*args, **kwargs), time.sleep(read_delay))[0]
    lock = TrialStartLock(url, STUDY)
    config = StudyConfig(sampler=sampler, seed=seed)
    loop.run_trials(study, config, budget, SleepyObjective(choices, seconds), lock, SearchProgress())
    lock.close()


def run_workers(url: str, n: int, budget: int, choices: int = 10**9, seconds: float = 0.2) -> None:
    """``n`` worker processes that start their loops at the same instant."""
    start_at = time.time() + 6  # after every process has imported what it needs
    code = (
        "import sys, time; from test_loop import run_worker; "
        f"time.sleep(max(0, {start_at} - time.time())); run_worker({url!r}, {budget}, {choices}, {seconds}, "
        "read_delay=0.4)"
    )
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    workers = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    for w in workers:
        _, err = w.communicate(timeout=180)
        assert w.returncode == 0, err


def trials_of(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=open_storage(url)).get_trials()


def assert_exact_budget_of_distinct_candidates(url: str, budget: int) -> None:
    trials = trials_of(url)
    counted = [t for t in trials if loop.counts_towards_budget(t)]
    assert len(counted) == budget, [t.state.name for t in trials]
    assert not [t for t in trials if attrs.REPEAT_OF in t.user_attrs], "workers drew the same candidates"
    assert len({t.params["x"] for t in counted}) == budget


@pytest.fixture()
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/study.db"


def test_workers_started_together_on_sqlite_stop_at_exactly_the_budget_with_distinct_candidates(sqlite_url):
    create_study(sqlite_url)
    run_workers(sqlite_url, n=6, budget=15)
    assert_exact_budget_of_distinct_candidates(sqlite_url, 15)


@pytest.mark.postgres
def test_eight_workers_on_postgres_stop_at_exactly_twenty(fresh_database):
    create_study(fresh_database)
    run_workers(fresh_database, n=8, budget=20)
    assert_exact_budget_of_distinct_candidates(fresh_database, 20)


def test_a_single_worker_is_reproducible_from_its_seed(tmp_path):
    drawn = []
    for run in ("a", "b"):
        url = f"sqlite:///{tmp_path}/{run}.db"
        create_study(url)
        run_worker(url, budget=6, choices=10**9, seconds=0, sampler="nsga2", seed=3)
        drawn.append([t.params["x"] for t in trials_of(url)])
    assert drawn[0] == drawn[1] and len(set(drawn[0])) == 6


def test_a_rerun_draws_new_candidates(sqlite_url):
    create_study(sqlite_url)
    run_worker(sqlite_url, budget=3, choices=10**9, seconds=0)
    run_worker(sqlite_url, budget=6, choices=10**9, seconds=0)
    assert_exact_budget_of_distinct_candidates(sqlite_url, 6)
    assert optuna.load_study(study_name=STUDY, storage=sqlite_url).user_attrs[attrs.STUDY_WORKERS_JOINED] == 2


def test_a_repeated_candidate_takes_the_values_of_the_first_and_does_not_count(sqlite_url):
    create_study(sqlite_url)
    run_worker(sqlite_url, budget=3, choices=4, seconds=0)
    trials = trials_of(sqlite_url)
    counted = [t for t in trials if loop.counts_towards_budget(t)]
    repeats = [t for t in trials if attrs.REPEAT_OF in t.user_attrs]
    assert len(counted) == 3 and len({t.params["x"] for t in counted}) == 3
    assert repeats, "four choices, three trials: the random sampler repeats itself with this seed"
    by_number = {t.number: t for t in trials}
    for r in repeats:
        original = by_number[r.user_attrs[attrs.REPEAT_OF]]
        assert r.state == TrialState.COMPLETE and r.values == original.values
        assert r.params == original.params and attrs.REPEAT_OF not in original.user_attrs


def test_an_exhausted_space_stops_with_one_clear_line(sqlite_url):
    create_study(sqlite_url)
    with pytest.raises(SearchError, match="in a row were already in the study"):
        run_worker(sqlite_url, budget=3, choices=2, seconds=0)
    assert sum(loop.counts_towards_budget(t) for t in trials_of(sqlite_url)) == 2


class HeartbeatReadingObjective(SleepyObjective):
    """Records, from inside the running trial, how many heartbeats the database holds for it."""

    def __init__(self, url: str):
        super().__init__(choices=10**9, seconds=0.0)
        self.url = url

    def run(self, trial, x):
        engine = sa.create_engine(self.url)
        with engine.connect() as conn:
            beats = conn.execute(sa.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t"),
                                 {"t": trial._trial_id}).scalar()
        engine.dispose()
        trial.set_user_attr("heartbeats_seen", beats)
        return super().run(trial, x)


def test_a_running_trial_records_its_heartbeat(sqlite_url):
    """Without heartbeats, a worker that dies on another machine holds its trial RUNNING forever."""
    create_study(sqlite_url)
    study = optuna.load_study(study_name=STUDY, storage=open_storage(sqlite_url))
    lock = TrialStartLock(sqlite_url, STUDY)
    loop.run_trials(study, StudyConfig(sampler="random"), 2, HeartbeatReadingObjective(sqlite_url), lock, SearchProgress())
    assert [t.user_attrs["heartbeats_seen"] for t in trials_of(sqlite_url)] == [1, 1]


class InterruptedObjective(SleepyObjective):
    """Ctrl-C strikes the second trial in ``stage``: while its candidate is drawn, or in training."""

    def __init__(self, stage: str):
        super().__init__(choices=10**9, seconds=0.0)
        self.stage, self.calls = stage, 0

    def sample(self, trial):
        x = super().sample(trial)
        self.calls += 1
        if self.stage == "sample" and self.calls == 2:
            raise KeyboardInterrupt
        return x

    def run(self, trial, x):
        if self.stage == "run" and self.calls == 2:
            raise KeyboardInterrupt
        return super().run(trial, x)


@pytest.mark.parametrize("stage", ["sample", "run"])
def test_ctrl_c_anywhere_in_a_trial_fails_it_rather_than_leaving_it_running(sqlite_url, stage):
    """A trial left RUNNING by a live-looking worker holds a place in the budget until its
    heartbeat goes stale; Ctrl-C may strike before training starts (CI once saw it)."""
    create_study(sqlite_url)
    study = optuna.load_study(study_name=STUDY, storage=open_storage(sqlite_url))
    lock = TrialStartLock(sqlite_url, STUDY)
    with pytest.raises(KeyboardInterrupt):
        loop.run_trials(study, StudyConfig(sampler="random"), 3, InterruptedObjective(stage), lock, SearchProgress())
    lock.close()
    trials = trials_of(sqlite_url)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs[attrs.FAIL_REASON] == "interrupted"


class CtrlCLostInAFinalizer(SleepyObjective):
    """Ctrl-C struck while a finalizer ran in trial 1, and Python printed it and dropped it."""

    def run(self, trial, x):
        if trial.number == 1:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                pass
        return super().run(trial, x)


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler, as in a terminal: a run started in the background
    (nohup, CI) inherits SIGINT ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_that_a_finalizer_swallowed_still_stops_the_search(sqlite_url, ctrl_c_raises):
    create_study(sqlite_url)
    study = optuna.load_study(study_name=STUDY, storage=open_storage(sqlite_url))
    lock = TrialStartLock(sqlite_url, STUDY)
    with pytest.raises(KeyboardInterrupt):
        loop.run_trials(study, StudyConfig(sampler="random"), 3, CtrlCLostInAFinalizer(10**9, 0.0), lock, SearchProgress())
    lock.close()
    trials = trials_of(sqlite_url)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs[attrs.FAIL_REASON] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


STRESS_WORKER = """
import sys, time
from pathlib import Path
from test_loop import run_worker
url, budget, barrier, n = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
(barrier / f"ready-{len(list(barrier.iterdir()))}-{time.time_ns()}").touch()
while len(list(barrier.glob("ready-*"))) < n:  # all imported (a minute on a loaded 2-core machine): start together
    time.sleep(0.1)
run_worker(url, budget, 10**9, 0.05)
"""


@pytest.mark.slow  # 40 processes: 3.5 min on a loaded 2-core machine, most of it importing
@pytest.mark.postgres
def test_forty_workers_on_postgres_make_exactly_two_hundred_within_the_server_s_connections(fresh_database, tmp_path):
    """Every worker keeps one connection to the server and opens a second only to wait for
    the start lock: with SQLAlchemy's default pools the server's 100 connections ran out
    and workers were refused ("too many clients")."""
    import threading

    create_study(fresh_database)
    name = sa.engine.make_url(fresh_database).database
    admin = sa.create_engine(fresh_database.rsplit("/", 1)[0] + "/postgres", poolclass=sa.pool.NullPool)
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            with admin.connect() as conn:
                n = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"), {"d": name})
                peak[0] = max(peak[0], n.scalar())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    workers = [
        subprocess.Popen([sys.executable, "-c", STRESS_WORKER, fresh_database, "200", str(tmp_path), "40"],
                         env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(40)
    ]
    errors = []
    for w in workers:
        _, err = w.communicate(timeout=900)
        if w.returncode != 0 or "Traceback" in err:
            errors.append(err)
    done.set()
    watcher.join()
    admin.dispose()
    assert not errors, errors[0]
    trials = trials_of(fresh_database)
    assert sum(loop.counts_towards_budget(t) for t in trials) == 200
    assert len({t.number for t in trials}) == len(trials)
    assert len({t.user_attrs[attrs.WORKER]["pid"] for t in trials}) > 1
    assert peak[0] <= 90, f"{peak[0]} connections to the study's database at once"
