"""The study: storage, configuration, the trial loop, and what is left at the end.

``--budget N`` means N complete trials in the study, counting those of earlier runs:
a rerun after Ctrl-C or a crash finishes the job instead of starting over. A worker
that was killed leaves its trial RUNNING; the heartbeat marks it failed once stale.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from . import attrs
from .config import ConfigError, StudyConfig, check_study_name, default_study_name, resolve, study_dir
from .progress import SearchProgress
from .store import schema_lock

log = logging.getLogger(__name__)
# Heartbeats and metric names are marked experimental; we rely on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_SECONDS = 5
GRACE_SECONDS = 30  # a trial whose worker has been silent this long is failed as stale
WAIT_SECONDS = 2.0
MAX_FAILURES_IN_A_ROW = 5
MAX_REJECTIONS_IN_A_ROW = 50


class SearchError(RuntimeError):
    """The search cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class SearchRequest:
    """What the command line asks for; settings not given are absent from ``explicit``."""

    budget: int
    explicit: dict
    study: str | None = None
    storage: str | None = None
    data_dir: str | None = None
    cache_dir: str = "studies/.cache"
    device: str | None = None
    token: str | None = None


def study_name_for(request: SearchRequest) -> str:
    name = request.study or default_study_name(
        request.explicit.get("dataset", StudyConfig.dataset), request.explicit.get("target", StudyConfig.target)
    )
    check_study_name(name)
    return name


def storage_url_for(study: str, storage: str | None) -> str:
    return storage or f"sqlite:///{study_dir(study) / 'study.db'}"


def check_storage_url(url: str, user_given: bool) -> None:
    """Refuse a storage URL that cannot work, without connecting or creating anything."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
        parsed.get_dialect()
    except Exception as e:
        raise ConfigError(
            f"--storage {url!r} is not a usable database URL ({type(e).__name__}); "
            "use e.g. sqlite:///studies/my.db or postgresql+psycopg://user@host/db"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError(f"--storage {url!r}: a study needs a file, e.g. sqlite:///studies/my.db")
        parent = Path(parsed.database).parent
        if user_given and not parent.is_dir():
            raise ConfigError(f"--storage {url!r}: folder {parent} does not exist")


def sqlite_file(url: str) -> Path | None:
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" else None


def open_storage(url: str) -> optuna.storages.RDBStorage:
    db = sqlite_file(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    try:
        with schema_lock(url):
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"connect_args": {"timeout": 60}} if db is not None else {"pool_pre_ping": True},
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
            )
    except Exception as e:
        raise SearchError(f"cannot open study storage {url}: {str(e).splitlines()[0]}") from None


def stored_config(url: str, study: str) -> StudyConfig | None:
    """The configuration of an existing study, or None; creates nothing for a new SQLite file."""
    db = sqlite_file(url)
    if db is not None and not db.exists():
        return None
    storage = open_storage(url)
    try:
        study_id = storage.get_study_id_from_name(study)
    except KeyError:
        return None
    text = storage.get_study_user_attrs(study_id).get(attrs.STUDY_CONFIG)
    if text is None:
        raise SearchError(f"study {study!r} in {url} was not made by this tool (it has no stored configuration)")
    return StudyConfig.from_json(text)


def create_or_load_study(url: str, study: str, config: StudyConfig) -> optuna.Study:
    storage = open_storage(url)
    existing = {s.study_name for s in storage.get_all_studies()}
    if study in existing:
        s = optuna.load_study(study_name=study, storage=storage, sampler=_placeholder_sampler())
    else:
        s = optuna.create_study(
            study_name=study, storage=storage, directions=list(attrs.DIRECTIONS), load_if_exists=True
        )
        s.set_metric_names(list(attrs.METRIC_NAMES))
        if attrs.STUDY_CONFIG not in s.user_attrs:
            s.set_user_attr(attrs.STUDY_CONFIG, config.to_json())
    s.sampler = make_sampler(config, len(s.get_trials(deepcopy=False)))
    return s


def _placeholder_sampler() -> optuna.samplers.BaseSampler:
    # load_study needs a sampler; the real one is chosen once the trial count is known.
    return optuna.samplers.RandomSampler()


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


def run_trials(study: optuna.Study, budget: int, objective, progress: SearchProgress) -> None:
    """Run trials until the study holds exactly ``budget`` complete ones.

    With several workers, a worker does not start a trial when the complete trials
    plus those running elsewhere already make the budget; it waits to see whether
    they complete (a failed one leaves room for another).
    """
    from .objective import StageFailed

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


def with_space_resolved(config: StudyConfig, resolution: int) -> StudyConfig:
    if config.space != "auto":
        return config
    return replace(config, space="compact" if resolution <= 16 else "mbv3")
