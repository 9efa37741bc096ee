"""The trial loop: the sampler, and trials until the study holds exactly the budget.

``--budget N`` means N complete trials in the study, counting those of earlier runs:
a rerun after Ctrl-C or a crash finishes the job instead of starting over. A worker
that was killed leaves its trial RUNNING; the heartbeat marks it failed once stale.
"""

from __future__ import annotations

import os
import socket
import time

import optuna
from optuna.trial import TrialState

from ..progress import SearchProgress
from ..stages import StageFailed
from . import attrs
from .config import StudyConfig
from .storage import SearchError

WAIT_SECONDS = 2.0
MAX_FAILURES_IN_A_ROW = 5
MAX_REJECTIONS_IN_A_ROW = 50


def make_sampler(config: StudyConfig, n_existing: int) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded by the configured seed plus the trials already there:
    a fresh single-worker study is reproducible, and a resumed or second worker does
    not re-propose the trials the first one started with."""
    seed = config.seed + n_existing
    # Hard limits reach the samplers through trial.set_constraint in the objective.
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=config.population, seed=seed)
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def count_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def worker_id() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fail_dead_local_trials(study: optuna.Study) -> None:
    """Fail RUNNING trials whose worker was a process of this machine that is gone.

    After a crash on this machine the rerun need not wait for the heartbeat's grace
    period; trials of other machines are left to the heartbeat.
    """
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(attrs.WORKER) or {}
        if worker.get("host") == host and worker.get("pid") != os.getpid() and not _alive(worker.get("pid")):
            try:
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_trials(
    study: optuna.Study, config: StudyConfig, budget: int, objective, progress: SearchProgress
) -> None:
    """Run trials until the study holds exactly ``budget`` complete ones.

    With several workers, a worker does not start a trial when the complete trials
    plus those running elsewhere already make the budget; it waits to see whether
    they complete (a failed one leaves room for another).
    """
    study.sampler = make_sampler(config, len(study.get_trials(deepcopy=False)))
    failures: list[str] = []
    rejections = 0
    fail_dead_local_trials(study)
    progress.start(count_complete(study), budget)
    try:
        while True:
            n_complete = count_complete(study)
            if n_complete >= budget:
                break
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if n_complete + running >= budget:
                optuna.storages.fail_stale_trials(study)
                fail_dead_local_trials(study)
                time.sleep(WAIT_SECONDS)
                continue
            study.optimize(objective, n_trials=1, catch=(StageFailed,))
            trial = _last_trial_of_this_worker(study)
            progress.trial_finished(trial, count_complete(study))
            if trial.state == TrialState.FAIL:
                failures.append(
                    f"trial {trial.number}, {trial.user_attrs.get(attrs.FAILED_STAGE)}: "
                    f"{trial.user_attrs.get(attrs.FAIL_REASON)}"
                )
                if len(failures) >= MAX_FAILURES_IN_A_ROW:
                    raise SearchError(
                        f"{len(failures)} trials in a row failed, so something is wrong beyond one candidate; "
                        f"last: {failures[-1]}"
                    )
            elif trial.state == TrialState.PRUNED:
                rejections += 1
                if rejections >= MAX_REJECTIONS_IN_A_ROW:
                    raise SearchError(
                        f"{rejections} candidates in a row broke the constraints before training; "
                        "loosen --max-latency-ms / --max-size-kb or pick a smaller --space"
                    )
            else:
                failures.clear()
                rejections = 0
    finally:
        progress.close()


def _last_trial_of_this_worker(study: optuna.Study) -> optuna.trial.FrozenTrial:
    me = worker_id()
    for trial in reversed(study.get_trials(deepcopy=False)):
        if trial.user_attrs.get(attrs.WORKER) == me:
            return trial
    raise SearchError("lost track of this worker's last trial")
