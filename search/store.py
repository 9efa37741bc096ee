"""Tables of our own beside Optuna's, in the study's database.

- ``edgenas_model``: every deployed ONNX file, keyed by its SHA-256, so that any
  worker, on any machine, can write out the files of the final front.
- ``edgenas_latency``: the measurement cache, keyed by the file's hash and the
  target's identity: an identical file is measured once, whichever worker meets it.
"""

from __future__ import annotations

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


class Store:
    def __init__(self, url: str):
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        self.engine = sa.create_engine(url, **kwargs)
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
