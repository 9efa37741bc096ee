"""The trial loop in-process: failures, constraints, the measurement cache."""

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from conftest import FAST
from search.study import attrs, objective
from search.stages.measure import CachedMeasurer, LocalMeasurer
from search.board.timing import TimingPlan
from search.runner import SearchRequest, run_search
from search.study.storage import SearchError, Store
from search.targets import get_target


def _explicit(extra=None):
    values = {"space": "tiny", "epochs": 1.0, "finetune_epochs": 0.5, "calib_samples": 32, "baselines": False}
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
    assert complete and all(t.values[2] <= limit_kb for t in complete)


class _CountingMeasurer(LocalMeasurer):
    calls = 0

    def measure(self, onnx_bytes, plan=None):
        type(self).calls += 1
        return super().measure(onnx_bytes)


def test_an_identical_file_is_measured_once_per_setup(tmp_path):
    import torch

    from search.stages.export import export_onnx

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


def _fixed_params(**overrides):
    """A tiny-space candidate, fixed: stage widths 16/24, one block each."""
    params = {
        "stem": 8, "s1_depth": 1, "s1_width": 16, "s1_kernel": 3, "s1_expand": 4, "s1_se": True, "s1_act": "re",
        "s2_depth": 1, "s2_width": 24, "s2_kernel": 3, "s2_expand": 4, "s2_se": False, "s2_act": "hs",
        "fc": 0, "head": 64, "prune_ratio": 0.0, "channel_round": 8, "quant": "fp32",
    }
    params.update(overrides)
    return params


def _run_fixed(ctx, number: int, **params):
    """One trial of a fixed candidate, sampled and run as the loop does; (trial, values)."""
    trial = optuna.trial.FixedTrial(_fixed_params(**params), number=number)
    return trial, objective.run_trial(trial, ctx, objective.sample_trial(trial, ctx))


def _context(tmp_path, digits, teacher, target=None, **config):
    from search.study.config import StudyConfig
    from search.stages.teacher import teacher_logits
    from search.study.objective import TrialContext
    from search.progress import SearchProgress
    from spaces import get_space

    config = StudyConfig(**{"space": "tiny", "epochs": 2, "finetune_epochs": 1, "calib_samples": 64, **config})
    plan = TimingPlan(warmup_runs=2, warmup_seconds=0, min_runs=10, min_seconds=0)
    store = Store(f"sqlite:///{tmp_path}/trial.db")
    target = target or get_target("host")
    logits = teacher_logits(teacher, digits.train)
    return TrialContext(config, get_space("tiny"), digits, digits.train, digits.val, logits, target,
                        LocalMeasurer(target, plan), store, SearchProgress(), teacher_sha256="the-teacher-s-sha256")


@pytest.mark.parametrize("reduce_range", [True, False], ids=["7-bit", "8-bit"])
def test_int8_static_trial_reports_the_accuracy_of_the_quantized_file(tmp_path, digits, teacher, reduce_range):
    import dataclasses

    import onnx

    from search.stages.evaluate import onnx_accuracy

    target = dataclasses.replace(get_target("host"), reduce_range=reduce_range)
    ctx = _context(tmp_path, digits, teacher, target)
    trial, (acc, latency, size_kb) = _run_fixed(ctx, 1, quant="int8-static", calib_method="entropy")
    ua = trial.user_attrs
    deployed = ctx.store.get_model(ua[attrs.ONNX_SHA256])
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load_from_string(deployed).graph.node}
    assert acc == ua[attrs.ACCURACY] == pytest.approx(onnx_accuracy(deployed, digits.val))
    assert ua[attrs.QUANT] == "int8-static" and ua[attrs.CALIB_METHOD] == "entropy"
    # The recorded weight bits are those of the file: its conv weights use that range, fully.
    initializers = onnx.load_from_string(deployed).graph.initializer
    codes = np.concatenate([onnx.numpy_helper.to_array(i).ravel().astype(np.int16) for i in initializers
                            if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4])
    bits = ua[attrs.INT8_TYPES]["weight_bits"]
    assert bits == (7 if reduce_range else 8)
    assert -(2 ** (bits - 1)) <= codes.min() and codes.max() <= 2 ** (bits - 1)
    assert np.abs(codes).max() > 2 ** (bits - 2)
    assert ua[attrs.SIZE_BYTES] == len(deployed) < ua[attrs.SIZE_BYTES_FP32]
    assert size_kb == pytest.approx(len(deployed) / 1024) and latency == ua[attrs.LATENCY_P50] > 0


def test_accuracy_is_the_shipped_file_s_and_accuracy_before_quantization_the_fp32_file_s(
    tmp_path, monkeypatch, digits, teacher
):
    import onnx
    from onnx import helper, numpy_helper

    from search.stages.evaluate import onnx_accuracy

    files = {}

    def class_zero_always(fp32, comp, calibration, target):
        """A shipped file whose logits are all zero: it answers class 0 for every image."""
        model = onnx.load_from_string(fp32)
        graph = model.graph
        producer = next(n for n in graph.node if graph.output[0].name in n.output)
        producer.output[:] = ["unscaled"]
        graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "zero"))
        graph.node.append(helper.make_node("Mul", ["unscaled", "zero"], [graph.output[0].name]))
        files["fp32"], files["shipped"] = fp32, model.SerializeToString()
        return files["shipped"]

    monkeypatch.setattr(objective, "quantize_for", class_zero_always)
    ctx = _context(tmp_path, digits, teacher, batch_size=32)  # enough steps to beat chance by far
    trial, (acc, _, _) = _run_fixed(ctx, 1, quant="int8-static", calib_method="minmax")
    ua = trial.user_attrs
    assert acc == ua[attrs.ACCURACY] == onnx_accuracy(files["shipped"], digits.val)
    assert acc == pytest.approx((digits.val.y == 0).double().mean().item())
    assert ua[attrs.ACCURACY_BEFORE_QUANT] == onnx_accuracy(files["fp32"], digits.val) > 0.5


def test_a_size_limit_holds_for_the_file_that_ships(tmp_path, monkeypatch, digits, teacher):
    candidate = {"prune_ratio": 0.3, "channel_round": 4, "quant": "int8-dynamic"}
    _, (_, _, size_kb) = _run_fixed(_context(tmp_path, digits, teacher), 1, **candidate)
    # The same trial again (same training seed, same file): a limit it meets exactly lets it through.
    trial, values = _run_fixed(_context(tmp_path, digits, teacher, max_size_kb=size_kb), 1, **candidate)
    assert values[2] == size_kb and trial.user_attrs[attrs.CONSTRAINT_VIOLATION] == [0.0]
    # One byte less, and a probe that let it through: the shipped file is refused all the same.
    monkeypatch.setattr(objective.Probe, "cost", lambda self: objective.ProbeCost(0.0, 0.0))
    with pytest.raises(optuna.TrialPruned, match="after training: size 1[0-9]+ B > "):
        _run_fixed(_context(tmp_path, digits, teacher, max_size_kb=size_kb - 1 / 1024), 1, **candidate)


def test_the_untrained_probe_is_exported_as_the_shipped_file(tmp_path, digits, teacher):
    """Before training, the probe's size is the shipped file's, but for a few bytes of
    quantization parameters: it is refused before training, not after."""
    candidate = {"prune_ratio": 0.3, "channel_round": 4, "quant": "int8-dynamic"}
    _, (_, _, size_kb) = _run_fixed(_context(tmp_path, digits, teacher), 1, **candidate)
    ctx = _context(tmp_path, digits, teacher, max_size_kb=size_kb - 16 / 1024)
    trial = optuna.trial.FixedTrial(_fixed_params(**candidate), number=2)
    with pytest.raises(optuna.TrialPruned, match="before training: size"):
        objective.run_trial(trial, ctx, objective.sample_trial(trial, ctx))


def test_a_latency_limit_rejects_a_slow_candidate_before_training(tmp_path, digits, teacher):
    ctx = _context(tmp_path, digits, teacher, max_latency_ms=1e-6)
    trial = optuna.trial.FixedTrial(_fixed_params(), number=1)
    with pytest.raises(optuna.TrialPruned, match="latency"):
        objective.run_trial(trial, ctx, objective.sample_trial(trial, ctx))
    ua = trial.user_attrs
    assert "latency" in ua[attrs.REJECTED] and attrs.SECONDS_PREFIX + "train" not in ua
    assert ua[attrs.CONSTRAINT_VIOLATION][0] > 0
    # A generous limit lets the same candidate through, with its margin recorded.
    trial, (_, latency, _) = _run_fixed(_context(tmp_path, digits, teacher, max_latency_ms=1000.0), 2)
    assert trial.user_attrs[attrs.CONSTRAINT_VIOLATION] == [pytest.approx(latency - 1000.0)]


def test_pruned_trial_records_the_derived_architecture(tmp_path, digits, teacher):
    from spaces import build_model, parse_arch

    ctx = _context(tmp_path, digits, teacher)
    trial, _ = _run_fixed(ctx, 2, prune_ratio=0.5, channel_round=4)
    ua = trial.user_attrs
    assert ua[attrs.ARCH] != ua[attrs.ARCH_SAMPLED]
    assert ua[attrs.PARAMS] < ua[attrs.PARAMS_BEFORE_PRUNE]
    rebuilt = build_model(parse_arch(ua[attrs.ARCH]))
    assert sum(p.numel() for p in rebuilt.parameters()) == ua[attrs.PARAMS]
