"""The whole job in-process: what it refuses before any trial runs."""

import json

import optuna
import pytest
import torch

from conftest import run_nas
from search.data import balanced_subset
from search.progress import SearchProgress
from search.runner import SearchRequest, run_search
from search.stages.teacher import build_teacher, import_teacher
from search.study.storage import SearchError

FAST = {"space": "tiny", "epochs": 1.0, "finetune_epochs": 0.5, "calib_samples": 32, "baselines": False}


def test_a_teacher_near_chance_stops_the_search_before_any_trial(tmp_path, monkeypatch, digits):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    weights = tmp_path / "untrained.pt"
    torch.save(build_teacher(digits.in_chs, digits.num_classes).state_dict(), weights)
    teacher = import_teacher(digits, weights, tmp_path / "cache")
    assert teacher.val_accuracy < 0.15  # an untrained ResNet-18: chance is 0.1
    with pytest.raises(SearchError, match="near chance.*--teacher-epochs"):
        run_search(SearchRequest(budget=1, explicit=FAST, study="chance", cache_dir=str(tmp_path / "cache")))
    study = optuna.load_study(study_name="chance", storage="sqlite:///studies/chance/study.db")
    assert study.get_trials() == []


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
    assert len(list((cache_dir / "teachers").glob(f"{teacher.path.stem}.logits-100-*.pt"))) == 1


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
        f"the data set here is another copy than the study's (fingerprint {digits.fingerprint()}, "
        "the study recorded 0123456789abcdef)"
    ))
    study.set_user_attr(attrs.STUDY_CONFIG, StudyConfig(dataset="imagefolder:/nowhere", resolution=8).to_json())
    assert study_data_here(study, ReportRequest(study="s")) == (
        None, "the data set is not at hand here (imagefolder path /nowhere does not exist)"
    )
