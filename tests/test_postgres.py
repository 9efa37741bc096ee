"""A study shared through the real PostgreSQL server: workers of real ``nas.py`` processes, one budget."""

import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest import FAST, ROOT, run_nas
from search.stages.teacher import default_teacher_epochs
from search.study import attrs
from search.study.loop import counts_towards_budget
from search.study.storage import Store
from search.study.teacher_store import READY, TeacherStore

STUDY = "shared"

pytestmark = pytest.mark.postgres


def _start_workers(tmp_path, cache_dir, url: str, names: list[str], budget: int) -> list[subprocess.Popen]:
    """``nas.py`` workers started together, each in a folder of its own (its machine)."""
    args = [sys.executable, str(ROOT / "nas.py"), "--budget", str(budget), "--study", STUDY,
            "--storage", url, "--cache-dir", str(cache_dir), *FAST]
    workers = []
    for name in names:
        (tmp_path / name).mkdir()
        workers.append(subprocess.Popen(args, cwd=tmp_path / name, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return workers


def _run_workers(tmp_path, cache_dir, url: str, names: list[str], budget: int) -> None:
    for w in _start_workers(tmp_path, cache_dir, url, names, budget):
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err


def _check_study(url: str, budget: int, n_workers: int) -> list:
    study = optuna.load_study(study_name=STUDY, storage=url)
    complete = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if counts_towards_budget(t)]
    assert len(complete) == budget  # exactly: no worker overshoots
    candidates = {(t.user_attrs[attrs.ARCH_SAMPLED], t.user_attrs[attrs.COMPRESSION]) for t in complete}
    assert len(candidates) == budget  # no two workers trained the same candidate
    assert len({t.user_attrs[attrs.WORKER]["pid"] for t in complete}) == n_workers  # all did work
    return complete


@pytest.mark.slow  # 70 s: three real nas.py workers; CI runs it
def test_three_workers_started_together_train_distinct_candidates_to_exactly_the_budget(tmp_path, cache_dir, fresh_database):
    _run_workers(tmp_path, cache_dir, fresh_database, ["a", "b", "c"], budget=9)
    complete = _check_study(fresh_database, 9, 3)
    # Every deployed file is in the shared database, whichever worker made it.
    store = Store(fresh_database)
    assert all(store.get_model(t.user_attrs[attrs.ONNX_SHA256]) for t in complete)
    store.close()
    # Every worker leaves the front's files on its own machine.
    for name in ("a", "b", "c"):
        assert (tmp_path / name / "studies" / STUDY / "report" / "pareto.csv").exists()


@pytest.mark.slow
def test_eight_workers_stop_at_exactly_twenty(tmp_path, cache_dir, fresh_database):
    _run_workers(tmp_path, cache_dir, fresh_database, [f"w{i}" for i in range(8)], budget=20)
    _check_study(fresh_database, 20, 8)


def _wait_until_training(url: str, pid: int, timeout: float = 300) -> int:
    """The number of the trial that worker ``pid`` is training, once it is (its cost stage done)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            running = optuna.load_study(study_name=STUDY, storage=url).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            running = []
        for t in running:
            if t.user_attrs.get(attrs.WORKER, {}).get("pid") == pid and attrs.SECONDS_PREFIX + "cost" in t.user_attrs:
                return t.number
        time.sleep(0.2)
    raise AssertionError(f"worker {pid} never trained a trial")


@pytest.mark.slow  # 3 real nas.py workers, one killed
def test_a_worker_killed_inside_a_trial_leaves_exactly_the_budget_and_its_candidate_runs_again(
    tmp_path, cache_dir, fresh_database
):
    victim, *others = _start_workers(tmp_path, cache_dir, fresh_database, ["a", "b", "c"], budget=6)
    try:
        killed_number = _wait_until_training(fresh_database, victim.pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
        for w in others:
            _, err = w.communicate(timeout=600)
            assert w.returncode == 0, err
    finally:
        for w in (victim, *others):
            w.kill()
    study = optuna.load_study(study_name=STUDY, storage=fresh_database)
    trials = study.get_trials()
    assert sum(counts_towards_budget(t) for t in trials) == 6
    killed = trials[killed_number]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs[attrs.FAIL_REASON] == f"its worker (pid {victim.pid} on {socket.gethostname()}) died"
    (again,) = [t for t in trials if t.user_attrs.get(attrs.RETRIED_FROM) == killed_number]
    assert again.number > killed_number and again.state == TrialState.COMPLETE and again.params == killed.params
    assert again.user_attrs[attrs.ARCH_SAMPLED] == killed.user_attrs[attrs.ARCH_SAMPLED]
    # nas.py status: the killed worker has the one failed trial, and runs nothing.
    status = run_nas(["status", "--study", STUDY, "--storage", fresh_database], tmp_path, timeout=120)
    assert status.returncode == 0, status.stderr
    (row,) = [line.split() for line in status.stdout.splitlines() if f" pid {victim.pid} " in line]
    failed, running = row[4], row[6]  # after host, "pid", pid and complete
    assert (failed, running) == ("1", "-"), row


@pytest.mark.slow  # 200 s on a busy 2-core machine: a teacher trained while two workers wait, then 3 trials; CI runs it
def test_three_workers_with_empty_caches_train_one_teacher_and_every_trial_carries_its_hash(tmp_path, fresh_database, digits):
    workers = {}
    for name in ("a", "b", "c"):  # three machines: a working folder and an empty cache each
        (tmp_path / name).mkdir()
        args = [sys.executable, str(ROOT / "nas.py"), "--budget", "3", "--study", STUDY, "--storage", fresh_database,
                "--cache-dir", str(tmp_path / name / "cache"), *FAST]
        workers[name] = subprocess.Popen(args, cwd=tmp_path / name, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors = {}
    for name, w in workers.items():
        _, errors[name] = w.communicate(timeout=1800)
        assert w.returncode == 0, errors[name]

    trainers = [name for name, err in errors.items() if "training the study's teacher on this machine" in err]
    assert len(trainers) == 1, errors
    store = Store(fresh_database)
    record = TeacherStore(store).get(STUDY)
    assert record.state == READY and record.source.startswith(f"trained ({default_teacher_epochs(digits)} epochs) on ")
    for name, err in errors.items():
        teachers = tmp_path / name / "cache" / "teachers"
        # Each machine holds the study's teacher, the very bytes of the database's, under its SHA-256.
        assert (teachers / f"{record.sha256}.pt").read_bytes() == store.get_model(record.sha256)
        # Only the trainer keeps it as its own teacher of the data; the others loaded the study's.
        assert len(list(teachers.glob("resnet18-digits-*.pt"))) == (name in trainers)
        if name not in trainers:
            assert "waiting for the study's teacher" in err and f"teacher: the study's, ResNet-18 {record.source}" in err
    store.close()
    study = optuna.load_study(study_name=STUDY, storage=fresh_database)
    complete = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if counts_towards_budget(t)]
    assert len(complete) == 3
    assert {t.user_attrs[attrs.TEACHER_SHA256] for t in study.get_trials()} == {record.sha256}
