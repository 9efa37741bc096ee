"""On a finished study: ``nas.py report`` (the page, the model to ship, re-timing, comparison)
and ``nas.py export`` (the deployed file with its model card, and the card's snippet run as written)."""

import csv
import json
import runpy

import optuna
import pytest
from PIL import Image

from conftest import FAST, run_nas
from search.study import attrs


@pytest.fixture(scope="module")
def searched(tmp_path_factory, cache_dir):
    """A finished 3-trial digits study, and the number of a front member (it has a test accuracy)."""
    cwd = tmp_path_factory.mktemp("card")
    result = run_nas(["--budget", "3", "--study", "card", "--cache-dir", str(cache_dir), *FAST], cwd)
    assert result.returncode == 0, result.stderr
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="card", storage=f"sqlite:///{cwd}/studies/card/study.db")
    tested = study.user_attrs[attrs.STUDY_TEST_ACCURACY]
    return cwd, int(next(iter(tested))), tested


def test_the_card_says_what_the_file_expects_and_what_it_was_measured_at(searched, digits):
    cwd, trial, tested = searched
    result = run_nas(["export", "--study", "card", "--trial", str(trial), "--out", "model"], cwd)
    assert result.returncode == 0, result.stderr
    out = cwd / "model"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "card.json", "model.onnx", "predict.py"]
    card = json.loads((out / "card.json").read_text())
    assert card["input"]["shape"] == [1, 1, 8, 8] and card["input"]["channels"] == "grey"
    assert card["input"]["mean"] == list(digits.mean) and card["input"]["std"] == list(digits.std)
    assert card["classes"] == list(digits.classes)
    assert card["data"]["fingerprint"] == digits.fingerprint()
    assert card["accuracy"]["test"] == tested[str(trial)]
    assert card["size_kb"] == round((out / "model.onnx").stat().st_size / 1024, 1)
    assert card["measured_on"]["cpu"] and card["latency_ms"]["p50"] > 0
    readme = (out / "README.md").read_text()
    assert (out / "predict.py").read_text() in readme  # the README shows the snippet as it is


def test_the_card_s_snippet_run_as_written_reproduces_its_test_accuracy(searched, digits, tmp_path):
    cwd, trial, _ = searched
    out = cwd / "snippet"
    assert run_nas(["export", "--study", "card", "--trial", str(trial), "--out", str(out)], cwd).returncode == 0
    images = []
    for i, pixels in enumerate(digits.test.pixels.numpy()):
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels[0], "L").save(path)
        images.append(path)
    predict = runpy.run_path(str(out / "predict.py"))["predict"]
    classes = list(digits.classes)
    hits = sum(classes.index(predict(path)) == int(y) for path, y in zip(images, digits.test.y))
    card = json.loads((out / "card.json").read_text())
    assert abs(hits / len(images) - card["accuracy"]["test"]) <= 0.001


def test_an_export_never_overwrites_a_folder_that_holds_something_unless_forced(searched):
    cwd, trial, _ = searched
    out = cwd / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run_nas(["export", "--study", "card", "--trial", str(trial), "--out", str(out)], cwd)
    assert result.returncode == 2
    assert "--force" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    forced = run_nas(["export", "--study", "card", "--trial", str(trial), "--out", str(out), "--force"], cwd)
    assert forced.returncode == 0, forced.stderr
    assert "notes.txt" not in [p.name for p in out.iterdir()] and (out / "model.onnx").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--study", "nope", "--trial", "0"], "no study 'nope'"),
        (["--study", "card", "--trial", "999"], "no deployed model for trial 999"),
        (["--study", "card", "--trial", "0", "--storage", "postgresql+psycopg://nobody@127.0.0.1:9/none"],
         "cannot open study storage"),
    ],
)
def test_a_bad_export_says_why_in_one_line_and_writes_nothing(searched, args, message):
    cwd, _, _ = searched
    before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
    result = run_nas(["export", *args, "--out", "bad"], cwd)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.relative_to(cwd) for p in cwd.rglob("*")) == before


def test_report_re_times_the_front_and_names_the_model_within_the_budget(searched):
    cwd, _, _ = searched
    result = run_nas(["report", "--study", "card", "--max-latency-ms", "10", "--compare", "card"], cwd)
    assert result.returncode == 0, result.stderr
    # The study's teacher, from its database (this folder has no teacher cached), re-timed with the front.
    assert "front, baselines and teacher re-timed together" in result.stdout and "re-timed p50" in result.stdout
    assert "teacher (ResNet-18, every trial distilled from it): validation accuracy " in result.stdout
    assert "best within 10 ms: trial " in result.stdout
    page = (cwd / "studies" / "card" / "report" / "index.html").read_text()
    assert "best within 10 ms: trial " in page and "Compared with 1 other studies" in page


def test_a_report_of_a_study_that_is_not_there_writes_nothing(searched):
    cwd, _, _ = searched
    before = {p: p.stat().st_mtime_ns for p in cwd.rglob("*") if p.is_file() and ".db" not in p.name}
    unreachable = "postgresql+psycopg://nobody@127.0.0.1:9/none"
    for args in (["--study", "nope"], ["--study", "card", "--compare", "nope"], ["--study", "card", "--max-size-kb", "0"],
                 ["--study", "card", "--storage", unreachable]):
        result = run_nas(["report", *args], cwd)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert {p: p.stat().st_mtime_ns for p in cwd.rglob("*") if p.is_file() and ".db" not in p.name} == before



def write_digits_tree(root, digits, train_per_class: int, test_per_class: int):
    """Part of digits as a folder of PNG images (train/<class>/, test/<class>/): a data set
    that can be taken away, on which the digits teacher knows its classes."""
    for split, images, n in (("train", digits.train, train_per_class), ("test", digits.test, test_per_class)):
        for cls in digits.classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            members = (images.y == int(cls)).nonzero().flatten()[:n]
            for i in members.tolist():
                Image.fromarray(images.pixels[i, 0].numpy(), "L").save(folder / f"{i}.png")
    return root


@pytest.mark.slow  # a search and two reports in fresh processes: about 40 s on a quiet 2-core machine
def test_a_report_elsewhere_draws_from_the_database_alone_and_one_with_the_data_fills_in_test_accuracy(
    tmp_path, monkeypatch, digits, teacher
):
    """A study on a folder of images, reported from another folder once the images are gone
    (no data set, no teacher cache there), then again where they are back."""
    import torch

    import nas
    from search.data import load_dataset
    from search.runner import SearchRequest, run_search
    from search.stages.teacher import import_teacher

    root = write_digits_tree(tmp_path / "images", digits, train_per_class=16, test_per_class=5)
    made, elsewhere, db = tmp_path / "made", tmp_path / "elsewhere", tmp_path / "db"
    for folder in (made, elsewhere, db):
        folder.mkdir()
    weights = tmp_path / "teacher.pt"
    torch.save(teacher.model.state_dict(), weights)
    import_teacher(load_dataset(f"imagefolder:{root}", cache_dir=str(made / "cache")), weights, made / "cache")
    url = f"sqlite:///{db}/study.db"
    monkeypatch.chdir(made)
    explicit = {"dataset": f"imagefolder:{root}", "space": "tiny", "epochs": 1.0, "finetune_epochs": 0.5,
                "calib_samples": 32, "baselines": False}
    run_search(SearchRequest(budget=2, explicit=explicit, study="moved", storage=url, cache_dir="cache"))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="moved", storage=url)
    tested = study.user_attrs[attrs.STUDY_TEST_ACCURACY]
    teacher_file = study.user_attrs[attrs.STUDY_TEACHER_FILE]
    teacher_accuracy = study.user_attrs[attrs.STUDY_TEACHER_ACCURACY][teacher_file["onnx_sha256"]]
    assert teacher_file["latency"]["p50_ms"] > 0
    study.set_user_attr(attrs.STUDY_TEST_ACCURACY, {})  # as a search stopped before its report leaves it
    root.rename(tmp_path / "away")

    result = run_nas(["report", "--study", "moved", "--storage", url], elsewhere)
    assert result.returncode == 0, result.stderr
    assert "reporting from the database alone: the data set is not at hand here" in result.stderr
    out = elsewhere / "studies" / "moved"
    front = [r for r in csv.DictReader((out / "report" / "pareto.csv").open()) if r["on_front"] == "True"]
    assert front and all(r["test_accuracy"] == "not measured here" for r in front)
    assert f"test accuracy not measured here for trials {', '.join(r['number'] for r in front)}" in result.stdout
    page = (out / "report" / "index.html").read_text()
    assert page.count("not measured here") == len(front) + 1  # each member's cell, and the note above
    # The teacher drawn from its stored file, at the accuracy and latency the study recorded, re-timed with the front.
    teacher_line = f"Teacher (ResNet-18, fp32, exported and measured as the trials are): validation accuracy {teacher_accuracy:.4f}"
    assert teacher_line in page and f"p50 {teacher_file['latency']['p50_ms']:.3f} ms (re-timed " in page
    assert "front, baselines and teacher re-timed together" in result.stdout
    onnx_files = [f"trial-{int(r['number']):04d}.onnx" for r in front]
    assert sorted(p.name for p in (out / "pareto").iterdir()) == sorted(onnx_files)
    assert sorted(p.name for p in elsewhere.rglob("*") if p.is_file()) == sorted(
        ["index.html", "pareto.csv", "pareto.png", "hypervolume.png", "importance.png", *onnx_files]
    )  # nothing loaded, decoded or trained here

    (tmp_path / "away").rename(root)
    assert nas.main(["report", "--study", "moved", "--storage", url, "--cache-dir", "cache"]) == 0
    assert study.user_attrs[attrs.STUDY_TEST_ACCURACY] == tested  # measured again, as the search measured it
    rows = csv.DictReader((made / "studies" / "moved" / "report" / "pareto.csv").open())
    assert {r["number"]: float(r["test_accuracy"]) for r in rows if r["on_front"] == "True"} == tested
