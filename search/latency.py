"""Where latency is measured: in this process, or on a board agent; cached either way."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .measure import LatencyStats, TimingPlan, machine_info, measure_latency
from .store import Store, sha256
from .targets import Target


@dataclass(frozen=True)
class Measurement:
    stats: LatencyStats
    measured_on: dict  # host, cpu, arch, cores, threads, onnxruntime, providers, emulated
    cached: bool = False


class LocalMeasurer:
    """Times models in this process, on this machine."""

    runs_elsewhere = False  # models run on this machine's kernels

    def __init__(self, target: Target, plan: TimingPlan = TimingPlan()):
        self.target = target
        self.plan = plan
        self.machine = {**machine_info(target.threads), "provider": target.provider, "via": "local"}

    def identity(self) -> str:
        return _identity(self.machine)

    def measure(self, onnx_bytes: bytes) -> Measurement:
        stats = measure_latency(onnx_bytes, self.target.threads, self.target.provider, self.plan)
        return Measurement(stats, dict(self.machine))


def _identity(machine: dict) -> str:
    """What makes two measurements comparable: the machine, the runtime and the settings."""
    keys = ("host", "cpu", "arch", "threads", "onnxruntime", "provider", "emulated")
    return json.dumps({k: machine.get(k) for k in keys}, sort_keys=True)


class CachedMeasurer:
    """Measures each distinct file once per measuring setup, across workers and runs."""

    def __init__(self, inner, store: Store):
        self.inner = inner
        self.store = store

    @property
    def machine(self) -> dict:
        return self.inner.machine

    @property
    def runs_elsewhere(self) -> bool:
        """Whether models run on another machine's kernels (a board agent), not this one's."""
        return self.inner.runs_elsewhere

    def run(self, onnx_bytes: bytes, inputs):
        """The model's outputs for ``inputs``, computed where it is measured (not cached)."""
        return self.inner.run(onnx_bytes, inputs)

    def measure(self, onnx_bytes: bytes) -> Measurement:
        key, target_key = sha256(onnx_bytes), self.inner.identity()
        hit = self.store.get_latency(key, target_key)
        if hit is not None:
            stats = {k: v for k, v in hit["stats"].items() if k != "spread"}
            return Measurement(LatencyStats(**stats), hit["measured_on"], cached=True)
        result = self.inner.measure(onnx_bytes)
        self.store.put_latency(key, target_key, {"stats": result.stats.as_dict(), "measured_on": result.measured_on})
        return result
