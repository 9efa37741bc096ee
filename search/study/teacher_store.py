"""Where a study keeps its teacher: one row per study beside Optuna's tables, the weights
in the study's model store (``storage.Store``, by SHA-256), the logits per image set.

The row is also the claim that lets exactly one worker make the teacher while the
others wait: the first to insert it trains (or installs) the teacher, keeping the
claim alive with a heartbeat; a claim whose heartbeat is older than ``stale_seconds``
(its worker died) is taken over by the next worker that looks. Every change of the row
is a compare-and-set on its owner, so a worker that lost its claim (it stalled past the
stale time and another took over) cannot publish over the new owner's teacher.

Ages are read on the database's clock, as Optuna does for its trials' heartbeats, so
that workers whose clocks disagree still agree on which claim is stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from .storage import Store, schema_lock

HEARTBEAT_SECONDS = 5
# A claim silent this long belongs to a dead worker. Generous beside the heartbeat: a
# machine busy training a ResNet-18 on every core still runs the heartbeat thread.
STALE_SECONDS = 60

TRAINING, READY, REFUSED = "training", "ready", "refused"

_metadata = sa.MetaData()
_teachers = sa.Table(
    "edgenas_teacher",
    _metadata,
    sa.Column("study", sa.String(512), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # TRAINING, READY or REFUSED
    sa.Column("owner", sa.String(64), nullable=False),  # the claim's own id: a compare-and-set key
    sa.Column("worker", sa.String(256), nullable=False),  # "host pid N", for messages
    sa.Column("beat", sa.Float, nullable=False),  # database clock, seconds, at the last heartbeat
    sa.Column("progress", sa.String(64), nullable=False),  # JSON [done, total, per_epoch] of the work, or ""
    sa.Column("sha256", sa.String(64)),  # READY: of the weights' blob in the model store
    sa.Column("val_accuracy", sa.Float),
    sa.Column("source", sa.Text),  # how it was made, e.g. "trained (10 epochs) on HOST"
    sa.Column("data_fingerprint", sa.String(64)),  # Dataset.identity() of the data it was made for
    sa.Column("reason", sa.Text),  # REFUSED: why
)
_logits = sa.Table(
    "edgenas_teacher_logits",
    _metadata,
    sa.Column("teacher_sha256", sa.String(64), primary_key=True),
    sa.Column("images_sha256", sa.String(64), primary_key=True),  # stages.teacher.images_sha256
    sa.Column("data", sa.LargeBinary, nullable=False),  # torch.save of the float32 logits
)


@dataclass(frozen=True)
class TeacherRecord:
    """A study's row as read, with its heartbeat's age on the database's clock."""

    state: str
    owner: str
    worker: str
    age_seconds: float
    progress: tuple[int, int, int] | None
    sha256: str | None
    val_accuracy: float | None
    source: str | None
    data_fingerprint: str | None
    reason: str | None


class TeacherStore:
    """The teachers' tables of the database ``store`` opened (its engine, its model store)."""

    def __init__(self, store: Store, stale_seconds: float = STALE_SECONDS, heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self.store = store
        self.engine = store.engine
        self.stale_seconds = stale_seconds
        self.heartbeat_seconds = heartbeat_seconds
        with schema_lock(self.engine.url.render_as_string(hide_password=False)):
            _metadata.create_all(self.engine)

    def clock(self):
        """The database's clock in seconds, as an SQL expression."""
        if self.engine.dialect.name == "postgresql":
            return sa.literal_column("extract(epoch from clock_timestamp())::float8")  # not now(): the transaction's
        if self.engine.dialect.name == "sqlite":
            return sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)")
        # Any other database: this machine's clock, which the workers' must then agree with.
        return sa.literal(time.time(), sa.Float)

    def get(self, study: str) -> TeacherRecord | None:
        t = _teachers.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(_teachers, (self.clock() - t.beat).label("age")).where(t.study == study)
            ).first()
        if row is None:
            return None
        return TeacherRecord(
            row.state, row.owner, row.worker, float(row.age), tuple(json.loads(row.progress)) if row.progress else None,
            row.sha256, row.val_accuracy, row.source, row.data_fingerprint, row.reason,
        )

    def claim(self, study: str, take_refused: bool = False) -> Claim | None:
        """The claim to make ``study``'s teacher: when the study has none, when the worker
        making it has been silent for ``stale_seconds``, and, with ``take_refused``, when
        the one made was refused (an install replaces it). None when another holds it or
        the study has its teacher."""
        claim = Claim(self, study)
        values = dict(
            state=TRAINING, owner=claim.owner, worker=claim.worker, beat=self.clock(), progress="",
            sha256=None, val_accuracy=None, source=None, data_fingerprint=None, reason=None,
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(_teachers.insert().values(study=study, **values))
            return claim
        except sa.exc.IntegrityError:  # a row exists: take it only if it is stale (or refused)
            pass
        t = _teachers.c
        takeable = (t.state == TRAINING) & (t.beat < self.clock() - self.stale_seconds)
        if take_refused:
            takeable = takeable | (t.state == REFUSED)
        with self.engine.begin() as conn:
            taken = conn.execute(_teachers.update().where((t.study == study) & takeable).values(**values)).rowcount
        return claim if taken == 1 else None

    def put_logits(self, teacher_sha256: str, images_sha256: str, data: bytes) -> bytes:
        """Keep the logits of an image set; the first stored wins, and is returned, so that
        every worker trains on the same numbers."""
        try:
            with self.engine.begin() as conn:
                conn.execute(_logits.insert().values(teacher_sha256=teacher_sha256, images_sha256=images_sha256, data=data))
        except sa.exc.IntegrityError:  # another worker stored them first
            pass
        return self.get_logits(teacher_sha256, images_sha256) or data

    def get_logits(self, teacher_sha256: str, images_sha256: str) -> bytes | None:
        c = _logits.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(c.data).where((c.teacher_sha256 == teacher_sha256) & (c.images_sha256 == images_sha256))
            ).first()
        return None if row is None else bytes(row[0])


class Claim:
    """One worker's claim on making a study's teacher. While ``alive()`` is entered, a
    thread keeps its heartbeat (and the work's progress, for the waiting workers' bars);
    leaving it by an exception gives the claim up at once, so that another worker can
    take it without waiting for it to go stale."""

    def __init__(self, teachers: TeacherStore, study: str):
        self.teachers, self.study = teachers, study
        self.owner = uuid.uuid4().hex
        self.worker = f"{socket.gethostname()} pid {os.getpid()}"
        self._progress = ""

    def _update(self, **values) -> bool:
        """Set ``values`` if the row is still this claim's, still being made; whether it was."""
        t = _teachers.c
        mine = (t.study == self.study) & (t.owner == self.owner) & (t.state == TRAINING)
        with self.teachers.engine.begin() as conn:
            return conn.execute(_teachers.update().where(mine).values(**values)).rowcount == 1

    def steps(self, done: int, total: int, per_epoch: int) -> None:
        """Where the work stands (``fit``'s ``on_progress``): sent with the next heartbeat."""
        self._progress = json.dumps([done, total, per_epoch])

    def beat(self) -> bool:
        return self._update(beat=self.teachers.clock(), progress=self._progress)

    def publish(self, sha256: str, val_accuracy: float, source: str, data_fingerprint: str) -> bool:
        """Make the teacher (its blob already in the model store) the study's; False if the
        claim was lost meanwhile, and the study's teacher is another worker's."""
        return self._update(
            state=READY, sha256=sha256, val_accuracy=val_accuracy, source=source, data_fingerprint=data_fingerprint,
            beat=self.teachers.clock(), progress="",
        )

    def refuse(self, reason: str) -> None:
        """Record that the teacher made was refused: the study's other workers stop with
        ``reason`` instead of each training the same useless teacher again."""
        self._update(state=REFUSED, reason=reason, beat=self.teachers.clock(), progress="")

    def give_up(self) -> None:
        t = _teachers.c
        mine = (t.study == self.study) & (t.owner == self.owner) & (t.state == TRAINING)
        with self.teachers.engine.begin() as conn:
            conn.execute(_teachers.delete().where(mine))

    @contextlib.contextmanager
    def alive(self):
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.teachers.heartbeat_seconds):
                self.beat()

        thread = threading.Thread(target=beat, name=f"teacher-claim-{self.study}", daemon=True)
        thread.start()
        failed = True
        try:
            yield self
            failed = False
        finally:
            stop.set()
            thread.join()
            if failed:  # published or refused already, this changes nothing
                self.give_up()
