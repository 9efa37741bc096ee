"""The measure stage: where a deployed file is timed and run, behind one interface.

A :class:`Measurer` times models on this machine (:class:`LocalMeasurer`), on a board
agent (``search.board.client.AgentMeasurer``) or on a farm of them
(``search.board.farm.BoardFarm``, checked on :func:`reference_model` first);
:class:`CachedMeasurer` wraps any so that an identical file is measured once per
measuring setup, across workers and runs.
The objective sees only the protocol, never which one it has.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Protocol

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..board.client import AgentMeasurer
from ..board.farm import BoardFarm
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
    """Local timing, or the board agent's once it has been reached and checked, or a farm's
    once every board has been reached and the boards agree on the reference model."""
    if not target.devices:
        check_measurable(target)
        return LocalMeasurer(target)
    if len(target.devices) == 1:
        return AgentMeasurer(target, token)
    farm = BoardFarm([AgentMeasurer(replace(target, devices=(device,)), token) for device in target.devices])
    farm.check_reference(reference_model())
    return farm


REFERENCE_CHANNELS = 32
REFERENCE_SIZE = 32
REFERENCE_LAYERS = 4


def reference_model() -> bytes:
    """The fixed model a farm's boards are compared on: four 3x3 convolutions with ReLU,
    32 channels at 32x32 (38 M multiply-adds: 0.7 ms on one core of this project's x86
    CPU, a few on a board's; long enough for a steady median, short enough under
    emulation). Weights come from a fixed seed, so every worker sends the same bytes."""
    rng = np.random.default_rng(0)
    c, fan_in = REFERENCE_CHANNELS, REFERENCE_CHANNELS * 9
    nodes, weights, x = [], [], "x"
    for i in range(REFERENCE_LAYERS):
        # He-scaled weights keep activations near unit size: no denormals to slow a CPU down.
        w = (rng.standard_normal((c, c, 3, 3)) * np.sqrt(2 / fan_in)).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(c, np.float32), f"b{i}")]
        nodes += [
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"conv{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]),
        ]
        x = f"relu{i}"
    shape = [1, c, REFERENCE_SIZE, REFERENCE_SIZE]
    graph = helper.make_graph(
        nodes, "edgenas-reference", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)], initializer=weights,
    )
    # Pinned, not this onnx package's newest: a board's older ONNX Runtime must read it too.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()
