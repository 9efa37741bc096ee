import numpy as np
import pytest
import torch

from search.board.timing import TimingPlan, latency_stats, machine_info, measure_latency
from search.stages.export import export_onnx


def test_latency_stats_on_known_samples():
    samples = [float(v) for v in range(1, 11)]  # 1..10 ms
    s = latency_stats(samples)
    assert s.p50_ms == pytest.approx(5.5)
    assert s.p90_ms == pytest.approx(9.1)
    assert s.p10_ms == pytest.approx(1.9)
    assert s.mean_ms == pytest.approx(5.5)
    assert s.std_ms == pytest.approx(np.std(samples, ddof=1))
    assert (s.min_ms, s.max_ms, s.runs) == (1.0, 10.0, 10)
    assert s.spread == pytest.approx((9.1 - 1.9) / 5.5)


def test_latency_stats_needs_two_runs():
    with pytest.raises(ValueError):
        latency_stats([1.0])


def test_real_onnx_runtime_measurement_follows_the_plan():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    model(torch.zeros(1, 1, 8, 8))
    onnx_bytes = export_onnx(model, torch.zeros(1, 1, 8, 8))
    plan = TimingPlan(warmup_runs=3, warmup_seconds=0.0, min_runs=20, min_seconds=0.05, max_runs=500)
    stats = measure_latency(onnx_bytes, threads=1, plan=plan)
    assert 20 <= stats.runs <= 500
    assert 0 < stats.min_ms <= stats.p10_ms <= stats.p50_ms <= stats.p90_ms <= stats.max_ms


def test_runs_are_pooled_over_separate_loads_of_the_model(monkeypatch):
    from search.board import timing as measure

    loads = []
    real_make_session = measure.make_session
    monkeypatch.setattr(measure, "make_session", lambda *a: loads.append(1) or real_make_session(*a))
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
    onnx_bytes = export_onnx(model, torch.zeros(1, 1, 8, 8))
    plan = TimingPlan(sessions=4, warmup_runs=1, warmup_seconds=0.0, min_runs=40, min_seconds=0.0, max_runs=80)
    stats = measure_latency(onnx_bytes, threads=1, plan=plan)
    assert len(loads) == 4
    assert stats.runs == 40  # 10 a session: the totals are split, not multiplied


def test_a_plan_needs_a_session():
    with pytest.raises(ValueError, match="sessions must be at least 1"):
        TimingPlan(sessions=0)


def test_machine_info_says_where():
    info = machine_info(threads=2)
    assert {"host", "cpu", "arch", "onnxruntime", "threads", "emulated"} <= set(info)
    assert info["threads"] == 2 and info["emulated"] is False
