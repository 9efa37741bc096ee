"""The measure stage (search/stages/measure.py): the Measurer protocol, local timing, the
measurement cache in a real study database, and the choice of measurer."""

from __future__ import annotations

import os
import platform
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from search.board.client import AgentMeasurer
from search.board.timing import TimingPlan, measuring_setup
from search.stages.evaluate import onnx_logits
from search.stages.export import export_onnx
from search.stages.measure import CachedMeasurer, LocalMeasurer, Measurer, make_measurer
from search.study.storage import Store, sha256
from search.targets import BUILTIN_TARGETS, TargetError, normalise_arch

QUICK = TimingPlan(sessions=1, warmup_runs=2, warmup_seconds=0.0, min_runs=10, min_seconds=0.0, max_runs=20)
HOST = BUILTIN_TARGETS["host"]
ONE_THREAD = replace(HOST, threads=1)


def _export(out_channels: int) -> bytes:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, out_channels, 3), torch.nn.ReLU(), torch.nn.Flatten())
    return export_onnx(net, torch.zeros(1, 1, 8, 8))


@pytest.fixture(scope="module")
def models() -> tuple[bytes, bytes]:
    return _export(4), _export(6)


class Counting:
    """A Measurer around another that records what reaches it."""

    def __init__(self, inner: Measurer):
        self.inner = inner
        self.machine = inner.machine
        self.runs_elsewhere = inner.runs_elsewhere
        self.measured: list[str] = []  # SHA-256 of each file measured
        self.runs = 0

    def identity(self) -> str:
        return self.inner.identity()

    def measure(self, onnx_bytes: bytes, plan=None):
        self.measured.append(sha256(onnx_bytes))
        return self.inner.measure(onnx_bytes, plan)

    def run(self, onnx_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
        self.runs += 1
        return self.inner.run(onnx_bytes, inputs)


def protocol_members(protocol: type) -> set[str]:
    return set(protocol.__annotations__) | {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}


def test_every_measurer_has_what_the_protocol_declares(tmp_path):
    members = protocol_members(Measurer)
    assert members == {"machine", "runs_elsewhere", "identity", "measure", "run"}
    local = LocalMeasurer(HOST, QUICK)
    cached = CachedMeasurer(Counting(local), Store(f"sqlite:///{tmp_path}/study.db"))
    for measurer in (local, cached, Counting(local)):
        assert all(hasattr(measurer, m) for m in members), type(measurer).__name__
    assert all(hasattr(AgentMeasurer, m) for m in members - {"machine"})  # machine comes from the agent
    assert (local.runs_elsewhere, cached.runs_elsewhere, AgentMeasurer.runs_elsewhere) == (False, False, True)
    assert cached.machine is local.machine


def test_local_measurer_times_a_real_file_and_says_where(models):
    measurer = LocalMeasurer(ONE_THREAD, QUICK)
    m = measurer.measure(models[0])
    assert 10 <= m.stats.runs <= 20 and 0 < m.stats.min_ms <= m.stats.p50_ms <= m.stats.max_ms
    assert not m.cached
    assert m.measured_on == measurer.machine
    assert (m.measured_on["via"], m.measured_on["provider"], m.measured_on["threads"]) == ("local", "CPUExecutionProvider", 1)
    assert m.measured_on["arch"] == platform.machine() and m.measured_on["onnxruntime"] == ort.__version__
    assert m.measured_on["emulated"] is False
    m.measured_on["host"] = "elsewhere"  # a trial's record is its own copy
    assert measurer.machine["host"] != "elsewhere"
    assert LocalMeasurer(replace(HOST, threads=None), QUICK).machine["threads"] == os.cpu_count()  # one per core
    assert LocalMeasurer(HOST, QUICK).machine["threads"] == 1  # the host profile times on one thread


def test_local_identity_is_the_measuring_setup():
    one, two = LocalMeasurer(ONE_THREAD), LocalMeasurer(replace(HOST, threads=2))
    assert one.identity() == measuring_setup(one.machine) == LocalMeasurer(ONE_THREAD).identity()
    assert one.identity() != two.identity()


def test_local_run_is_onnx_runtime_s_output(models):
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(LocalMeasurer(ONE_THREAD).run(models[0], x), onnx_logits(models[0], x), rtol=1e-6)


def test_cache_measures_each_file_once_per_setup_across_workers(tmp_path, models):
    url = f"sqlite:///{tmp_path}/study.db"
    a, b = models
    counting = Counting(LocalMeasurer(ONE_THREAD, QUICK))
    cached = CachedMeasurer(counting, Store(url))
    first, again = cached.measure(a), cached.measure(a)
    assert counting.measured == [sha256(a)]
    assert again.cached and not first.cached
    assert (again.stats, again.measured_on) == (first.stats, first.measured_on)
    cached.measure(b)
    assert counting.measured == [sha256(a), sha256(b)]

    # Another worker on the same database: nothing to measure.
    other_worker = Counting(LocalMeasurer(ONE_THREAD, QUICK))
    assert CachedMeasurer(other_worker, Store(url)).measure(a).stats == first.stats
    assert other_worker.measured == []

    # Another setup (two threads): the same file is measured again.
    two_threads = Counting(LocalMeasurer(replace(HOST, threads=2), QUICK))
    assert not CachedMeasurer(two_threads, Store(url)).measure(a).cached
    assert two_threads.measured == [sha256(a)]


def test_cache_never_caches_runs(tmp_path, models):
    counting = Counting(LocalMeasurer(ONE_THREAD, QUICK))
    cached = CachedMeasurer(counting, Store(f"sqlite:///{tmp_path}/study.db"))
    x = np.zeros((2, 1, 8, 8), np.float32)
    np.testing.assert_array_equal(cached.run(models[0], x), cached.run(models[0], x))
    assert counting.runs == 2 and counting.measured == []


def test_make_measurer_times_here_only_what_this_machine_can_honestly_time():
    measurer = make_measurer(HOST, token=None)
    assert isinstance(measurer, LocalMeasurer) and measurer.target == HOST
    foreign = BUILTIN_TARGETS["x86" if normalise_arch(platform.machine()) == "aarch64" else "arm"]
    with pytest.raises(TargetError, match="start the agent on the board"):
        make_measurer(foreign, token=None)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(TargetError, match="lacks"):
            make_measurer(BUILTIN_TARGETS["cuda"], token=None)


def test_make_measurer_sends_a_target_with_a_device_to_its_agent():
    # AgentMeasurer's first check: a device needs its token (before any connection).
    with pytest.raises(TargetError, match="needs the agent's token"):
        make_measurer(replace(BUILTIN_TARGETS["arm"], devices=("127.0.0.1:9",)), token=None)
