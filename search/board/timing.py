"""Latency of an ONNX file under ONNX Runtime: warm-up, repeated timed runs, statistics,
and where they were taken.

This module imports only onnxruntime, numpy and the standard library: the board agent
runs it on the target, where torch is not installed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort


@dataclass(frozen=True)
class TimingPlan:
    """How long to time: enough runs for a stable median, bounded in time.

    The runs are spread over ``sessions`` separate loads of the model. Where a load
    places the model's buffers can make every run of that load slower or faster: a
    25 us model measured 0.0243-0.0253 ms in 26 of 30 loads and 0.027-0.028 ms in the
    other 4, whatever the number of runs. One load is one draw of that placement, and
    pooling three averages the draws (bench/loads.py: on a quiet machine, the CV of 20
    measurements of that model went from 4.4% to 0.9%; BENCHMARKS.md has the noisy
    runs too). Run counts and seconds are totals over the loads.
    """

    sessions: int = 3
    warmup_runs: int = 10  # per session
    warmup_seconds: float = 0.05  # warm-up lasts at least this (caches, thread pools, CPU clocks)
    min_runs: int = 50
    min_seconds: float = 0.5
    # Warm-up 0.05 s and 1,000 runs (from 0.2 s and 2,000) cost 0.16 s a measurement of a
    # digits file instead of 0.39, and moved no file's p50 by more than 1% (50 files, 5
    # interleaved rounds, one thread: bench/search.py plans, BENCHMARKS.md); 500 runs cost
    # 0.11 s against 1,000's 0.14 and ordered the files as well (tau 0.93 against 0.94).
    # The report re-times its front anyway (report.retime).
    max_runs: int = 500
    max_seconds: float = 10.0  # stop early on a very slow model; stats still from >= 5 runs a session

    def __post_init__(self):
        if self.sessions < 1:
            raise ValueError(f"sessions must be at least 1, got {self.sessions}")

    def per_session(self) -> TimingPlan:
        """One session's share of this plan."""
        n = self.sessions
        return TimingPlan(
            sessions=1,
            warmup_runs=self.warmup_runs,
            warmup_seconds=self.warmup_seconds / n,
            min_runs=math.ceil(self.min_runs / n),
            min_seconds=self.min_seconds / n,
            max_runs=max(2, self.max_runs // n),
            max_seconds=self.max_seconds / n,
        )


@dataclass(frozen=True)
class LatencyStats:
    p50_ms: float
    p90_ms: float
    p10_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    runs: int

    @property
    def spread(self) -> float:
        """(p90 - p10) / p50: the relative width of the central 80% of runs."""
        return (self.p90_ms - self.p10_ms) / self.p50_ms if self.p50_ms > 0 else math.inf

    def as_dict(self) -> dict:
        return {**asdict(self), "spread": self.spread}

    @classmethod
    def from_dict(cls, values: dict) -> LatencyStats:
        """The inverse of :meth:`as_dict` (``spread`` is derived, not stored)."""
        return cls(**{k: v for k, v in values.items() if k != "spread"})


@dataclass(frozen=True)
class Measurement:
    stats: LatencyStats
    measured_on: dict  # host, cpu, arch, cores, threads, onnxruntime, providers, emulated, via
    cached: bool = False


def latency_stats(samples_ms: list[float]) -> LatencyStats:
    if len(samples_ms) < 2:
        raise ValueError(f"need at least 2 timed runs, got {len(samples_ms)}")
    p10, p50, p90 = (float(v) for v in np.percentile(samples_ms, [10, 50, 90]))
    return LatencyStats(
        p50_ms=p50,
        p90_ms=p90,
        p10_ms=p10,
        mean_ms=statistics.fmean(samples_ms),
        std_ms=statistics.stdev(samples_ms),
        min_ms=min(samples_ms),
        max_ms=max(samples_ms),
        runs=len(samples_ms),
    )


def make_session(
    onnx_bytes: bytes, threads: int | None, provider: str = "CPUExecutionProvider"
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, one per core
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=[provider])


def sample_input(session: ort.InferenceSession, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """A random input of the model's shape (dynamic dimensions set to ``batch``)."""
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else batch for d in inp.shape]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    return {inp.name: np.random.default_rng(seed).standard_normal(shape).astype(dtype)}


def time_session(session: ort.InferenceSession, feed: dict[str, np.ndarray], plan: TimingPlan) -> list[float]:
    """Milliseconds of each timed run of one session, after warm-up (``plan.sessions`` unused)."""
    start = time.perf_counter()
    n = 0
    while n < plan.warmup_runs or time.perf_counter() - start < plan.warmup_seconds:
        session.run(None, feed)
        n += 1
        if time.perf_counter() - start > plan.max_seconds:
            break
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < plan.max_runs:
        t0 = time.perf_counter()
        session.run(None, feed)
        samples.append((time.perf_counter() - t0) * 1000.0)
        elapsed = time.perf_counter() - start
        if len(samples) >= plan.min_runs and elapsed >= plan.min_seconds:
            break
        if elapsed >= plan.max_seconds and len(samples) >= 5:
            break
    return samples


def measure_latency(
    onnx_bytes: bytes,
    threads: int | None,
    provider: str = "CPUExecutionProvider",
    plan: TimingPlan = TimingPlan(),
    open_session=None,
) -> LatencyStats:
    """Batch-1 latency of the model on this machine, pooled over ``plan.sessions`` loads
    (each ``open_session(onnx_bytes, threads, provider)``, by default ``make_session``)."""
    open_session = open_session or make_session  # looked up now: a test may replace make_session
    share = plan.per_session()
    samples: list[float] = []
    feed = None
    for _ in range(plan.sessions):
        session = open_session(onnx_bytes, threads, provider)
        feed = feed or sample_input(session)
        samples += time_session(session, feed, share)
        del session  # one load's buffers at a time
    return latency_stats(samples)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads: int | None = None) -> dict:
    """Where a latency was measured: the provenance every measurement carries."""
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "threads": threads or os.cpu_count(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        # Set by the emulated-board script: its timings are not the board's.
        "emulated": os.environ.get("EDGENAS_EMULATED", "") not in ("", "0"),
    }


def measuring_setup(machine: dict) -> str:
    """What makes two measurements comparable: the machine, the runtime and the settings.

    A board agent's measurement names the kind of board (CPU, architecture, runtime,
    threads), not its host: boards of one kind that agree on the reference model are
    interchangeable (``farm``), so a farm shares one latency cache and the report may
    re-time its front on any of them. A local measurement keeps its host: nothing checks
    that two machines with one CPU model time alike.
    """
    keys = ("cpu", "arch", "threads", "onnxruntime", "provider", "emulated")
    if machine.get("via") != "agent":
        keys += ("host",)
    return json.dumps({k: machine.get(k) for k in keys}, sort_keys=True)


def setup_difference(recorded: str, here: str, recorded_in: str = "the study") -> str | None:
    """Why measurements of setup ``here`` cannot sit beside those of ``recorded``
    (``measuring_setup`` strings, the latter named ``recorded_in``): each setting that
    differs, the host apart, or None.

    Another host of the same kind is accepted: workers on several machines of one kind
    may share a study (nothing checks that they time alike; a board farm does). A
    different thread count, CPU, runtime or board kind would mix latencies that do not
    compare, and the samplers and the front would rank them as if they did.
    """
    study, this = json.loads(recorded), json.loads(here)
    keys = sorted((study.keys() | this.keys()) - {"host"})
    differing = [f"{key} {this.get(key)!r} here, {study.get(key)!r} in {recorded_in}" for key in keys
                 if this.get(key) != study.get(key)]
    return "; ".join(differing) or None
