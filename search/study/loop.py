"""The trial loop: the sampler, and trials until the study holds exactly the budget.

``--budget N`` means N complete trials in the study, counting those of earlier runs:
a rerun after Ctrl-C or a crash finishes the job instead of starting over. A worker
that was killed leaves its trial RUNNING; its fellows (or its rerun) fail it and run
its candidate again (``retry``).

Several workers share a study without repeating each other: each draws from a sampler
seeded by its own place among the study's workers, and a candidate already complete or
running in the study is not trained again but recorded as a repeat, which does not
count towards the budget. Counting the trials, starting one and sampling its candidate
happen under a lock that all workers of the study share (``storage.TrialStartLock``),
so the last trial of the budget is started once, and two workers never start the same
candidate.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import warnings
from typing import Callable, ContextManager, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..progress import SearchProgress
from ..stages import StageFailed
from . import attrs
from .config import StudyConfig
from .retry import fail_running_trial, find_dead_trials, heartbeat_interval, retry_dead_trials
from .storage import SearchError

# Optuna warns when a study with heartbeats asks for trials outside optimize(); this
# loop records the heartbeats itself (_heartbeat).
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

WAIT_SECONDS = 2.0
MAX_FAILURES_IN_A_ROW = 5
MAX_REJECTIONS_IN_A_ROW = 50
MAX_REPEATS_IN_A_ROW = 50
MAX_STOPPED_IN_A_ROW = 50
WORKER_SEED_STRIDE = 1_000_003  # seeds of different workers never meet within a study's trial count


class Objective(Protocol):
    """What the loop asks of a trial (``search.study.objective.StudyObjective``)."""

    def sample(self, trial: optuna.Trial) -> object:
        """Draw the trial's candidate and record ``arch_sampled`` and ``compression``."""

    def run(self, trial: optuna.Trial, candidate: object) -> tuple[float, ...]:
        """Train, compress and measure the candidate; its objective values."""

    def repeat(self, trial: optuna.Trial, original: FrozenTrial) -> tuple[float, ...] | None:
        """Record the trial as a repeat of ``original``: its values if it is complete (the
        sampler learns from them), None while it is still running elsewhere."""


def make_sampler(config: StudyConfig, worker_slot: int, n_existing: int) -> optuna.samplers.BaseSampler:
    """The sampler of one worker. The first worker of a fresh study is seeded with
    ``--seed`` itself, so a single-worker study is reproducible; every later worker
    (another machine, or a rerun after a crash) has a seed of its own, so workers
    started together do not draw in lockstep."""
    seed = sampler_seed(config, worker_slot, n_existing)
    # Hard limits reach the samplers through trial.set_constraint in the objective.
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=config.population, seed=seed)
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def sampler_seed(config: StudyConfig, worker_slot: int, n_existing: int) -> int:
    return config.seed + WORKER_SEED_STRIDE * worker_slot + n_existing


def counts_towards_budget(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and attrs.REPEAT_OF not in trial.user_attrs


def count_complete(study: optuna.Study) -> int:
    """Complete trials of the study that count towards the budget (repeats do not)."""
    return sum(counts_towards_budget(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def worker_id() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def run_trials(
    study: optuna.Study,
    config: StudyConfig,
    budget: int,
    objective: Objective,
    start_lock: Callable[[], ContextManager],
    progress: SearchProgress,
) -> None:
    """Run trials until the study holds exactly ``budget`` complete ones.

    A worker does not start a trial when the complete trials plus those running already
    make the budget; it waits to see whether they complete (a failed one leaves room
    for another). Enqueued (waiting) trials are started first, by whichever worker asks;
    so are the retries of trials whose worker died, failed before each start.
    """
    with start_lock():
        slot = study.user_attrs.get(attrs.STUDY_WORKERS_JOINED, 0)
        study.set_user_attr(attrs.STUDY_WORKERS_JOINED, slot + 1)
        study.sampler = make_sampler(config, slot, len(study.get_trials(deepcopy=False)))
    failures: list[str] = []
    rejections = repeats = stopped = 0
    progress.start(count_complete(study), budget)
    with _remembered_ctrl_c() as ctrl_c:
        try:
            while True:
                if ctrl_c.is_set():
                    raise KeyboardInterrupt
                dead = find_dead_trials(study)
                started = None
                # A worker with nothing to fail and no room to start a trial waits without the lock:
                # many idle workers taking it every few seconds would delay the one that has room.
                if dead or not _budget_taken(study.get_trials(deepcopy=False), budget):
                    with start_lock():
                        retried = retry_dead_trials(study, dead)
                        started = _start_trial(study, budget, objective)
                    for r in retried:
                        again = "given up" if r.retry is None else f"its candidate runs again as trial {r.retry}"
                        progress.message(f"trial {r.number} failed: {r.reason}; {again}")
                if started is None:
                    if count_complete(study) >= budget:
                        break
                    time.sleep(WAIT_SECONDS)
                    continue
                trial, candidate, original = started
                if original is not None:
                    _tell_repeat(study, trial, objective, original)
                else:
                    _run(study, trial, objective, candidate, ctrl_c)
                finished = study._storage.get_trial(trial._trial_id)
                progress.trial_finished(finished, count_complete(study))
                if attrs.REPEAT_OF in finished.user_attrs:
                    repeats += 1
                    if repeats >= MAX_REPEATS_IN_A_ROW:
                        raise SearchError(
                            f"{repeats} candidates in a row were already in the study: the space looks exhausted; "
                            "pick a larger --space or a smaller --budget"
                        )
                    continue
                repeats = 0
                if finished.state == TrialState.FAIL:
                    failures.append(
                        f"trial {finished.number}, {finished.user_attrs.get(attrs.FAILED_STAGE)}: "
                        f"{finished.user_attrs.get(attrs.FAIL_REASON)}"
                    )
                    if len(failures) >= MAX_FAILURES_IN_A_ROW:
                        raise SearchError(
                            f"{len(failures)} trials in a row failed, so something is wrong beyond one candidate; "
                            f"last: {failures[-1]}"
                        )
                elif attrs.EARLY_STOPPED in finished.user_attrs:
                    stopped += 1
                    if stopped >= MAX_STOPPED_IN_A_ROW:
                        raise SearchError(
                            f"{stopped} candidates in a row were stopped early, each dominated by the front: the front "
                            "looks settled; stop here, or rerun with --no-early-stop to train every candidate"
                        )
                elif finished.state == TrialState.PRUNED:
                    rejections += 1
                    if rejections >= MAX_REJECTIONS_IN_A_ROW:
                        raise SearchError(
                            f"{rejections} candidates in a row broke the constraints before training; "
                            "loosen --max-latency-ms / --max-size-kb or pick a smaller --space"
                        )
                else:
                    failures.clear()
                    rejections = stopped = 0
        except BaseException as e:  # Ctrl-C, or a bug: this worker's trial failed, the worker stops
            _fail_own_running_trials(study, "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}")
            raise
        finally:
            progress.close()


def _fail_own_running_trials(study: optuna.Study, reason: str) -> None:
    """Fail this process's RUNNING trial wherever the interrupt struck: in training, but
    also while its candidate was sampled or the start lock released, outside ``_run``."""
    me = worker_id()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(attrs.WORKER) == me:
            fail_running_trial(study, trial, reason)


def _start_trial(study: optuna.Study, budget: int, objective: Objective):
    """Under the start lock: a new trial (an enqueued one first), its candidate, and the
    trial it repeats if any; None when complete and running trials already make the budget."""
    trials = study.get_trials(deepcopy=False)
    if _budget_taken(trials, budget):
        return None
    trial = study.ask()
    if heartbeat_interval(study) is not None:  # alive from its first moment: dying while sampling goes stale too
        study._storage.record_heartbeat(trial._trial_id)
    trial.set_user_attr(attrs.WORKER, worker_id())
    candidate = objective.sample(trial)
    key = _candidate_key(study._storage.get_trial(trial._trial_id))
    original = next(
        (t for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING)
         and attrs.REPEAT_OF not in t.user_attrs and _candidate_key(t) == key),
        None,
    )
    return trial, candidate, original


def _budget_taken(trials: list[FrozenTrial], budget: int) -> bool:
    """Complete and running trials make the budget: no trial may start unless one fails."""
    return sum(counts_towards_budget(t) or t.state == TrialState.RUNNING for t in trials) >= budget


def _candidate_key(trial: FrozenTrial) -> tuple:
    return trial.user_attrs.get(attrs.ARCH_SAMPLED), trial.user_attrs.get(attrs.COMPRESSION)


def _tell_repeat(study: optuna.Study, trial: optuna.Trial, objective: Objective, original: FrozenTrial) -> None:
    """A repeat is complete with the original's values, or set aside (pruned) while the
    original still runs; either way it does not count towards the budget."""
    values = objective.repeat(trial, original)
    if values is None:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, values)


def _run(study: optuna.Study, trial: optuna.Trial, objective: Objective, candidate: object,
         ctrl_c: threading.Event) -> None:
    """The trial, told as Optuna's ``optimize`` would, with its heartbeat."""
    with _heartbeat(study, trial):
        try:
            values = objective.run(trial, candidate)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except StageFailed:
            study.tell(trial, state=TrialState.FAIL)
        else:
            if ctrl_c.is_set():  # pressed during the trial, and its KeyboardInterrupt lost
                raise KeyboardInterrupt
            study.tell(trial, values)


@contextlib.contextmanager
def _remembered_ctrl_c():
    """Ctrl-C that cannot be lost. Python raises KeyboardInterrupt wherever the main thread
    is; inside a finalizer (``__del__``, a weakref callback: an ONNX Runtime session or a
    tensor collected mid-trial) it is printed as "Exception ignored" and dropped, and the
    search went on (CI saw a Ctrl-C in trial 3 of 5 and all five complete). The handler
    also sets the event, which the loop checks before telling a trial complete."""
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # ignored, or someone else's
    ):
        yield pressed
        return

    def remember(signum, frame):
        pressed.set()
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, remember)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, trial: optuna.Trial):
    """Record the trial's heartbeat while it runs, so other workers can tell it is alive."""
    storage = study._storage
    interval = heartbeat_interval(study)
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            storage.record_heartbeat(trial._trial_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
