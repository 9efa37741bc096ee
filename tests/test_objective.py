"""The trial loop in-process: failures, constraints, the measurement cache."""

import optuna
import pytest
from optuna.trial import TrialState

from conftest import FAST
from search import attrs, objective
from search.latency import CachedMeasurer, LocalMeasurer
from search.measure import TimingPlan
from search.runner import run_search
from search.store import Store
from search.study import SearchError, SearchRequest
from search.targets import get_target


def _explicit(extra=None):
    values = {"space": "tiny", "epochs": 1.0, "finetune_epochs": 0.5, "calib_samples": 32}
    return {**values, **(extra or {})}


def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)
    real_export = objective.export_onnx
    calls = []

    def flaky_export(model, example, metadata=None):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("exporter exploded")
        return real_export(model, example, metadata)

    monkeypatch.setattr(objective, "export_onnx", flaky_export)
    run_search(SearchRequest(budget=3, explicit=_explicit(), study="flaky", cache_dir=str(cache_dir)))
    study = optuna.load_study(study_name="flaky", storage="sqlite:///studies/flaky/study.db")
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1
    assert failed[0].user_attrs[attrs.FAILED_STAGE] == "export"
    assert "exporter exploded" in failed[0].user_attrs[attrs.FAIL_REASON]
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3


def test_repeated_failures_stop_the_search(tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("always broken")

    monkeypatch.setattr(objective, "quantize", broken)
    with pytest.raises(SearchError, match="in a row failed.*always broken"):
        run_search(SearchRequest(budget=10, explicit=_explicit(), study="broken", cache_dir=str(cache_dir)))


def test_constraints_reject_candidates_before_training(tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)
    trained = []
    real_fit = objective.fit
    monkeypatch.setattr(objective, "fit", lambda *a, **k: trained.append(1) or real_fit(*a, **k))
    limit_kb = 12.0
    run_search(
        SearchRequest(budget=3, explicit=_explicit({"max_size_kb": limit_kb, "seed": 3}), study="small", cache_dir=str(cache_dir))
    )
    study = optuna.load_study(study_name="small", storage="sqlite:///studies/small/study.db")
    rejected = study.get_trials(states=(TrialState.PRUNED,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert rejected, "the limit should reject some of the tiny space"
    assert all("size" in t.user_attrs[attrs.REJECTED] for t in rejected)
    assert all(attrs.SECONDS_PREFIX + "train" not in t.user_attrs for t in rejected)
    assert all(t.values[2] <= limit_kb * 1.05 for t in complete)


class _CountingMeasurer(LocalMeasurer):
    calls = 0

    def measure(self, onnx_bytes):
        type(self).calls += 1
        return super().measure(onnx_bytes)


def test_an_identical_file_is_measured_once_per_setup(tmp_path):
    import torch

    from search.export import export_onnx

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    onnx_bytes = export_onnx(model, torch.zeros(1, 1, 8, 8))
    url = f"sqlite:///{tmp_path}/cache.db"
    plan = TimingPlan(warmup_runs=2, warmup_seconds=0, min_runs=5, min_seconds=0)
    inner = _CountingMeasurer(get_target("host"), plan)
    first = CachedMeasurer(inner, Store(url)).measure(onnx_bytes)
    # A second worker with its own connection finds the first one's measurement.
    second = CachedMeasurer(_CountingMeasurer(get_target("host"), plan), Store(url)).measure(onnx_bytes)
    assert _CountingMeasurer.calls == 1
    assert not first.cached and second.cached
    assert second.stats == first.stats and second.measured_on == first.measured_on
