"""Shared fixtures: the digits data set and a quickly trained teacher, made once per session."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture(scope="session")
def digits():
    from search.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, digits) -> Path:
    """A cache holding a digits teacher trained as the product trains it (99% on validation;
    fewer epochs leave ResNet-18 at chance, a teacher distillation only misleads from)."""
    from search.stages.teacher import load_or_train_teacher

    path = tmp_path_factory.mktemp("cache")
    load_or_train_teacher(digits, path)
    return path


@pytest.fixture(scope="session")
def teacher(digits, cache_dir):
    from search.stages.teacher import load_or_train_teacher

    return load_or_train_teacher(digits, cache_dir)


def run_nas(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python nas.py ARGS`` in a subprocess, from ``cwd`` (where studies/ is made)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "nas.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


# Fast search settings for end-to-end tests: the tiny space, a short proxy training.
FAST = ["--space", "tiny", "--epochs", "1", "--finetune-epochs", "0.5", "--calib-samples", "32", "--no-baselines"]


@pytest.fixture()
def fresh_database():
    """A new, empty database: the workers race to create the schema in it."""
    admin = sa.create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    name = f"edgenas_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError as e:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_SERVER} ({e}); start it as the README says")
    yield f"{POSTGRES_SERVER}/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()
