"""The whole job in-process: what it refuses before any trial runs."""

import optuna
import pytest
import torch

from search.runner import SearchRequest, run_search
from search.stages.teacher import build_teacher, import_teacher
from search.study.storage import SearchError

FAST = {"space": "tiny", "epochs": 1.0, "finetune_epochs": 0.5, "calib_samples": 32}


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
