"""The study's teacher: every worker of a study distils from the same one, whichever
machine it runs on.

The first worker that needs it makes it (``study.teacher_store`` holds the claim):
this machine's teacher for the data set where it has one (``nas.py teacher``, or an
earlier study's), else one trained with the study's settings. The teacher is checked
(no better than chance is refused), its weights go into the study's database in float16
with the logits of the images the study trains on, and only then is it the study's.
The other workers wait, showing the maker's progress, and load it; a maker that died is
replaced once its heartbeat is stale. ``nas.py teacher --study`` installs one the same way.

The local cache under ``--cache-dir`` stays a cache: a study's teacher is kept there under
the SHA-256 of its weights, and fetched from the database where it is missing.
"""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import torch
from torch import nn

from .data import Dataset, DatasetError, Split, identity_difference
from .progress import SearchProgress
from .stages.teacher import (
    NearChance,
    Teacher,
    cache_blob,
    cache_logits,
    cached_blob,
    check_teacher,
    images_sha256,
    keep_data_teacher,
    load_or_train_teacher,
    logits_path,
    model_from_blob,
    teacher_blob,
    teacher_path,
    train_teacher,
    validation_accuracy,
)
from .stages.train import predict_logits
from .study.config import ConfigError
from .study.storage import SearchError, Store, sqlite_file
from .study.teacher_store import READY, REFUSED, Claim, TeacherRecord, TeacherStore

# A waiting worker gives up when the teacher's making has not moved for this long. Bounded
# by progress rather than by the clock: a CIFAR-10 teacher takes hours on a CPU, and a
# worker must not give up on one that is training; one whose training stands still this
# long (while its heartbeat goes on) is stuck. A dead maker is replaced long before.
STALL_MINUTES = 30
POLL_SECONDS = 2


def study_teacher(
    teachers: TeacherStore, study: str, data: Dataset, cache_dir: str | Path, epochs: int | None = None, seed: int = 0,
    progress: SearchProgress = SearchProgress(), logits_for: Split | None = None, retrain: bool = False,
    stall_minutes: float = STALL_MINUTES,
) -> Teacher:
    """The study's teacher: loaded where the study has one, else made by this worker or
    waited for while another makes it. The maker trains for ``epochs`` (None: by data set
    size), or takes this machine's teacher for the data unless ``retrain``; it also stores
    the teacher's logits for ``logits_for`` (the images the study trains on) before the
    teacher is the study's. ``retrain`` (``nas.py teacher --study --epochs``) also replaces
    a teacher the study refused."""
    progress.stage(None, "teacher")
    watch = _Watch(stall_minutes)
    while True:
        record = teachers.get(study)
        stale = record is not None and record.state not in (READY, REFUSED) and record.age_seconds > teachers.stale_seconds
        if record is None or stale or (retrain and record.state == REFUSED):
            claim = teachers.claim(study, take_refused=retrain)
            if claim is None:  # another worker claimed it first: wait for that one
                continue
            if stale:
                progress.message(
                    f"the study's teacher was being made by {record.worker}, silent for {record.age_seconds:.0f} s: "
                    "taking it over"
                )
            teacher = make_teacher(claim, data, cache_dir, epochs, seed, progress, logits_for, retrain=retrain)
            if teacher is not None:
                return teacher
            continue  # the claim was taken over meanwhile: the study's teacher is the other worker's
        if record.state == READY:
            teacher = load_teacher(teachers, study, record, data, cache_dir)
            progress.message(f"teacher: the study's, {describe(teacher)}")
            return teacher
        if record.state == REFUSED:
            raise SearchError(f"study {study}'s teacher was refused: {record.reason}; {_remedy(study)}")
        watch.waiting(record, progress)
        time.sleep(POLL_SECONDS)


def _remedy(study: str) -> str:
    return (
        f"install a trained one with: python nas.py teacher --study {study} --weights W "
        f"(or train one for longer: python nas.py teacher --study {study} --epochs N)"
    )


def make_teacher(
    claim: Claim, data: Dataset, cache_dir: str | Path, epochs: int | None, seed: int,
    progress: SearchProgress = SearchProgress(), logits_for: Split | None = None, retrain: bool = False,
    installed: nn.Module | None = None, installed_from: str = "", installed_accuracy: float | None = None,
) -> Teacher | None:
    """Under ``claim``: the teacher ``installed`` (read from ``installed_from``, its
    validation accuracy ``installed_accuracy`` where ``check_installable`` measured it),
    else this machine's teacher for ``data`` unless ``retrain``, else one trained for
    ``epochs``; checked, stored and published as the study's. None if the claim was lost
    meanwhile."""
    host = socket.gethostname()

    def steps(done: int, total: int, per_epoch: int) -> None:
        progress.steps(done, total, per_epoch)
        claim.steps(done, total, per_epoch)

    with claim.alive():
        local = teacher_path(data, cache_dir)
        if installed is not None:
            model, source, origin = installed, f"imported from {installed_from}", "installed"
        elif not retrain and local.exists():
            cached = load_or_train_teacher(data, cache_dir)
            model, source, origin = cached.model, f"{cached.source}, from {host}'s cache", "cached"
        else:
            progress.message(f"training the study's teacher on this machine ({host}); its other workers wait for it")
            model, source = train_teacher(data, epochs, seed, steps)
            source, origin = f"{source} on {host}", "trained"
        blob = teacher_blob(model)
        model = model_from_blob(blob, data)  # the float16 weights every worker will load, not the float32 ones
        val_accuracy = installed_accuracy if installed is not None and installed_accuracy is not None \
            else validation_accuracy(model, data, steps)  # a ResNet-18 on CIFAR-10's validation split: 70 s here
        try:
            check_teacher(val_accuracy, data, f"the teacher {source}")
        except NearChance as e:
            if origin == "cached":  # this machine's, not the study's doing
                raise SearchError(f"{e}; delete {local} (this machine's teacher for the data) and run again") from None
            if origin == "trained":  # the study's settings made it: every worker would train the same again
                claim.refuse(str(e))
            raise SearchError(f"{e}; {_remedy(claim.study)}") from None
        if origin == "trained":  # the next study on this data, on this machine, takes it instead of training one
            keep_data_teacher(model, data, cache_dir, source, val_accuracy)
        sha = claim.teachers.store.put_model(blob)
        teacher = Teacher(model, val_accuracy, source, cache_blob(cache_dir, blob), sha)
        if logits_for is not None:
            shared_logits(claim.teachers, teacher, logits_for, steps)
        if not claim.publish(sha, val_accuracy, source, data.identity()):
            return None
    progress.message(f"teacher: {describe(teacher)}, now the study's")
    return teacher


def check_installable(model: nn.Module, data: Dataset, weights: str, progress: SearchProgress = SearchProgress()) -> float:
    """Refuse (``ConfigError``) the teacher read from ``weights`` if it is no better than
    chance as the study would hold it (float16): before anything is written. Its validation
    accuracy otherwise."""
    val_accuracy = validation_accuracy(model_from_blob(teacher_blob(model), data), data, progress.steps)
    try:
        check_teacher(val_accuracy, data, f"the teacher in {weights}")
    except NearChance as e:
        raise ConfigError(f"{e}; nothing was installed") from None
    return val_accuracy


def install_teacher(
    teachers: TeacherStore, study: str, data: Dataset, cache_dir: str | Path, model: nn.Module, weights: str,
    progress: SearchProgress = SearchProgress(), val_accuracy: float | None = None,
) -> Teacher:
    """Install ``model`` (read from ``weights``, checked with ``check_installable``, which
    measured ``val_accuracy``) as the study's teacher (``nas.py teacher --study --weights``):
    refused (``ConfigError``) where the study has a teacher already or another worker is
    making one; a refused one is replaced."""
    claim = teachers.claim(study, take_refused=True)
    if claim is None:
        raise ConfigError(f"study {study} {_has_teacher(teachers.get(study))}: its trials must share one teacher")
    teacher = make_teacher(
        claim, data, cache_dir, None, 0, progress, installed=model, installed_from=weights, installed_accuracy=val_accuracy
    )
    if teacher is None:
        raise SearchError(f"study {study}'s teacher was taken over by another worker while it was installed")
    return teacher


def _has_teacher(record: TeacherRecord | None) -> str:
    if record is None:  # gone between the claim and this look: a worker gave it up
        return "had its teacher claimed a moment ago"
    if record.state == READY:
        return f"has its teacher already ({record.source}, sha256 {record.sha256[:12]})"
    return f"has its teacher being made by {record.worker}; wait for it, or install into a new --study"


def check_teacher_data(url: str, study: str, data: Dataset) -> None:
    """Refuse (``DatasetError``) a copy of the data that is not the one the study's teacher
    was made for. A teacher installed before any worker ran (``nas.py teacher --study``)
    is the study's first record of its data, so the first worker must be checked against
    it before its own copy becomes the study's (``runner.record_data``): on CIFAR-10, a
    copy with one test image changed had joined such a study and been recorded as its data."""
    db = sqlite_file(url)
    if db is not None and not db.exists():
        return  # no database yet, so no teacher; and nothing is created here
    store = Store(url)
    try:
        record = TeacherStore(store).get(study)
    finally:
        store.close()
    if record is not None and record.state == READY:
        _check_made_for(study, record, data)


def _check_made_for(study: str, record: TeacherRecord, data: Dataset) -> None:
    difference = identity_difference(record.data_fingerprint or "", data)
    if difference is not None:
        raise DatasetError(
            f"study {study}'s teacher was made for other data: {difference}; use the data it was made for, or another --study"
        )


def load_teacher(teachers: TeacherStore, study: str, record: TeacherRecord, data: Dataset, cache_dir: str | Path) -> Teacher:
    """The study's (ready) teacher, from this machine's cache, else from the database."""
    _check_made_for(study, record, data)
    blob = cached_blob(cache_dir, record.sha256)
    if blob is None:
        blob = teachers.store.get_model(record.sha256)
        if blob is None:
            raise SearchError(f"study {study}'s teacher ({record.sha256}) is missing from its database")
    path = cache_blob(cache_dir, blob)
    return Teacher(model_from_blob(blob, data), record.val_accuracy, record.source, path, record.sha256)


def stored_teacher(teachers: TeacherStore, study: str, data: Dataset, cache_dir: str | Path) -> Teacher | None:
    """The study's teacher if it has one ready; never makes or waits for one (reports)."""
    record = teachers.get(study)
    if record is None or record.state != READY:
        return None
    return load_teacher(teachers, study, record, data, cache_dir)


def shared_logits(teachers: TeacherStore, teacher: Teacher, images: Split, on_progress=None) -> torch.Tensor:
    """The teacher's logits for ``images``: from this machine's cache, else the study's
    database, else computed and stored there. The database's copy is what is used, so
    that every worker trains on the same numbers, not on its own CPU's rounding."""
    path = logits_path(teacher, images)
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    key = images_sha256(images)
    stored = teachers.get_logits(teacher.sha256, key)
    if stored is None:
        buffer = io.BytesIO()
        torch.save(predict_logits(teacher.model, images, on_progress=on_progress), buffer)
        stored = teachers.put_logits(teacher.sha256, key, buffer.getvalue())
    logits = torch.load(io.BytesIO(stored), map_location="cpu", weights_only=True)
    cache_logits(path, logits)
    return logits


def describe(teacher: Teacher) -> str:
    return (
        f"ResNet-18 {teacher.source}, validation accuracy {teacher.val_accuracy:.4f}, sha256 {teacher.sha256[:12]}"
    )


class _Watch:
    """A waiting worker's view of another's making of the teacher: its progress on this
    worker's bar, and the stall that ends the wait."""

    def __init__(self, stall_minutes: float):
        self.stall_seconds = stall_minutes * 60
        self.seen: tuple | None = None
        self.moved_at = time.monotonic()

    def waiting(self, record: TeacherRecord, progress: SearchProgress) -> None:
        now = time.monotonic()
        if self.seen is None or self.seen[0] != record.owner:
            progress.message(
                f"waiting for the study's teacher: {record.worker} is making it "
                f"(for as long as its work moves; {self.stall_seconds / 60:g} min without progress ends the wait)"
            )
        if self.seen != (record.owner, record.progress):
            self.seen, self.moved_at = (record.owner, record.progress), now
            if record.progress is not None:
                progress.steps(*record.progress)
        elif now - self.moved_at > self.stall_seconds:
            raise SearchError(
                f"the study's teacher, being made by {record.worker}, has not moved for "
                f"{self.stall_seconds / 60:g} min though its worker is alive: stop that worker, then run this one again"
            )
