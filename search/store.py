"""Tables of our own beside Optuna's, in the study's database.

- ``edgenas_model``: every deployed ONNX file, keyed by its SHA-256, so that any
  worker, on any machine, can write out the files of the final front.
- ``edgenas_latency``: the measurement cache, keyed by the file's hash and the
  target's identity: an identical file is measured once, whichever worker meets it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time

import sqlalchemy as sa

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


class Store:
    def __init__(self, url: str):
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        self.engine = sa.create_engine(url, **kwargs)
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
