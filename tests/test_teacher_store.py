"""Where a study keeps its teacher: the claim that lets one worker make it, its heartbeat,
its takeover when stale, and the logits; on SQLite and on the PostgreSQL server."""

import threading
import time

import pytest

from search.study.storage import Store
from search.study.teacher_store import READY, REFUSED, TRAINING, TeacherStore

STALE = 1.0  # seconds: short, so that a dead claim goes stale within a test


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def teachers(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_database")
    store = Store(url)
    yield TeacherStore(store, stale_seconds=STALE, heartbeat_seconds=0.1)
    store.close()


def test_one_worker_claims_the_teacher_and_the_others_cannot(teachers):
    first = teachers.claim("s")
    assert first is not None
    assert teachers.claim("s") is None and teachers.claim("s", take_refused=True) is None
    record = teachers.get("s")
    assert (record.state, record.owner, record.worker) == (TRAINING, first.owner, first.worker)
    assert 0 <= record.age_seconds < STALE
    assert teachers.claim("other study") is not None  # one claim per study
    assert teachers.get("nothing") is None


def test_a_silent_claim_is_taken_over_and_its_first_owner_cannot_publish_over_the_new_one(teachers):
    dead = teachers.claim("s")
    time.sleep(STALE + 0.3)
    assert teachers.get("s").age_seconds > STALE
    heir = teachers.claim("s")
    assert heir is not None and heir.owner != dead.owner
    assert not dead.publish("dead's", 0.9, "trained", "fp") and not dead.beat()
    assert heir.publish("heir's", 0.95, "trained", "fp")
    record = teachers.get("s")
    assert (record.state, record.sha256, record.val_accuracy, record.data_fingerprint) == (READY, "heir's", 0.95, "fp")
    time.sleep(STALE + 0.3)
    assert teachers.claim("s") is None  # a published teacher is never taken over, however old


def test_a_claim_kept_alive_by_its_heartbeat_is_not_taken_over_and_shows_its_progress(teachers):
    claim = teachers.claim("s")
    with claim.alive():
        claim.steps(3, 10, 5)
        time.sleep(STALE + 0.5)
        assert teachers.claim("s") is None
        record = teachers.get("s")
        assert record.age_seconds < STALE and record.progress == (3, 10, 5)
        assert claim.publish("sha", 0.9, "trained", "fp")
    assert teachers.get("s").state == READY


def test_a_worker_that_fails_while_making_the_teacher_gives_the_claim_up_at_once(teachers):
    claim = teachers.claim("s")
    with pytest.raises(KeyboardInterrupt):
        with claim.alive():
            raise KeyboardInterrupt
    assert teachers.get("s") is None
    assert teachers.claim("s") is not None


def test_a_refused_teacher_stops_the_workers_until_an_install_replaces_it(teachers):
    claim = teachers.claim("s")
    with claim.alive():
        claim.refuse("near chance")
    record = teachers.get("s")
    assert (record.state, record.reason) == (REFUSED, "near chance")  # leaving alive() did not give it up
    time.sleep(STALE + 0.3)
    assert teachers.claim("s") is None  # a worker does not train the same refused teacher again
    installer = teachers.claim("s", take_refused=True)
    assert installer is not None and installer.publish("installed", 0.99, "imported", "fp")
    assert teachers.get("s").state == READY


@pytest.mark.parametrize("claimed_before", [False, True], ids=["a new study", "a stale claim"])
def test_of_workers_racing_for_the_claim_exactly_one_takes_it(teachers, claimed_before):
    if claimed_before:
        teachers.claim("s")
        time.sleep(STALE + 0.3)
    won = []
    racers = [threading.Thread(target=lambda: won.append(teachers.claim("s"))) for _ in range(4)]
    for r in racers:
        r.start()
    for r in racers:
        r.join()
    assert sum(c is not None for c in won) == 1


def test_the_first_logits_stored_for_an_image_set_are_the_ones_every_worker_gets(teachers):
    assert teachers.get_logits("teacher", "images") is None
    assert teachers.put_logits("teacher", "images", b"first") == b"first"
    assert teachers.put_logits("teacher", "images", b"second") == b"first"
    assert teachers.get_logits("teacher", "images") == b"first"
    assert teachers.put_logits("teacher", "other images", b"second") == b"second"
