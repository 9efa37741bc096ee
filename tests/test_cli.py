"""The command line's own logic (search/cli.py, nas.py): progress lines in the terminal and
options made from StudyConfig. tests/test_search.py runs the commands end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import fields

import pytest
import torch
from optuna.trial import TrialState, create_trial

import nas
from conftest import ROOT
from search import cli
from search.cli import TerminalProgress
from search.data import Split
from search.stages.train import TrainConfig, fit, predict_logits
from search.study import attrs
from search.study.config import StudyConfig, config_keys, option_name
from test_front import complete, numbered


@pytest.mark.parametrize(
    "state, user_attrs, line",
    [
        (TrialState.FAIL, {attrs.FAILED_STAGE: "train", attrs.FAIL_REASON: "RuntimeError: boom"},
         "trial 0 failed in train: RuntimeError: boom"),
        (TrialState.FAIL, {}, "trial 0 failed: no reason recorded"),  # e.g. Ctrl-C before any stage recorded
        (TrialState.PRUNED, {attrs.REJECTED: "before training: size 92160 B > 65536 B (64 KB)"},
         "trial 0 rejected before training: size 92160 B > 65536 B (64 KB)"),
        (TrialState.COMPLETE, {attrs.REPEAT_OF: 2}, "trial 0 is the candidate of trial 2: not trained again"),
    ],
    ids=["failed", "no-reason", "rejected", "repeat"],
)
def test_a_trial_not_trained_to_the_end_prints_one_line_saying_why(capsys, state, user_attrs, line):
    values = [0.9, 1.0, 30.0] if state == TrialState.COMPLETE else None
    (trial,) = numbered([create_trial(state=state, values=values, user_attrs=user_attrs)])
    TerminalProgress().trial_finished(trial, n_complete=0)
    assert capsys.readouterr().err.splitlines() == [line]


def test_a_complete_trial_moves_the_bar_and_prints_nothing_else(capsys):
    progress = TerminalProgress()
    progress.start(n_complete=2, budget=5)
    progress.stage(0, "measure")
    capsys.readouterr()
    (trial,) = numbered([complete(0.9, 1.0, 30.0)])
    progress.trial_finished(trial, n_complete=3)
    assert (progress.bar.n, progress.bar.total) == (3, 5)
    assert progress.bar.postfix == ""  # the finished trial's stage is not left standing
    assert "trial 0" not in capsys.readouterr().err
    progress.close()
    assert progress.bar is None


def _toy_split(n: int = 64) -> Split:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return Split(x, (x.mean((1, 2, 3)) > 0).long())


def _toy_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))


THREE_EPOCHS_OF_FOUR = TrainConfig(epochs=3, batch_size=16)  # on _toy_split: 4 batches an epoch, 12 steps


@pytest.fixture()
def every_step_drawn(monkeypatch):
    """Draw at every step: a toy run is over before the first redraw would be due."""
    monkeypatch.setattr(cli, "REDRAW_SECONDS", 0.0)


def test_the_teacher_s_work_shows_on_a_bar_of_its_own_gone_before_the_search_bar(capsys, every_step_drawn):
    progress = TerminalProgress()
    progress.stage(None, "teacher")
    fit(_toy_model(), _toy_split(), THREE_EPOCHS_OF_FOUR, on_progress=progress.steps)
    predict_logits(_toy_model(), _toy_split(), batch_size=16, on_progress=progress.steps)
    progress.stage(None, "teacher logits")
    predict_logits(_toy_model(), _toy_split(), batch_size=16, on_progress=progress.steps)
    assert progress.work_bar is None
    progress.start(n_complete=0, budget=2)
    progress.close()
    err = capsys.readouterr().err
    # tqdm's time left follows the text: elapsed<remaining.
    assert re.search(r"teacher: train epoch 2/3 batch 1/4 +\d+%\|.*\| \d\d:\d\d<\d\d:\d\d", err)
    assert "teacher: validation batch 2/4" in err
    assert "teacher logits: batch 2/4" in err
    # Each bar is blanked out when its work ends: no line of it is left before the search bar.
    before_search = err[: err.index("search:")]
    assert "\n" not in before_search
    assert before_search.rstrip("\r").rsplit("\r", 1)[-1].strip() == ""


def test_installing_a_teacher_shows_its_validation_pass(tmp_path, capsys, teacher):
    weights = tmp_path / "resnet18.pt"
    torch.save(teacher.model.state_dict(), weights)
    assert nas.main(["teacher", "--dataset", "digits", "--weights", str(weights), "--cache-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "teacher: validation batch 1/1" in captured.err  # digits' 287 validation images: one batch
    assert captured.out.startswith("teacher for digits: imported from")


@pytest.mark.parametrize("into", [[], ["--study", "s"]], ids=["this machine's", "a study's"])
def test_a_teacher_no_better_than_chance_is_not_installed(tmp_path, monkeypatch, capsys, into):
    from search.stages.teacher import build_teacher

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save(build_teacher(1, 10).state_dict(), tmp_path / "untrained.pt")  # knows nothing: chance is 0.1
    assert nas.main(["teacher", "--weights", "untrained.pt", "--cache-dir", "cache", *into]) == 2
    (line,) = capsys.readouterr().err.strip().rsplit("\r", 1)[-1].strip().splitlines()
    assert line.startswith("nas.py: error: the teacher ") and "untrained.pt" in line
    assert "is near chance on the validation split (0.0" in line and line.endswith("; nothing was installed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["untrained.pt"]  # no teacher kept, no study made


def test_a_teacher_installed_into_a_study_is_the_one_its_workers_load(tmp_path, monkeypatch, capsys, teacher, digits):
    from search.shared_teacher import stored_teacher
    from search.study.storage import Store
    from search.study.teacher_store import TeacherStore

    from search import shared_teacher

    monkeypatch.chdir(tmp_path)
    torch.save(teacher.model.state_dict(), tmp_path / "trained.pt")
    passes = []
    validate = shared_teacher.validation_accuracy
    monkeypatch.setattr(shared_teacher, "validation_accuracy", lambda *a: passes.append(1) or validate(*a))
    assert nas.main(["teacher", "--study", "s", "--weights", "trained.pt", "--cache-dir", "cache"]) == 0
    assert len(passes) == 1  # checked once, before anything is written (on CIFAR-10: 70 s a pass)
    out = capsys.readouterr().out
    store = Store("sqlite:///studies/s/study.db")
    installed = stored_teacher(TeacherStore(store), "s", digits, tmp_path / "elsewhere")
    store.close()
    assert installed.source == "imported from trained.pt" and installed.val_accuracy > 0.9
    assert out.strip().splitlines()[-1] == f"teacher of study s: ResNet-18 imported from trained.pt, validation accuracy " \
        f"{installed.val_accuracy:.4f}, sha256 {installed.sha256[:12]}"
    assert nas.main(["teacher", "--study", "s", "--weights", "trained.pt", "--cache-dir", "cache"]) == 2
    assert "study s has its teacher already (imported from trained.pt" in capsys.readouterr().err


def test_the_first_worker_of_a_study_whose_teacher_came_first_must_bring_the_teacher_s_data(
    tmp_path, monkeypatch, capsys, teacher, digits
):
    """``nas.py teacher --study`` runs before any worker: the teacher is the study's only
    record of its data, so a first worker with one test image changed is refused before
    its copy is recorded as the study's (on CIFAR-10 such a worker had joined)."""
    from dataclasses import replace

    from search import runner
    from search.study.storage import stored_attrs

    monkeypatch.chdir(tmp_path)
    torch.save(teacher.model.state_dict(), tmp_path / "trained.pt")
    assert nas.main(["teacher", "--study", "s", "--weights", "trained.pt", "--cache-dir", "cache"]) == 0
    pixels = digits.test.pixels.clone()
    pixels[0] = pixels[1]
    changed = replace(digits, test=replace(digits.test, pixels=pixels))
    monkeypatch.setattr(runner, "load_dataset", lambda *args, **kwargs: changed)
    capsys.readouterr()
    assert nas.main(["--study", "s", "--budget", "1", "--cache-dir", "cache", "--space", "tiny", "--no-baselines"]) == 2
    here, made_for = changed.identity().partition(":")[2], digits.identity().partition(":")[2]
    assert f"study s's teacher was made for other data: the test images or labels differ (fingerprint {here} here, " \
        f"{made_for} recorded); use the data it was made for, or another --study" in capsys.readouterr().err
    assert stored_attrs("sqlite:///studies/s/study.db", "s") is None  # no study made, no data recorded


def test_a_trial_s_training_shows_epoch_batch_and_when_the_trial_ends(capsys, every_step_drawn):
    progress = TerminalProgress()
    progress.start(n_complete=0, budget=2)
    progress.stage(0, "cost")
    progress.stage(0, "train")
    fit(_toy_model(), _toy_split(), THREE_EPOCHS_OF_FOUR, on_progress=progress.steps)
    for stage in ("prune", "export"):
        progress.stage(0, stage)
    timings = {attrs.SECONDS_PREFIX + s: t for s, t in {"cost": 1, "train": 9, "prune": 60, "export": 5}.items()}
    (trial,) = numbered([complete(0.9, 1.0, 30.0, **timings)])
    progress.trial_finished(trial, n_complete=1)
    progress.stage(1, "cost")
    progress.stage(1, "train")
    fit(_toy_model(), _toy_split(), THREE_EPOCHS_OF_FOUR, on_progress=progress.steps)
    progress.close()
    err = capsys.readouterr().err
    # The first trial knows nothing of the stages after training: it estimates the training alone.
    assert re.search(r"trial 0: train epoch 1/3 batch 2/4, train ends in ~0:\d\d", err)
    assert "trial ends" not in err.split("trial 1:")[0]
    # The second adds the prune and export stages the first took (60 s + 5 s) to its own run's end.
    assert re.search(r"trial 1: train epoch 2/3 batch 1/4, trial ends in ~1:0[56]", err)
    assert "trial 1: train epoch 3/3 batch 4/4, trial ends in ~1:05" in err
    assert "trial 1: cost, trial ends in ~1:15" in err  # its own training not begun: the first's 9 s


def test_steps_redraw_a_few_times_a_second_however_many_come(capsys):
    progress = TerminalProgress()
    progress.stage(None, "teacher logits")
    started = time.monotonic()
    for done in range(1, 20_001):
        progress.steps(done, 20_000, 20_000)
    progress.start(n_complete=0, budget=1)
    progress.stage(0, "train")
    for done in range(1, 20_001):
        progress.steps(done, 20_000, 200)
    elapsed = time.monotonic() - started
    progress.close()
    err = capsys.readouterr().err
    most = 2 * (2 + elapsed / cli.REDRAW_SECONDS)  # each loop: its first step, then one per interval
    assert err.count("teacher logits: batch") + err.count("trial 0: train epoch") <= most


@pytest.fixture(scope="module")
def search_help() -> dict[str, str]:
    """``nas.py search --help``, one line per option (a wide terminal): {option: its help text}."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "nas.py"), "search", "--help"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"},
    )
    assert result.returncode == 0, result.stderr
    options, pending = {}, None
    for line in result.stdout.splitlines():
        if pending and line.startswith(" " * 20):  # the help of an option too long to share its line
            options[pending], pending = line.strip(), None
            continue
        found = re.match(r"\s+(?:-\w, )?(--[a-z-]+)(?: [A-Z:]+)?(?:, --no-[a-z-]+)?(?:\s+(.*))?$", line)
        if found:
            options[found.group(1)] = found.group(2)
            pending = None if found.group(2) else found.group(1)
    return options


@pytest.mark.parametrize("setting", [f for f in fields(StudyConfig) if f.name in config_keys()], ids=lambda f: f.name)
def test_search_help_shows_each_study_setting_with_its_default(search_help, setting):
    text = search_help[option_name(setting.name)]
    assert text.startswith(setting.metadata["help"])
    shown = re.fullmatch(r".*\(default: ([^()]*)\)", text).group(1)
    if setting.default in (None, ""):
        assert shown == "none"
    elif isinstance(setting.default, bool):
        assert shown == ("on" if setting.default else "off")
    else:
        assert type(setting.default)(shown) == setting.default


def test_search_help_shows_the_budget_default(search_help):
    assert search_help["--budget"].endswith("(default: 50)")


def test_study_options_not_given_stay_unset_so_a_stored_study_s_apply():
    args = nas.build_parser().parse_args(["search", "--epochs", "2", "--sampler", "tpe"])
    assert (args.epochs, args.sampler) == (2.0, "tpe") and isinstance(args.epochs, float)
    unset = config_keys() - {"epochs", "sampler"}
    assert all(getattr(args, name) is None for name in unset)


def test_status_without_studies_says_how_to_start_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert nas.main(["status"]) == 0
    assert capsys.readouterr().out.strip() == "no studies found; start one with: python nas.py --budget 50"
    assert list(tmp_path.iterdir()) == []
