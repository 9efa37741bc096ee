"""A study shared through the real PostgreSQL server: two workers, one budget."""

import subprocess
import sys
import uuid

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from conftest import FAST, ROOT
from search.study import attrs
from search.study.storage import Store

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"

pytestmark = pytest.mark.postgres


@pytest.fixture()
def fresh_database():
    """A new, empty database: the workers race to create the schema in it."""
    admin = sa.create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    name = f"edgenas_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError as e:
        pytest.fail(f"PostgreSQL is not reachable at {SERVER} ({e}); start it as the README says")
    yield f"{SERVER}/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def test_two_workers_share_one_study_and_stop_at_the_budget(tmp_path, cache_dir, fresh_database):
    URL, study_name, budget = fresh_database, "shared", 6
    args = [sys.executable, str(ROOT / "nas.py"), "--budget", str(budget), "--study", study_name,
            "--storage", URL, "--cache-dir", str(cache_dir), *FAST]
    workers = [
        subprocess.Popen(args, cwd=tmp_path / name, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
        if (tmp_path / name).mkdir() is None
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err

    study = optuna.load_study(study_name=study_name, storage=URL)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == budget  # exactly: neither worker overshoots
    workers_seen = {t.user_attrs[attrs.WORKER]["pid"] for t in study.get_trials()}
    assert len(workers_seen) == 2  # both did work
    # Every deployed file is in the shared database, whichever worker made it.
    store = Store(URL)
    assert all(store.get_model(t.user_attrs[attrs.ONNX_SHA256]) for t in complete)
    store.close()
    # Both workers leave the front's files on their own machine.
    for name in ("a", "b"):
        assert (tmp_path / name / "studies" / study_name / "pareto.csv").exists()
