"""The measure stage: where a deployed file is timed and run, behind one interface.

A :class:`Measurer` times models on this machine (:class:`LocalMeasurer`) or on a board
agent (``search.board.client.AgentMeasurer``); :class:`CachedMeasurer` wraps either so
that an identical file is measured once per measuring setup, across workers and runs.
The objective sees only the protocol, never which one it has.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import numpy as np

from ..board.client import AgentMeasurer
from ..board.timing import (
    LatencyStats,
    Measurement,
    TimingPlan,
    machine_info,
    make_session,
    measure_latency,
    measuring_setup,
)
from ..targets import Target, check_measurable


class Measurer(Protocol):
    machine: dict  # where models run: host, cpu, arch, onnxruntime, threads, provider, via
    runs_elsewhere: bool  # models run on another machine's kernels (a board), not this process's

    def identity(self) -> str:
        """The measuring setup: two measurements with equal identities are comparable."""

    def measure(self, onnx_bytes: bytes, plan: TimingPlan | None = None) -> Measurement:
        """Batch-1 latency of the model, with where it was taken; timed by ``plan``
        where given (a quick look), else by the measurer's own."""

    def run(self, onnx_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
        """The model's first output for ``inputs`` (batch first), computed where it is measured."""


class LatencyCache(Protocol):
    """Where measurements are kept (``search.study.storage.Store``)."""

    def get_latency(self, key: str, target_key: str) -> dict | None: ...

    def put_latency(self, key: str, target_key: str, result: dict) -> None: ...


class LocalMeasurer:
    """Times and runs models in this process, on this machine."""

    runs_elsewhere = False

    def __init__(self, target: Target, plan: TimingPlan = TimingPlan()):
        self.target = target
        self.plan = plan
        self.machine = {**machine_info(target.threads), "provider": target.provider, "via": "local"}

    def identity(self) -> str:
        return measuring_setup(self.machine)

    def measure(self, onnx_bytes: bytes, plan: TimingPlan | None = None) -> Measurement:
        stats = measure_latency(onnx_bytes, self.target.threads, self.target.provider, plan or self.plan)
        return Measurement(stats, dict(self.machine))

    def run(self, onnx_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
        session = make_session(onnx_bytes, self.target.threads, self.target.provider)
        return session.run(None, {session.get_inputs()[0].name: inputs})[0]


class CachedMeasurer:
    """Measures each distinct file once per measuring setup; runs, and measurements by a
    plan of their own (quick looks), are never cached."""

    def __init__(self, inner: Measurer, cache: LatencyCache):
        self.inner = inner
        self.cache = cache
        self.machine = inner.machine
        self.runs_elsewhere = inner.runs_elsewhere

    def identity(self) -> str:
        return self.inner.identity()

    def run(self, onnx_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
        return self.inner.run(onnx_bytes, inputs)

    def measure(self, onnx_bytes: bytes, plan: TimingPlan | None = None) -> Measurement:
        if plan is not None:
            return self.inner.measure(onnx_bytes, plan)
        key, setup = hashlib.sha256(onnx_bytes).hexdigest(), self.inner.identity()
        hit = self.cache.get_latency(key, setup)
        if hit is not None:
            return Measurement(LatencyStats.from_dict(hit["stats"]), hit["measured_on"], cached=True)
        result = self.inner.measure(onnx_bytes)
        self.cache.put_latency(key, setup, {"stats": result.stats.as_dict(), "measured_on": result.measured_on})
        return result


def make_measurer(target: Target, token: str | None) -> Measurer:
    """Local timing, or the board agent's once it has been reached and checked."""
    if target.device is None:
        check_measurable(target)
        return LocalMeasurer(target)
    return AgentMeasurer(target, token)
