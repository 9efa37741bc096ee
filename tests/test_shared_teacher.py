"""The study's teacher: made once by the first worker that needs it, stored in the study's
database with its logits, waited for and loaded by the others, checked against chance."""

import hashlib
import io
import socket
import threading
import time
from dataclasses import replace

import pytest
import torch

import search.shared_teacher as shared
from search.data import DatasetError
from search.progress import SearchProgress
from search.shared_teacher import install_teacher, make_teacher, shared_logits, study_teacher
from search.stages.teacher import blob_path, build_teacher, teacher_path
from search.study.storage import SearchError, Store
from search.study.teacher_store import READY, REFUSED, TeacherStore


class Recorder(SearchProgress):
    def __init__(self):
        self.messages, self.steps_seen = [], []

    def message(self, text):
        self.messages.append(text)

    def steps(self, done, total, per_epoch):
        self.steps_seen.append((done, total, per_epoch))


@pytest.fixture()
def teachers(tmp_path, monkeypatch):
    monkeypatch.setattr(shared, "POLL_SECONDS", 0.05)
    store = Store(f"sqlite:///{tmp_path / 'study.db'}")
    yield TeacherStore(store, stale_seconds=3.0, heartbeat_seconds=0.1)
    store.close()


def never(*args, **kwargs):
    pytest.fail("a worker made what the study had already")


def untrained(data, epochs=None, seed=0, on_progress=None):
    """What training for far too few epochs gives: a ResNet-18 that knows nothing."""
    torch.manual_seed(0)
    return build_teacher(data.in_chs, data.num_classes, data.photos).eval(), "trained (1 epochs)"


def test_the_first_worker_makes_its_machine_s_teacher_the_study_s_and_another_loads_it(teachers, digits, cache_dir, tmp_path, monkeypatch):
    images = digits.train.take(torch.arange(100))
    made = study_teacher(teachers, "s", digits, cache_dir, logits_for=images)
    assert made.source.endswith(f"from {socket.gethostname()}'s cache")
    record = teachers.get("s")
    assert (record.state, record.sha256, record.val_accuracy) == (READY, made.sha256, made.val_accuracy)
    assert record.data_fingerprint == digits.identity() and made.val_accuracy > 0.9
    blob = teachers.store.get_model(made.sha256)
    assert hashlib.sha256(blob).hexdigest() == made.sha256
    state = torch.load(io.BytesIO(blob), weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}  # half a ResNet-18's size

    monkeypatch.setattr(shared, "train_teacher", never)
    monkeypatch.setattr(shared, "load_or_train_teacher", never)
    other_cache = tmp_path / "other machine"
    loaded = study_teacher(teachers, "s", digits, other_cache)
    assert (loaded.sha256, loaded.val_accuracy, loaded.source) == (made.sha256, made.val_accuracy, made.source)
    assert loaded.path == blob_path(other_cache, made.sha256) and loaded.path.read_bytes() == blob
    for a, b in zip(loaded.model.state_dict().values(), made.model.state_dict().values()):
        assert torch.equal(a, b)
    # The logits the maker stored for the study's images, not computed again here.
    monkeypatch.setattr(shared, "predict_logits", never)
    logits = shared_logits(teachers, loaded, images)
    assert logits.shape == (100, 10) and torch.equal(logits, shared_logits(teachers, made, images))
    # Loaded from this machine's cache from now on, even with the database's copy gone.
    monkeypatch.setattr(teachers.store, "get_model", never)
    again = study_teacher(teachers, "s", digits, other_cache)
    assert again.sha256 == made.sha256


def test_a_worker_waits_for_the_teacher_another_makes_showing_its_progress(teachers, digits, cache_dir, tmp_path):
    maker = teachers.claim("s")
    waiter, got = Recorder(), []
    thread = threading.Thread(target=lambda: got.append(study_teacher(teachers, "s", digits, tmp_path / "waiter", progress=waiter)))
    with maker.alive():
        maker.steps(2, 90, 9)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive() and not got
    made = make_teacher(maker, digits, cache_dir, None, 0)
    thread.join(timeout=60)
    assert [t.sha256 for t in got] == [made.sha256]
    assert f"waiting for the study's teacher: {maker.worker} is making it" in waiter.messages[0]
    assert (2, 90, 9) in waiter.steps_seen  # the maker's training, on the waiter's bar


def test_a_teacher_whose_maker_died_is_taken_over_by_the_next_worker(teachers, digits, cache_dir):
    dead = teachers.claim("s")  # and never a heartbeat
    progress = Recorder()
    teacher = study_teacher(teachers, "s", digits, cache_dir, progress=progress, stall_minutes=0.5)
    assert teachers.get("s").sha256 == teacher.sha256
    assert any(f"being made by {dead.worker}, silent for" in m and "taking it over" in m for m in progress.messages)
    assert not dead.publish("late", 0.5, "trained", digits.identity())


def test_a_wait_ends_when_the_maker_s_work_stands_still(teachers, digits, tmp_path):
    maker = teachers.claim("s")
    with maker.alive():  # alive, but its work never moves
        maker.steps(5, 90, 9)
        with pytest.raises(SearchError, match=f"being made by {maker.worker}, has not moved for 0.02 min"):
            study_teacher(teachers, "s", digits, tmp_path, stall_minutes=0.02)


def test_a_teacher_trained_near_chance_is_refused_for_the_whole_study_until_one_is_installed(
    teachers, digits, teacher, tmp_path, monkeypatch
):
    monkeypatch.setattr(shared, "train_teacher", untrained)
    with pytest.raises(SearchError, match=r"near chance on the validation split \(0\.\d+, chance 0\.100\).*--study s --weights W"):
        study_teacher(teachers, "s", digits, tmp_path / "cache")
    record = teachers.get("s")
    assert record.state == REFUSED and "near chance" in record.reason
    assert not teacher_path(digits, tmp_path / "cache").exists()  # not kept as this machine's teacher either
    # Another worker stops at once rather than train the same useless teacher.
    monkeypatch.setattr(shared, "train_teacher", never)
    with pytest.raises(SearchError, match="study s's teacher was refused: the teacher trained .* near chance"):
        study_teacher(teachers, "s", digits, tmp_path / "other")
    installed = install_teacher(teachers, "s", digits, tmp_path / "cache", teacher.model, "good.pt")
    assert teachers.get("s").state == READY and installed.source == "imported from good.pt"
    assert study_teacher(teachers, "s", digits, tmp_path / "other").sha256 == installed.sha256


def test_a_study_s_teacher_is_not_loaded_for_other_data(teachers, digits, cache_dir, tmp_path):
    study_teacher(teachers, "s", digits, cache_dir)
    other = replace(digits, val=digits.val.take(torch.arange(100)))
    with pytest.raises(DatasetError, match=f"study s's teacher was made for other data: the training or validation .* \\(fingerprint {other.fingerprint()} here"):
        study_teacher(teachers, "s", other, tmp_path)
