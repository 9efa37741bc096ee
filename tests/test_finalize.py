"""Finalize (search/finalize.py): chosen candidates of a real study trained at full budget,
stored beside the study, resumed after a kill, and the proxy's ranking measured."""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial
from scipy.stats import kendalltau

from conftest import ROOT, run_nas
from search.data import Split
from search.finalize import FileCheckpoint, default_epochs
from search.progress import SearchProgress
from search.report.front import build_report
from search.stages.evaluate import onnx_accuracy
from search.stages.train import TrainConfig, fit
from search.study import attrs
from search.study.storage import Store
from search.study.teacher_store import TeacherStore

STUDY = "fin"
PROXY_IMAGES = 300  # of digits' 1150 training images: the default finalize is ceil(5 * 300 / 1150) = 2 epochs
BATCH = 32
DEFAULT_EPOCHS = 2
RECORD_KEYS = [
    attrs.FINAL_EPOCHS, attrs.FINAL_IMAGES, attrs.COMPRESSION, attrs.ARCH, attrs.PARAMS, attrs.MACS,
    attrs.SIZE_BYTES, attrs.PROXY_ACCURACY, attrs.ACCURACY, attrs.ACCURACY_TEST, attrs.ACCURACY_BEFORE_QUANT,
    attrs.ONNX_SHA256, attrs.TRAIN_SECONDS, attrs.RESUMED_FROM_STEP, attrs.TEACHER, attrs.LATENCY_P50,
    attrs.LATENCY_P90, attrs.MEASURED_ON,
]


def _open(cwd) -> tuple[optuna.Study, str]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{cwd}/studies/{STUDY}/study.db"
    return optuna.load_study(study_name=STUDY, storage=url), url


def _finalized(study) -> dict[int, dict]:
    return {
        int(k[len(attrs.FINALIZED_PREFIX) :]): v for k, v in study.user_attrs.items()
        if k.startswith(attrs.FINALIZED_PREFIX)
    }


@pytest.fixture(scope="module")
def searched(tmp_path_factory, cache_dir):
    """A folder holding a real 4-trial study (proxy: 1 epoch on 300 images), and in it, as
    the trial loop records them, a failed trial and a repeat of a front member."""
    from search.runner import SearchRequest, run_search

    cwd = tmp_path_factory.mktemp("searched")
    # Batches of 32: ten steps an epoch, enough for accuracies above chance, so that the
    # front is a trade-off rather than the latency noise of candidates that learned nothing.
    explicit = {"space": "tiny", "epochs": 1.0, "finetune_epochs": 0.5, "calib_samples": 32, "train_subset": PROXY_IMAGES,
                "batch_size": BATCH, "baselines": False}
    with pytest.MonkeyPatch.context() as m:
        m.chdir(cwd)
        run_search(SearchRequest(budget=4, explicit=explicit, study=STUDY, cache_dir=str(cache_dir)))
    study, _ = _open(cwd)
    study.tell(study.ask(), state=TrialState.FAIL)
    front = build_report(STUDY, "", "", study.get_trials(), {}).front
    original = study.trials[front[0].number]
    study.add_trial(create_trial(values=original.values, user_attrs={**original.user_attrs, attrs.REPEAT_OF: original.number}))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(front) >= 2 and len(complete) - 1 > len(front), "the study should have a front and a dominated trial"
    return cwd


def _copy(searched, to):
    shutil.copytree(searched / "studies", to / "studies")
    return to


@pytest.fixture(scope="module")
def finalized(searched, tmp_path_factory, cache_dir):
    """The study after ``finalize --front`` (default epochs), then ``finalize --trials`` of
    a trial off the front: (folder, first run, second run, records after the first)."""
    cwd = _copy(searched, tmp_path_factory.mktemp("finalized"))
    on_front = {p.number for p in build_report(STUDY, "", "", _open(cwd)[0].get_trials(), {}).front}
    off_front = next(t.number for t in _complete_trials(cwd) if t.number not in on_front)
    front = run_nas(["finalize", "--study", STUDY, "--front", "--cache-dir", str(cache_dir)], cwd)
    assert front.returncode == 0, front.stderr
    after_front = _finalized(_open(cwd)[0])
    more = run_nas(["finalize", "--study", STUDY, "--trials", str(off_front), "--cache-dir", str(cache_dir)], cwd)
    assert more.returncode == 0, more.stderr
    return cwd, front, more, after_front


def _complete_trials(cwd):
    study, _ = _open(cwd)
    return [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if attrs.REPEAT_OF not in t.user_attrs]


def test_finalized_files_are_stored_and_are_what_their_records_say(finalized, digits):
    cwd, front, _, _ = finalized
    study, url = _open(cwd)
    records = _finalized(study)
    members = build_report(STUDY, "", "", study.get_trials(), {}).front
    assert len(records) == len(members) + 1  # the front, and the trial off it that finalize --trials added
    store = Store(url)
    teacher = TeacherStore(store).get(STUDY)
    for number, record in records.items():
        assert [k for k in RECORD_KEYS if k not in record] == []
        # Distilled from the study's teacher, as its trial was.
        assert record[attrs.TEACHER]["sha256"] == teacher.sha256 == study.trials[number].user_attrs[attrs.TEACHER_SHA256]
        assert record[attrs.FINAL_EPOCHS] == DEFAULT_EPOCHS and record[attrs.FINAL_IMAGES] == len(digits.train)
        assert record[attrs.PROXY_ACCURACY] == study.trials[number].values[0]
        assert record[attrs.COMPRESSION] == study.trials[number].user_attrs[attrs.COMPRESSION]
        # The stored file runs in ONNX Runtime and scores what the record says.
        model = store.get_model(record[attrs.ONNX_SHA256])
        assert len(model) == record[attrs.SIZE_BYTES]
        assert onnx_accuracy(model, digits.val) == record[attrs.ACCURACY]
        assert onnx_accuracy(model, digits.test) == record[attrs.ACCURACY_TEST]
        assert record[attrs.LATENCY_P50] > 0 and record[attrs.MEASURED_ON]["onnxruntime"]
        assert record[attrs.RESUMED_FROM_STEP] == 0 and record[attrs.TRAIN_SECONDS] > 0
    store.close()
    assert list((cwd / "studies" / STUDY / "finalize").iterdir()) == []  # checkpoints gone once finalized
    assert (
        "finalize: 2 epochs on all 1150 training images (the fewest whole epochs giving 5x the proxy's training; "
        "set --epochs): 7.7x the proxy's 1 epochs on 300 images"
    ) in front.stderr
    # The bar counts finalized trials, under its own name.
    n = len(front_records := _finalized(_open(cwd)[0])) - 1  # all but the one finalize --trials added
    assert front_records and re.search(rf"finalize: 100%\|.*\| {n}/{n}", front.stderr) and "search:" not in front.stderr


def test_a_second_run_adds_its_trial_and_leaves_the_first_run_s_alone(finalized):
    cwd, _, more, after_front = finalized
    records = _finalized(_open(cwd)[0])
    assert {n: records[n] for n in after_front} == after_front
    assert len(records) == len(after_front) + 1
    # The table lists every finalized trial of the study, the first run's too.
    assert all(any(line.split()[:2] == [str(n), str(DEFAULT_EPOCHS)] for line in more.stdout.splitlines()) for n in records)


def test_front_finalizes_exactly_the_front_without_repeats(finalized):
    cwd, _, _, after_front = finalized
    study, _ = _open(cwd)
    front = {p.number for p in build_report(STUDY, "", "", study.get_trials(), {}).front}
    assert set(after_front) == front
    repeats = [t.number for t in study.trials if attrs.REPEAT_OF in t.user_attrs]
    assert repeats and not set(repeats) & set(after_front)


def test_kendall_tau_is_scipy_s_on_the_stored_accuracies(finalized):
    cwd, _, more, _ = finalized
    study, _ = _open(cwd)
    records = _finalized(study)
    numbers = sorted(records)
    expected = kendalltau([records[n][attrs.PROXY_ACCURACY] for n in numbers], [records[n][attrs.ACCURACY] for n in numbers])
    stored = study.user_attrs[attrs.FINALIZE_KENDALL_TAU]
    assert stored["trials"] == numbers
    assert stored["tau"] == pytest.approx(expected.statistic) and stored["p_value"] == pytest.approx(expected.pvalue)
    assert f"Kendall tau between proxy and final validation accuracy: {expected.statistic:.3f} over {len(numbers)} trials" in more.stdout


def test_report_and_export_show_the_finalized_files(finalized, monkeypatch, capsys, cache_dir):
    import nas

    cwd, _, _, _ = finalized
    monkeypatch.chdir(cwd)
    study, url = _open(cwd)
    records = _finalized(study)
    assert nas.main(["report", "--study", STUDY, "--cache-dir", str(cache_dir)]) == 0
    assert f"Finalized (trained at full budget): {len(records)} trials" in capsys.readouterr().out
    rows = {int(r["number"]): r for r in csv.DictReader((cwd / "studies" / STUDY / "report" / "pareto.csv").open())}
    for number, row in rows.items():
        record = records.get(number)
        assert row["final_accuracy"] == ("" if record is None else str(record[attrs.ACCURACY]))
        assert row["final_accuracy_test"] == ("" if record is None else str(record[attrs.ACCURACY_TEST]))
        assert row["final_kb"] == ("" if record is None else str(record[attrs.SIZE_BYTES] / 1024))
    number = min(records)
    assert nas.main(["export", "--study", STUDY, "--trial", str(number), "--final"]) == 0
    store = Store(url)
    exported = cwd / f"{STUDY}-trial-{number}-final" / "model.onnx"
    assert exported.read_bytes() == store.get_model(records[number][attrs.ONNX_SHA256])
    store.close()
    not_finalized = next(t.number for t in study.trials if t.number not in records)  # the failed one, if need be
    capsys.readouterr()
    assert nas.main(["export", "--study", STUDY, "--trial", str(not_finalized), "--final"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"nas.py: error: trial {not_finalized} of study {STUDY} was not finalized; "
        f"finalize it with: python nas.py finalize --study {STUDY} --trials {not_finalized}"
    )


EPOCHS_TO_KILL = 12  # long enough to be killed mid-training: 108 steps of digits' 1150 images


@pytest.mark.slow  # 53 s: a finalize killed and rerun; CI runs it
def test_a_killed_finalize_resumes_the_trial_it_was_training_and_keeps_the_one_it_finished(
    searched, tmp_path, cache_dir
):
    cwd = _copy(searched, tmp_path)
    first, second = [t.number for t in _complete_trials(cwd)][:2]
    args = ["finalize", "--study", STUDY, "--trials", f"{first},{second}", "--epochs", str(EPOCHS_TO_KILL),
            "--cache-dir", str(cache_dir)]
    checkpoint = cwd / "studies" / STUDY / "finalize" / f"trial-{second}-{EPOCHS_TO_KILL}ep-train.pt"
    proc = subprocess.Popen([sys.executable, str(ROOT / "nas.py"), *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"finalize ended before training trial {second}:\n{proc.stderr.read()}"
        assert checkpoint.exists(), f"trial {second} wrote no checkpoint"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    before = _finalized(_open(cwd)[0])
    assert list(before) == [first]

    rerun = run_nas(args, cwd)
    assert rerun.returncode == 0, rerun.stderr
    after = _finalized(_open(cwd)[0])
    assert after[first] == before[first]  # finished before the kill: not trained again
    assert f"trial {first}: finalized already with {EPOCHS_TO_KILL} epochs" in rerun.stderr
    resumed = after[second][attrs.RESUMED_FROM_STEP]
    total = EPOCHS_TO_KILL * math.ceil(1150 / BATCH)
    assert 0 < resumed < total and resumed % math.ceil(1150 / BATCH) == 0  # at an epoch's end, mid-training
    assert f"trial {second}: training resumed at step {resumed} from" in rerun.stderr
    assert not checkpoint.exists()


class _StepRecorder(SearchProgress):
    def __init__(self):
        self.runs: dict[int, list[int]] = {}  # total steps of a training run: the steps it reported

    def steps(self, done, total, per_epoch):
        self.runs.setdefault(total, []).append(done)


def test_a_fine_tune_killed_midway_resumes_to_the_file_an_uninterrupted_run_makes(
    searched, tmp_path, monkeypatch, cache_dir
):
    """In-process: the fine-tune after pruning checkpoints too, and a trial that fails
    leaves the run going on (here: with nothing else to do)."""
    from search.finalize import FinalizeRequest, run_finalize

    pruned = next(t.number for t in _complete_trials(searched) if not t.user_attrs[attrs.COMPRESSION].startswith("prune0_"))
    # Fine-tune: 2 epochs. On the CPU, where a step's result is the same bit for bit every time.
    request = FinalizeRequest(study=STUDY, trials=(pruned,), epochs=4, cache_dir=str(cache_dir), train_device="cpu")
    monkeypatch.chdir(_copy(searched, tmp_path / "uninterrupted"))
    run_finalize(request)
    uninterrupted = _finalized(_open(tmp_path / "uninterrupted")[0])[pruned]

    monkeypatch.chdir(_copy(searched, tmp_path / "killed"))
    real_save = FileCheckpoint.save

    def killed_after_the_fine_tune_s_first_epoch(self, state):
        real_save(self, state)
        if self.path.name.endswith("-finetune0.pt"):
            raise _Killed

    monkeypatch.setattr(FileCheckpoint, "save", killed_after_the_fine_tune_s_first_epoch)
    killed = run_finalize(request)
    assert list(killed.failed) == [pruned] and "_Killed" in killed.failed[pruned]
    assert _finalized(_open(tmp_path / "killed")[0]) == {}
    monkeypatch.setattr(FileCheckpoint, "save", real_save)
    progress = _StepRecorder()
    run_finalize(request, progress)
    steps_per_epoch = math.ceil(1150 / BATCH)
    # Training had ended: it takes no step again; the fine-tune goes on from its second epoch.
    assert 4 * steps_per_epoch not in progress.runs
    assert progress.runs[2 * steps_per_epoch] == list(range(steps_per_epoch + 1, 2 * steps_per_epoch + 1))
    record = _finalized(_open(tmp_path / "killed")[0])[pruned]
    assert record[attrs.ONNX_SHA256] == uninterrupted[attrs.ONNX_SHA256]
    assert record[attrs.RESUMED_FROM_STEP] == 4 * steps_per_epoch


@pytest.mark.parametrize("which", ["failed", "absent", "repeat", "one of two bad"])
def test_trials_that_cannot_be_finalized_are_one_line_exit_2_and_nothing_written(
    searched, tmp_path, monkeypatch, capsys, which
):
    import nas

    cwd = _copy(searched, tmp_path)
    monkeypatch.chdir(cwd)
    study, url = _open(cwd)
    by_kind = {
        "failed": (study.get_trials(states=(TrialState.FAIL,))[0].number, "failed"),
        "absent": (99, f"study {STUDY} has no trial 99"),
        "repeat": (next(t.number for t in study.trials if attrs.REPEAT_OF in t.user_attrs), "repeats trial"),
    }
    numbers, message = by_kind.get(which, by_kind["absent"])
    if which == "one of two bad":
        numbers = f"{_complete_trials(cwd)[0].number},99"
    before = dict(study.user_attrs)
    db_bytes = (cwd / "studies" / STUDY / "study.db").read_bytes()
    assert nas.main(["finalize", "--study", STUDY, "--trials", str(numbers)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas.py: error: --trials:") and message in lines[0], lines
    assert dict(_open(cwd)[0].user_attrs) == before
    assert (cwd / "studies" / STUDY / "study.db").read_bytes() == db_bytes
    assert not (cwd / "studies" / STUDY / "finalize").exists()


def test_finalize_on_a_copy_of_the_data_that_is_not_the_study_s_is_refused_and_writes_nothing(
    searched, tmp_path, monkeypatch, capsys, digits
):
    import search.finalize

    cwd = _copy(searched, tmp_path)
    monkeypatch.chdir(cwd)
    # This machine's copy: one training image fewer than the study's.
    fewer = dataclasses.replace(digits, train=digits.train.take(torch.arange(1, len(digits.train))))
    monkeypatch.setattr(search.finalize, "load_dataset", lambda *args, **kwargs: fewer)
    assert _finalize_refused(cwd, capsys) == (
        f"nas.py: error: this copy of digits is not study {STUDY}'s data (images: train 1149 here, 1150 in the study): "
        "run this worker on the study's copy, or start a new --study"
    )


def test_finalize_that_would_time_otherwise_than_the_search_is_refused_and_writes_nothing(
    searched, tmp_path, monkeypatch, capsys
):
    from search.board.timing import measuring_setup
    from search.stages.measure import LocalMeasurer
    from search.targets import get_target

    cwd = _copy(searched, tmp_path)
    monkeypatch.chdir(cwd)
    # The study as if searched with two ONNX Runtime threads: its finalized files would be timed otherwise.
    _open(cwd)[0].set_user_attr(
        attrs.STUDY_MEASURING_SETUP, measuring_setup({**LocalMeasurer(get_target("host")).machine, "threads": 2})
    )
    assert _finalize_refused(cwd, capsys) == (
        f"nas.py: error: this worker would time latencies otherwise than study {STUDY}'s trials were (threads 1 here, "
        "2 in the study): run it with the study's target, board and ONNX Runtime, or start a new --study"
    )


def _finalize_refused(cwd, capsys) -> str:
    """``finalize --front`` in ``cwd``, which must exit 2 with one line and write nothing: the line."""
    import nas

    db = cwd / "studies" / STUDY / "study.db"
    before = _dump(db)
    assert nas.main(["finalize", "--study", STUDY, "--front"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert _dump(db) == before
    assert not (cwd / "studies" / STUDY / "finalize").exists()
    return line


def _dump(db) -> list[str]:
    """Every table and row of a SQLite database: what it holds, whatever its write-ahead log's state."""
    connection = sqlite3.connect(db)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


@pytest.mark.parametrize(
    "proxy_epochs, proxy_images, images, expected",
    [
        (8.0, 1150, 1150, 40),  # the whole split: 5x the epochs
        (1.0, 300, 1150, 2),  # 1.3 epochs' worth, rounded up to a whole epoch
        (8.0, 5000, 45000, 5),
        (0.23, 1000, 1150, 1),  # 5 x 0.23 x 1000 / 1150 is 1.0000000000000002 in floats
    ],
)
def test_default_epochs_are_the_fewest_giving_five_times_the_proxy_s_compute(proxy_epochs, proxy_images, images, expected):
    assert default_epochs(proxy_epochs, proxy_images, images) == expected


def _toy_split(n: int = 96) -> Split:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return Split(x, (x.mean((1, 2, 3)) > 0).long())


def _toy_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # dropout draws from the global stream: a resumed run must restore it
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 2)
    )


class _Killed(Exception):
    pass


class _KilledAfterFirstEpoch(FileCheckpoint):
    def save(self, state):
        super().save(state)
        raise _Killed


def test_fit_resumed_from_its_checkpoint_ends_where_an_uninterrupted_run_does(tmp_path):
    data = _toy_split()
    logits = torch.randn(len(data), 2, generator=torch.Generator().manual_seed(1))
    # Augmentation and the order of batches draw from fit's own generator; AdamW's moments
    # and the one-cycle schedule's position carry over too.
    config = TrainConfig(epochs=2, lr=0.05, batch_size=16, augment=True)

    straight = _toy_model(seed=0)
    fit(straight, data, config, logits)

    path = tmp_path / "run.pt"
    with pytest.raises(_Killed):
        fit(_toy_model(seed=0), data, config, logits, checkpoint=_KilledAfterFirstEpoch(path))
    resumed_from = FileCheckpoint(path)
    resumed = _toy_model(seed=123)  # other first weights and another global stream: the checkpoint's replace them
    fit(resumed, data, config, logits, checkpoint=resumed_from)
    assert resumed_from.resumed_from_step == 6  # one epoch of 96 images in batches of 16
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
