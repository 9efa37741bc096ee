"""Who works on a study: per worker (host and pid, the ``worker`` attribute of every trial
it started), its trials by outcome, what it runs now and when it was last seen. Read-only;
``nas.py status`` prints it."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from . import attrs

# Optuna's own tables: a RUNNING trial's heartbeat is one row, on the database's clock.
_heartbeats = sa.table("trial_heartbeats", sa.column("trial_id"), sa.column("heartbeat", sa.DateTime))
_trials = sa.table("trials", sa.column("trial_id"), sa.column("study_id"))


@dataclass(frozen=True)
class WorkerStatus:
    host: str
    pid: int
    complete: int  # complete trials that count towards the budget
    failed: int
    set_aside: int  # finished without counting: rejected by a limit, stopped early, repeats
    running: tuple[tuple[int, float], ...]  # (trial number, seconds since it started), for each RUNNING trial
    last_seen: float | None  # seconds since its latest heartbeat or trial end; None: neither recorded


def worker_statuses(
    storage: optuna.storages.RDBStorage, study_id: int, trials: list[FrozenTrial]
) -> list[WorkerStatus]:
    """One status per worker that started any of ``trials`` (the study's), by host and pid."""
    beat_ages = _heartbeat_ages(storage, study_id)
    now = datetime.datetime.now()  # Optuna's trial datetimes are naive local times
    by_worker: dict[tuple[str, int], list[FrozenTrial]] = {}
    for t in trials:
        worker = t.user_attrs.get(attrs.WORKER)
        if worker:
            by_worker.setdefault((worker["host"], worker["pid"]), []).append(t)
    statuses = []
    for (host, pid), own in sorted(by_worker.items()):
        counted = [t for t in own if t.state == TrialState.COMPLETE and attrs.REPEAT_OF not in t.user_attrs]
        failed = [t for t in own if t.state == TrialState.FAIL]
        running = [t for t in own if t.state == TrialState.RUNNING]
        # A failed trial may have been ended by another worker (the one that found this one
        # dead): only its heartbeats say when this worker was there.
        ages = [beat_ages[t._trial_id] for t in own if t._trial_id in beat_ages]
        ages += [(now - t.datetime_complete).total_seconds() for t in own
                 if t.datetime_complete is not None and t.state != TrialState.FAIL]
        statuses.append(WorkerStatus(
            host=host,
            pid=pid,
            complete=len(counted),
            failed=len(failed),
            set_aside=sum(t.state.is_finished() for t in own) - len(counted) - len(failed),
            running=tuple((t.number, (now - t.datetime_start).total_seconds()) for t in running),
            last_seen=max(0.0, min(ages)) if ages else None,
        ))
    return statuses


def _heartbeat_ages(storage: optuna.storages.RDBStorage, study_id: int) -> dict[int, float]:
    """Seconds since each trial's latest heartbeat, by trial id, measured on the database's
    clock as the heartbeats are (SQLite's is UTC, the trials' datetimes local time)."""
    with storage.engine.connect() as conn:
        now = conn.execute(sa.select(sa.func.now())).scalar().replace(tzinfo=None)  # as Optuna compares them
        rows = conn.execute(
            sa.select(_heartbeats.c.trial_id, _heartbeats.c.heartbeat)
            .join(_trials, _trials.c.trial_id == _heartbeats.c.trial_id)
            .where(_trials.c.study_id == study_id)
        ).all()
    return {trial_id: (now - beat).total_seconds() for trial_id, beat in rows}
