"""The command line's own logic (search/cli.py, nas.py): progress lines in the terminal and
options made from StudyConfig. tests/test_search.py runs the commands end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import fields

import pytest
from optuna.trial import TrialState, create_trial

import nas
from conftest import ROOT
from search.cli import TerminalProgress
from search.study import attrs
from search.study.config import StudyConfig, option_name
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
    capsys.readouterr()
    (trial,) = numbered([complete(0.9, 1.0, 30.0)])
    progress.trial_finished(trial, n_complete=3)
    assert (progress.bar.n, progress.bar.total) == (3, 5)
    assert "trial 0" not in capsys.readouterr().err
    progress.close()
    assert progress.bar is None


def test_a_training_run_s_progress_shows_in_steps_of_five_percent(capsys):
    progress = TerminalProgress()
    progress.fraction(0.5)  # before the trial loop: the teacher's bar
    assert (progress.bar.desc, progress.bar.n) == ("teacher", 50)
    progress.fraction(0.53)
    assert progress.bar.n == 50
    progress.fraction(0.55)
    assert progress.bar.n == 55

    progress.start(n_complete=0, budget=4)
    progress.stage(3, "train")
    assert progress.bar.postfix == "trial 3: train"
    progress.fraction(0.40)
    assert progress.bar.postfix == "trial 3: train 40%"
    progress.fraction(0.44)
    assert progress.bar.postfix == "trial 3: train 40%"
    progress.stage(3, "prune")  # a new stage starts its own count, even within the last step
    progress.fraction(0.41)
    assert progress.bar.postfix == "trial 3: prune 41%"
    progress.close()
    capsys.readouterr()


@pytest.fixture(scope="module")
def search_help() -> dict[str, str]:
    """``nas.py search --help``, one line per option (a wide terminal): {option: its help text}."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "nas.py"), "search", "--help"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"},
    )
    assert result.returncode == 0, result.stderr
    options = {}
    for line in result.stdout.splitlines():
        found = re.match(r"\s+(?:-\w, )?(--[a-z-]+)(?: [A-Z:]+)?\s+(.*)", line)
        if found:
            options[found.group(1)] = found.group(2)
    return options


@pytest.mark.parametrize("setting", [f for f in fields(StudyConfig)], ids=lambda f: f.name)
def test_search_help_shows_each_study_setting_with_its_default(search_help, setting):
    text = search_help[option_name(setting.name)]
    assert text.startswith(setting.metadata["help"])
    shown = re.fullmatch(r".*\(default: ([^()]*)\)", text).group(1)
    if setting.default is None:
        assert shown == "none"
    else:
        assert type(setting.default)(shown) == setting.default


def test_search_help_shows_the_budget_default(search_help):
    assert search_help["--budget"].endswith("(default: 50)")


def test_study_options_not_given_stay_unset_so_a_stored_study_s_apply():
    args = nas.build_parser().parse_args(["search", "--epochs", "2", "--sampler", "tpe"])
    assert (args.epochs, args.sampler) == (2.0, "tpe") and isinstance(args.epochs, float)
    unset = {f.name for f in fields(StudyConfig)} - {"epochs", "sampler"}
    assert all(getattr(args, name) is None for name in unset)


def test_status_without_studies_says_how_to_start_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert nas.main(["status"]) == 0
    assert capsys.readouterr().out.strip() == "no studies found; start one with: python nas.py --budget 50"
    assert list(tmp_path.iterdir()) == []
