"""Where a study lives: its database, opened safely by many workers, and our tables beside
Optuna's; and the command line's request turned into a study to create or join.

The runner needs three things from here: :func:`plan_study` (which study, where, with
what configuration: checks only, writes nothing), :func:`open_study` (create or join it),
the study's :class:`TrialStartLock`, and, for the read-only commands,
:func:`study_summaries`, :func:`models_measured_by_board` and :func:`deployed_model`.

Our own tables, beside Optuna's in the same database:

- ``edgenas_model``: every deployed ONNX file, keyed by its SHA-256, so that any
  worker, on any machine, can write out the files of the final front.
- ``edgenas_latency``: the measurement cache, keyed by the file's hash and the
  measuring setup: an identical file is measured once, whichever worker meets it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from . import attrs
from .config import ConfigError, StudyConfig, check_study_name, default_study_name, resolve, study_dir
from .workers import WorkerStatus, worker_statuses

# Heartbeats and metric names are marked experimental; we rely on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_SECONDS = 5
GRACE_SECONDS = 30  # a trial whose worker has been silent this long is failed as stale
# Connections an Optuna storage keeps open to a server: one per worker process, and more
# only while its threads overlap (the heartbeat's write beside the trial's). With
# SQLAlchemy's defaults (each engine keeps what it once needed) 40 workers of one study
# reached PostgreSQL's max_connections (100 by default) and 8 were refused ("too many
# clients"); with these, and the start lock and model store unpooled, they peaked at 81:
# one each, and a second while waiting for the start lock (tests/test_loop.py).
POOL_SIZE = 1
POOL_OVERFLOW = 4


class SearchError(RuntimeError):
    """The search cannot go on; the message says why and what to do."""


_metadata = sa.MetaData()
_models = sa.Table(
    "edgenas_model",
    _metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)
_latency = sa.Table(
    "edgenas_latency",
    _metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("target_key", sa.String(512), primary_key=True),
    sa.Column("result", sa.Text, nullable=False),  # JSON: statistics and provenance
    sa.Column("created", sa.Float, nullable=False),
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_SCHEMA_LOCK_KEY = 0x6564676E6173  # "edgnas": any constant shared by all workers


@contextlib.contextmanager
def schema_lock(url: str):
    """Serialise table creation between workers that open a new shared database at once.

    PostgreSQL fails one of two concurrent CREATE TABLEs of the same name
    ("duplicate key value violates unique constraint pg_type_typname_nsp_index"), as
    seen when two workers started a study together. An advisory lock held around
    Optuna's and our own table creation orders them; SQLite needs nothing, as its
    file lock already orders writers.
    """
    if not url.startswith("postgresql"):
        yield
        return
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def _server_engine_kwargs(pooled: bool) -> dict:
    """How an engine reaches a database server. Pooled: Optuna's storage, which talks to
    it dozens of times a trial. Not pooled (a connection per use): the start lock and the
    model store, used a few times a trial, so that an idle worker holds one connection."""
    if not pooled:
        return {"poolclass": sa.pool.NullPool}
    return {"pool_pre_ping": True, "pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}


class TrialStartLock:
    """Makes "count the study's trials, then start one" a single step among all its workers.

    Without it, two workers that both see one trial missing from the budget both start
    it. PostgreSQL: a transaction-level advisory lock keyed by the study, on a connection
    of its own (Optuna locks the studies row itself when it creates a trial, so that row
    cannot be the lock). SQLite: an exclusive ``flock`` on a file beside the database,
    since its workers all share that machine's file system.
    """

    def __init__(self, url: str, study: str):
        self.url = url
        self.key = int.from_bytes(hashlib.sha256(study.encode()).digest()[:8], "big", signed=True)
        db = sqlite_file(url)
        self.lock_file = None if db is None else db.with_name(db.name + ".lock")
        self.engine = None if db is not None else sa.create_engine(url, **_server_engine_kwargs(pooled=False))

    @contextlib.contextmanager
    def __call__(self):
        if self.engine is not None:
            with self.engine.connect() as conn, conn.begin():
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self.key})
                yield  # released when the transaction ends
            return
        with open(self.lock_file, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()


class Store:
    def __init__(self, url: str):
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else _server_engine_kwargs(pooled=False)
        self.engine = sa.create_engine(url, **kwargs)
        _write_ahead_log(self.engine)
        with schema_lock(url):
            _metadata.create_all(self.engine)

    def put_model(self, data: bytes) -> str:
        key = sha256(data)
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(_models.c.sha256).where(_models.c.sha256 == key)).first()
            if exists is None:
                try:
                    conn.execute(_models.insert().values(sha256=key, data=data, created=time.time()))
                except sa.exc.IntegrityError:  # another worker stored the same file meanwhile
                    pass
        return key

    def get_model(self, key: str) -> bytes | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_models.c.data).where(_models.c.sha256 == key)).first()
        return None if row is None else bytes(row[0])

    def get_latency(self, key: str, target_key: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(_latency.c.result).where(
                    (_latency.c.sha256 == key) & (_latency.c.target_key == target_key)
                )
            ).first()
        return None if row is None else json.loads(row[0])

    def put_latency(self, key: str, target_key: str, result: dict) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    _latency.insert().values(
                        sha256=key, target_key=target_key, result=json.dumps(result), created=time.time()
                    )
                )
        except sa.exc.IntegrityError:  # measured by another worker meanwhile: keep the first
            pass

    def close(self) -> None:
        self.engine.dispose()


def storage_url_for(study: str, storage: str | None) -> str:
    return storage or f"sqlite:///{study_dir(study) / 'study.db'}"


def check_storage_url(url: str, user_given: bool) -> None:
    """Refuse a storage URL that cannot work, without connecting or creating anything."""
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
    parsed = sa.engine.make_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" else None


def _write_ahead_log(engine: sa.Engine) -> None:
    """Give every new connection of a SQLite ``engine`` a write-ahead log.

    Optuna's storage commits each parameter and attribute on its own, about 35 commits
    a trial, and in SQLite's default rollback-journal mode each commit syncs the file
    twice: 11 ms a commit measured on this project's machines, 5.4 ms with a write-ahead
    log and ``synchronous=NORMAL``, which still never corrupts the file on a crash (a
    power cut can lose the last commits, which a resumed study runs again). Readers and
    the one writer no longer block each other either. The mode is stored in the file,
    so every later opener (optuna-dashboard too) uses it.
    """
    if engine.dialect.name != "sqlite":
        return

    def tune(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sa.event.listen(engine, "connect", tune)
    engine.dispose()  # connections made before the listener get it on reconnection


def open_storage(url: str) -> optuna.storages.RDBStorage:
    db = sqlite_file(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    try:
        with schema_lock(url):
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=_server_engine_kwargs(pooled=True) if db is None else {"connect_args": {"timeout": 60}},
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
            )
    except Exception as e:  # unreachable, refused, bad credentials: what to fix is in the command
        raise ConfigError(f"cannot open study storage {url}: {str(e).splitlines()[0]}") from None
    _write_ahead_log(storage.engine)
    return storage


def stored_attrs(url: str, study: str) -> dict | None:
    """The attributes of an existing study made by this tool, or None; creates nothing for a new SQLite file."""
    db = sqlite_file(url)
    if db is not None and not db.exists():
        return None
    storage = open_storage(url)
    try:
        study_id = storage.get_study_id_from_name(study)
        stored = storage.get_study_user_attrs(study_id)
    except KeyError:
        return None
    finally:
        storage.engine.dispose()  # its connection would stay open beside the study's own for the whole run
    if attrs.STUDY_CONFIG not in stored:
        raise SearchError(f"study {study!r} in {url} was not made by this tool (it has no stored configuration)")
    return stored


@dataclass(frozen=True)
class StudyPlan:
    """A study to create or join, checked: nothing has been written yet."""

    name: str
    url: str
    config: StudyConfig
    exists: bool
    data: dict | None = None  # Dataset.record() of the data it was made on (attrs.STUDY_DATA), where it has one
    measuring_setup: str | None = None  # attrs.STUDY_MEASURING_SETUP, where it has one


def plan_study(study: str | None, storage: str | None, explicit: dict) -> StudyPlan:
    """Which study, where, and the configuration its workers run with.

    ``explicit`` holds the settings given on the command line; joining an existing
    study, they must agree with the stored ones (see ``config.resolve``).
    """
    name = study or default_study_name(
        explicit.get("dataset", StudyConfig.dataset), explicit.get("target", StudyConfig.target),
        explicit.get("model", ""),
    )
    check_study_name(name)
    url = storage_url_for(name, storage)
    check_storage_url(url, user_given=storage is not None)
    stored = stored_attrs(url, name)
    if stored is None:
        return StudyPlan(name, url, resolve(name, explicit, None), exists=False)
    config = StudyConfig.from_json(stored[attrs.STUDY_CONFIG])
    return StudyPlan(
        name, url, resolve(name, explicit, config), exists=True, data=stored.get(attrs.STUDY_DATA),
        measuring_setup=stored.get(attrs.STUDY_MEASURING_SETUP),
    )


def existing_study(study: str, storage: str | None) -> StudyPlan:
    """A study that must exist already (``report``, ``export``)."""
    plan = plan_study(study, storage, {})
    if not plan.exists:
        raise ConfigError(f"no study {study!r} in {plan.url}; list studies with: python nas.py status --storage URL")
    return plan


def open_study(plan: StudyPlan, resolution: int) -> tuple[optuna.Study, Store]:
    """Create the planned study (storing its configuration, with the data's ``resolution``
    and the search space resolved for it) or load it; with the store of its ONNX files and
    latencies."""
    config = replace(plan.config, resolution=resolution)
    if config.space == "auto":
        config = replace(config, space="compact" if resolution <= 16 else "mbv3")
    storage = open_storage(plan.url)
    existing = {s.study_name for s in storage.get_all_studies()}
    if plan.name in existing:
        # The sampler is chosen by the trial loop, once it knows the study's trials.
        study = optuna.load_study(study_name=plan.name, storage=storage, sampler=optuna.samplers.RandomSampler())
    else:
        study = optuna.create_study(
            study_name=plan.name, storage=storage, directions=list(attrs.DIRECTIONS), load_if_exists=True
        )
        study.set_metric_names(list(attrs.METRIC_NAMES))
        if attrs.STUDY_CONFIG not in study.user_attrs:
            study.set_user_attr(attrs.STUDY_CONFIG, config.to_json())
    return study, Store(plan.url)


def study_config(study: optuna.Study) -> StudyConfig:
    """The configuration stored with an open study (the first worker's, whoever asks)."""
    return StudyConfig.from_json(study.user_attrs[attrs.STUDY_CONFIG])


@dataclass(frozen=True)
class StudySummary:
    name: str
    url: str
    # Trials by state name (COMPLETE, FAIL, PRUNED, RUNNING, WAITING); repeats apart, as
    # REPEAT, and trials stopped early as dominated, as STOPPED (PRUNED: rejected by a limit).
    counts: dict[str, int]
    config: str  # the stored configuration, as JSON
    workers: list[WorkerStatus]


def study_summaries(storage: str | None, study: str | None, studies_dir: Path) -> list[StudySummary]:
    """Every study in ``storage`` (default: each ``studies_dir/*/study.db``), or only ``study``."""
    if storage:
        check_storage_url(storage, user_given=True)
        urls = [storage]
    else:
        urls = [f"sqlite:///{p}" for p in sorted(studies_dir.glob("*/study.db"))]
    summaries = []
    for url in urls:
        rdb = open_storage(url)
        for s in rdb.get_all_studies():
            if study and s.study_name != study:
                continue
            trials = rdb.get_all_trials(s._study_id, deepcopy=False)
            kinds = [_kind(t) for t in trials]
            counts = {kind: kinds.count(kind) for kind in ["REPEAT", "STOPPED", *(state.name for state in TrialState)]}
            summaries.append(StudySummary(
                s.study_name, url, counts, s.user_attrs.get(attrs.STUDY_CONFIG, "{}"),
                worker_statuses(rdb, s._study_id, trials),
            ))
    return summaries


def models_measured_by_board(url: str, study: str) -> dict[str, int]:
    """How many of the study's models each board agent (HOST:PORT) timed: trials whose
    latency it measured, not those the latency cache answered."""
    rdb = open_storage(url)
    counts: dict[str, int] = {}
    for trial in rdb.get_all_trials(rdb.get_study_id_from_name(study), deepcopy=False):
        device = trial.user_attrs.get(attrs.MEASURED_ON, {}).get("device")
        if device is not None and trial.user_attrs.get(attrs.LATENCY_CACHED) is False:
            counts[device] = counts.get(device, 0) + 1
    return dict(sorted(counts.items()))


def _kind(trial: FrozenTrial) -> str:
    if attrs.REPEAT_OF in trial.user_attrs:
        return "REPEAT"
    if attrs.EARLY_STOPPED in trial.user_attrs:
        return "STOPPED"
    return trial.state.name


@dataclass(frozen=True)
class DeployedModel:
    onnx: bytes
    record: dict  # the trial's attributes, or the finalized record
    study_attrs: dict  # the study's attributes (its data, test accuracies)


def deployed_model(study: str, storage: str | None, trial_number: int, final: bool = False) -> DeployedModel:
    """The deployed ONNX file of one trial, from the study's database, with the trial's
    attributes; with ``final``, the file of its finalized candidate and the finalized record."""
    plan = existing_study(study, storage)
    rdb = open_storage(plan.url)
    study_id = rdb.get_study_id_from_name(study)
    study_attrs = rdb.get_study_user_attrs(study_id)
    if final:
        record = study_attrs.get(attrs.FINALIZED_PREFIX + str(trial_number))
        if record is None:
            raise ConfigError(
                f"trial {trial_number} of study {study} was not finalized; "
                f"finalize it with: python nas.py finalize --study {study} --trials {trial_number}"
            )
    else:
        trial = next((t for t in rdb.get_all_trials(study_id, deepcopy=False) if t.number == trial_number), None)
        record = {} if trial is None else trial.user_attrs
        if attrs.ONNX_SHA256 not in record:
            raise ConfigError(f"study {study} has no deployed model for trial {trial_number}")
    data = Store(plan.url).get_model(record[attrs.ONNX_SHA256])
    if data is None:
        raise SearchError(f"the model of trial {trial_number} is missing from the study's database")
    return DeployedModel(data, record, study_attrs)
