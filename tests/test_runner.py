"""The whole job in-process: what it refuses before any trial runs."""

import json
import socket
import sqlite3
from types import SimpleNamespace

import optuna
import pytest
import torch
from PIL import Image

from conftest import run_nas
from search.data import DatasetError, balanced_subset, data_difference, load_dataset
from search.progress import SearchProgress
from search.runner import SearchRequest, record_data, run_search
from search.study import attrs
from search.study.storage import open_study, plan_study
from search.stages.teacher import build_teacher, keep_data_teacher, teacher_path
from search.study.storage import SearchError, Store
from search.study.teacher_store import REFUSED, TeacherStore

FAST = {"space": "tiny", "epochs": 1.0, "finetune_epochs": 0.5, "calib_samples": 32, "baselines": False}


def test_a_teacher_trained_near_chance_stops_the_search_before_any_trial_and_is_kept_nowhere(tmp_path, monkeypatch, digits):
    monkeypatch.chdir(tmp_path)
    # One epoch leaves a ResNet-18 at chance on digits (10.1% on validation, issue 13).
    explicit = {**FAST, "teacher_epochs": 1}
    with pytest.raises(SearchError, match=r"trained \(1 epochs\) on .* is near chance.*--study chance --weights W"):
        run_search(SearchRequest(budget=1, explicit=explicit, study="chance", cache_dir=str(tmp_path / "cache")))
    url = "sqlite:///studies/chance/study.db"
    assert optuna.load_study(study_name="chance", storage=url).get_trials() == []
    assert not teacher_path(digits, tmp_path / "cache").exists()
    store = Store(url)
    assert TeacherStore(store).get("chance").state == REFUSED  # the study's other workers stop too
    store.close()
    assert list((tmp_path / "cache" / "teachers").glob("*.pt")) == []
    with sqlite3.connect("studies/chance/study.db") as db:
        assert db.execute("SELECT count(*) FROM edgenas_model").fetchone() == (0,)  # its weights not stored


def test_a_cached_teacher_near_chance_is_refused_naming_the_file(tmp_path, monkeypatch, digits):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    untrained = build_teacher(digits.in_chs, digits.num_classes).eval()
    path = keep_data_teacher(untrained, digits, tmp_path / "cache", "trained (1 epochs)", 0.1)  # as an earlier version kept it
    with pytest.raises(SearchError, match=f"near chance.*delete {path} .*and run again"):
        run_search(SearchRequest(budget=1, explicit=FAST, study="cached", cache_dir=str(tmp_path / "cache")))
    store = Store("sqlite:///studies/cached/study.db")
    assert TeacherStore(store).get("cached") is None  # the next worker, with its own cache, may make it
    store.close()


def test_trials_train_on_the_class_balanced_subset_with_the_teacher_s_logits_for_it_alone(
    tmp_path, monkeypatch, digits, teacher, cache_dir
):
    monkeypatch.chdir(tmp_path)
    messages = []

    class Recorder(SearchProgress):
        def message(self, text):
            messages.append(text)

    trained_on = []
    import search.study.objective as objective

    real_fit = objective.fit
    monkeypatch.setattr(objective, "fit", lambda model, images, *a, **k: trained_on.append(images) or real_fit(model, images, *a, **k))
    explicit = {**FAST, "train_subset": 100, "finetune_epochs": 0.0}
    run_search(SearchRequest(budget=1, explicit=explicit, study="subset", cache_dir=str(cache_dir)), Recorder())
    expected = digits.train.take(balanced_subset(digits.train.y, 100, seed=0))
    assert len(trained_on) == 1 and torch.equal(trained_on[0].pixels, expected.pixels)
    assert torch.bincount(trained_on[0].y).tolist() == [10] * 10
    assert "proxy training on 100 of 1150 training images (class-balanced, --train-subset)" in messages
    # Cached beside the study's teacher, which is this machine's teacher of the data, taken into the study.
    store = Store("sqlite:///studies/subset/study.db")
    study_teacher = TeacherStore(store).get("subset")
    store.close()
    assert study_teacher.source == f"{teacher.source}, from {socket.gethostname()}'s cache"
    assert len(list((cache_dir / "teachers").glob(f"{study_teacher.sha256}.logits-100-*.pt"))) == 1


def test_a_search_on_photos_trains_its_teacher_with_the_strided_stem_at_the_resolution_chosen(tmp_path, monkeypatch):
    from test_data import write_photo_tree

    monkeypatch.chdir(tmp_path)
    root = write_photo_tree(tmp_path / "photos", [(500, 375), (375, 500), (400, 300)], per_class=15, test_per_class=3)
    explicit = {**FAST, "dataset": f"imagefolder:{root}", "resolution": 72, "teacher_epochs": 40}
    report = run_search(SearchRequest(budget=1, explicit=explicit, study="photos", cache_dir="cache"))
    study = optuna.load_study(study_name="photos", storage="sqlite:///studies/photos/study.db")
    assert json.loads(study.user_attrs["config"])["resolution"] == 72
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE and len(report.front) == 1
    (teacher_file,) = [p for p in (tmp_path / "cache" / "teachers").glob("resnet18-*.pt") if ".logits-" not in p.name]
    state = torch.load(teacher_file, weights_only=True)["state_dict"]
    assert state["conv1.weight"].shape == (64, 3, 7, 7)  # torchvision's stem: 72 px is a photo


def test_a_corrupt_photo_stops_the_search_in_one_line_and_nothing_is_written(tmp_path):
    from test_data import write_corrupt_jpeg, write_image_tree

    root = write_image_tree(tmp_path / "tree")
    write_corrupt_jpeg(root / "train" / "red" / "cut-short.jpg")
    work = tmp_path / "work"
    work.mkdir()
    result = run_nas(["--budget", "1", "--dataset", f"imagefolder:{root}"], cwd=work, timeout=120)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("nas.py: error: imagefolder") and "cannot read train/red/cut-short.jpg" in line
    assert "--skip-bad-images" in line
    assert not list(work.rglob("study.db")) and not list(work.rglob("imagefolder-*"))
    skipped = run_nas(["--budget", "1", "--dataset", f"imagefolder:{root}", "--skip-bad-images", "--space", "tiny",
                       "--epochs", "1", "--finetune-epochs", "0", "--teacher-epochs", "15"], cwd=work, timeout=300)
    assert "skipped 1 unreadable images (--skip-bad-images): train/red/cut-short.jpg" in skipped.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: cuda is a valid choice here")
def test_train_device_cuda_without_a_gpu_stops_in_one_line(tmp_path):
    result = run_nas(["--budget", "1", "--train-device", "cuda"], cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "nas.py: error: --train-device cuda: this machine has no CUDA GPU that torch can use; "
        "use --train-device cpu or auto"
    )
    assert list(tmp_path.iterdir()) == []


def test_train_device_auto_is_the_cpu_without_a_gpu_and_training_follows_the_images():
    from search.data import Split
    from search.stages.train import TrainConfig, fit, train_device

    if torch.cuda.is_available():
        assert train_device("auto").type == "cuda"
    else:
        assert train_device("auto") == torch.device("cpu")
    assert train_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="must be one of auto, cpu, cuda"):
        train_device("tpu")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    images = Split(torch.randn(8, 1, 2, 2), torch.tensor([0, 1] * 4))
    fit(model, images, TrainConfig(epochs=1, batch_size=4))
    assert next(model.parameters()).device.type == "cpu"  # where the stages after training run


def test_a_report_uses_the_data_set_here_only_where_it_is_the_study_s_copy(digits):
    from search.runner import ReportRequest, study_data_here
    from search.study import attrs
    from search.study.config import StudyConfig

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_user_attr(attrs.STUDY_CONFIG, StudyConfig(dataset="digits", resolution=8).to_json())
    data, why = study_data_here(study, ReportRequest(study="s"))
    assert why == "" and data.fingerprint() == digits.fingerprint()  # the study recorded no copy: this one
    study.set_user_attr(attrs.STUDY_DATA, {**digits.record(), "fingerprint": "0123456789abcdef"})
    assert study_data_here(study, ReportRequest(study="s")) == (None, (
        "the data set here is another copy than the study's (content differs: the training and validation images "
        f"or labels are not the study's, though as many (fingerprint {digits.fingerprint()} here, 0123456789abcdef "
        "in the study))"
    ))
    study.set_user_attr(attrs.STUDY_CONFIG, StudyConfig(dataset="imagefolder:/nowhere", resolution=8).to_json())
    assert study_data_here(study, ReportRequest(study="s")) == (
        None, "the data set is not at hand here (imagefolder path /nowhere does not exist)"
    )


def _dump(db) -> list[str]:
    """Every table and row of a SQLite database."""
    connection = sqlite3.connect(db)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def test_a_worker_with_a_modified_copy_of_the_data_is_refused_in_one_line_and_writes_nothing(tmp_path):
    from test_data import write_image_tree

    root = write_image_tree(tmp_path / "photos", train_per_class=6)
    dataset, db = f"imagefolder:{root}", tmp_path / "study.db"
    url = f"sqlite:///{db}"
    # The study as its first worker left it: configuration and data recorded, teacher under way.
    first = load_dataset(dataset, cache_dir=str(tmp_path / "first"))
    study, store = open_study(plan_study("shared", url, {"dataset": dataset}), first.resolution)
    record_data(study, first)
    store.close()
    before = _dump(db)
    work = tmp_path / "second machine"
    work.mkdir()

    def join(cache: str) -> str:
        result = run_nas(["--budget", "1", "--study", "shared", "--storage", url, "--cache-dir", cache], cwd=work, timeout=180)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert _dump(db) == before and list(work.iterdir()) == []
        assert not (tmp_path / "study.db.lock").exists()  # refused before the study was opened, not under its lock
        return line

    (root / "train" / "red" / "0.jpg").unlink()
    fewer = data_difference(first.record(), load_dataset(dataset).record())
    assert fewer.startswith("images: train ")
    assert join(str(tmp_path / "cache-1")) == (
        f"nas.py: error: this copy of {dataset} is not study shared's data ({fewer}): "
        "run this worker on the study's copy, or start a new --study"
    )
    Image.new("RGB", (12, 12), (200, 30, 30)).save(root / "train" / "red" / "0.jpg")  # as many images, one changed
    line = join(str(tmp_path / "cache-2"))
    assert "(content differs: the training and validation images or labels are not the study's" in line


def test_a_study_made_before_its_data_was_recorded_records_it_when_joined(tmp_path, digits):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study, store = open_study(plan_study("old", url, {}), digits.resolution)
    store.close()
    assert attrs.STUDY_DATA not in study.user_attrs
    record_data(study, digits)
    assert optuna.load_study(study_name="old", storage=url).user_attrs[attrs.STUDY_DATA] == digits.record()
    assert plan_study("old", url, {}).data == digits.record()
    # A worker that got past the first look (it joined as the study was made) is refused when it records.
    other = digits.__class__(**{**digits.__dict__, "train": digits.train.take(torch.arange(100))})
    with pytest.raises(DatasetError, match="not study old's data \\(images: train 100 here, 1150 in the study\\)"):
        record_data(study, other)


def _host_setup(**changes) -> str:
    from search.board.timing import measuring_setup
    from search.stages.measure import LocalMeasurer
    from search.targets import get_target

    return measuring_setup({**LocalMeasurer(get_target("host")).machine, **changes})


def test_a_worker_that_would_time_otherwise_than_the_study_is_refused_in_one_line_and_writes_nothing(tmp_path, digits):
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    # As a worker timing on two threads left it (the host target before it timed on one).
    study, store = open_study(plan_study("two-threads", url, {}), digits.resolution)
    record_data(study, digits)
    study.set_user_attr(attrs.STUDY_MEASURING_SETUP, _host_setup(threads=2))
    store.close()
    before = _dump(db)
    result = run_nas(["--budget", "1", "--study", "two-threads", "--storage", url], cwd=tmp_path, timeout=180)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "nas.py: error: this worker would time latencies otherwise than study two-threads's trials were "
        "(threads 1 here, 2 in the study): run it with the study's target, board and ONNX Runtime, "
        "or start a new --study"
    )
    assert _dump(db) == before
    assert not (tmp_path / "study.db.lock").exists()  # refused before the study was opened


def test_an_earlier_version_s_study_takes_this_worker_s_setup_with_a_warning_and_accepts_another_host_of_its_kind(
    tmp_path, digits,
):
    from search.runner import announce_target, record_measuring_setup
    from search.stages.measure import LocalMeasurer
    from search.study.config import ConfigError
    from search.targets import get_target

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study, store = open_study(plan_study("old", url, {}), digits.resolution)
    store.close()
    here = LocalMeasurer(get_target("host"))
    # Made before the setup was recorded: its trials say where they were timed.
    for threads in (2, 1):
        trial = study.ask()
        trial.set_user_attr(attrs.MEASURED_ON, {**here.machine, "threads": threads})
        study.tell(trial, (0.5, 1.0, 10.0))
    said = []
    assert record_measuring_setup(study, here, SimpleNamespace(message=said.append)) == _host_setup()
    assert said == [
        "warning: study old's earlier trials were timed otherwise (threads 1 here, 2 in its first trial); their "
        "latencies do not compare with this worker's. The study keeps this worker's setup from now on"
    ]
    assert optuna.load_study(study_name="old", storage=url).user_attrs[attrs.STUDY_MEASURING_SETUP] == _host_setup()
    assert plan_study("old", url, {}).measuring_setup == _host_setup()

    # From now on the recorded setup decides: two threads are refused, another host of the kind is not.
    two_threads = LocalMeasurer(get_target("host"))
    two_threads.machine = {**two_threads.machine, "threads": 2}
    with pytest.raises(ConfigError, match=r"study old's trials were \(threads 2 here, 1 in the study\)"):
        record_measuring_setup(study, two_threads, SimpleNamespace(message=said.append))
    elsewhere = LocalMeasurer(get_target("host"))
    elsewhere.machine = {**elsewhere.machine, "host": "another-machine"}
    assert record_measuring_setup(study, elsewhere, SimpleNamespace(message=said.append)) == _host_setup()
    assert len(said) == 1
    said = []
    announce_target(get_target("host"), elsewhere, _host_setup(), SimpleNamespace(message=said.append))
    assert said[1] == (
        f"latencies are timed on another-machine, the study's first on {socket.gethostname()}: a machine of the "
        "same kind, though nothing checks that the two time alike (a board farm does)"
    )


def test_setups_differ_in_every_setting_but_the_host():
    from search.board.timing import setup_difference

    assert setup_difference(_host_setup(), _host_setup(host="elsewhere")) is None
    assert setup_difference(_host_setup(onnxruntime="1.0.0"), _host_setup(threads=4)) == (
        f"onnxruntime {json.loads(_host_setup())['onnxruntime']!r} here, '1.0.0' in the study; "
        "threads 4 here, 1 in the study"
    )
