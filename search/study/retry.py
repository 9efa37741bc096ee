"""What a dead worker left: its trial failed, and its candidate run again.

A worker that dies (killed, out of memory, its machine gone) leaves its trial RUNNING,
holding a place in the budget. Its fellow workers, or its own rerun, find such trials:
at once when the worker was a process of this machine that no longer exists, and once
its heartbeat is older than the storage's grace period otherwise. The trial is failed,
saying why, and its parameters are enqueued again as Optuna's
``RetryHeartbeatStaleTrialCallback`` does: a WAITING trial that the next worker to ask
starts, counted towards the budget like any other, at most ``MAX_RETRIES`` times per
original trial (a candidate that kills its worker every time is given up). Unlike
Optuna's callback, the new trial carries none of the dead run's attributes (its worker,
stage times, learning curve): only what the trial was enqueued with (a baseline's name
and exact network), and ``retried_from``.

Several workers may notice the same dead trial at once: :func:`retry_dead_trials` runs
under the study's start lock and fails a trial only if it is still RUNNING (the storage
refuses to change a finished trial), so each death is retried once.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from . import attrs

MAX_RETRIES = 2


@dataclass(frozen=True)
class DeadTrial:
    trial: FrozenTrial
    reason: str  # why its worker is taken for dead


@dataclass(frozen=True)
class Retried:
    number: int  # the dead worker's trial, now failed
    reason: str
    retry: int | None  # the number of the trial that runs its candidate again; None: retried MAX_RETRIES times already


def find_dead_trials(study: optuna.Study) -> list[DeadTrial]:
    """RUNNING trials whose worker is gone: a process of this machine that no longer
    exists, or any worker whose heartbeat went stale. Only reads the study."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    stale = _stale_trial_ids(study)
    host = socket.gethostname()
    dead = []
    for trial in running:
        worker = trial.user_attrs.get(attrs.WORKER) or {}
        who = f"pid {worker.get('pid')} on {worker.get('host')}" if worker else "not yet named"
        if worker.get("host") == host and worker.get("pid") != os.getpid() and not _alive(worker.get("pid")):
            dead.append(DeadTrial(trial, f"its worker ({who}) died"))
        elif trial._trial_id in stale:
            dead.append(DeadTrial(trial, f"its worker ({who}) stopped sending heartbeats"))
    return dead


def retry_dead_trials(study: optuna.Study, dead: list[DeadTrial]) -> list[Retried]:
    """Fail each dead trial that is still RUNNING and enqueue its parameters again.
    Call it under the study's start lock (see the module's note)."""
    retried = []
    for d in dead:
        if fail_running_trial(study, d.trial, d.reason):
            retried.append(Retried(d.trial.number, d.reason, _enqueue_again(study, d.trial)))
    return retried


def fail_running_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Fail a RUNNING trial with ``reason``; False if it had finished meanwhile (told by
    its worker, or failed by another)."""
    try:
        study._storage.set_trial_user_attr(trial._trial_id, attrs.FAIL_REASON, reason.splitlines()[0][:500])
        return study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def _enqueue_again(study: optuna.Study, failed: FrozenTrial) -> int | None:
    """A WAITING trial with the failed one's parameters; its number, or None once the
    original has been retried MAX_RETRIES times."""
    history = [*failed.system_attrs.get(attrs.RETRY_HISTORY, []), failed.number]
    if len(history) > MAX_RETRIES:
        return None
    system_attrs = {attrs.RETRY_ORIGINAL: history[0], attrs.RETRY_HISTORY: history}
    user_attrs = {attrs.RETRIED_FROM: failed.number}
    fixed = failed.system_attrs.get(attrs.ENQUEUED_PARAMS)
    if fixed is not None:  # an enqueued trial (a baseline) is retried as what it was enqueued as
        system_attrs[attrs.ENQUEUED_PARAMS] = fixed
        user_attrs.update({k: failed.user_attrs[k] for k in attrs.ENQUEUED_WITH if k in failed.user_attrs})
    template = optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=failed.params,
        distributions=failed.distributions,
        user_attrs=user_attrs,
        system_attrs=system_attrs,
    )
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return study._storage.get_trial(trial_id).number


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between a running trial's heartbeats; None where the storage keeps none."""
    # The study's storage is Optuna's caching wrapper around the RDBStorage: ask it, not its type.
    storage = study._storage
    return storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None


def _stale_trial_ids(study: optuna.Study) -> set[int]:
    if heartbeat_interval(study) is None:
        return set()
    return set(study._storage._get_stale_trial_ids(study._study_id))


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
