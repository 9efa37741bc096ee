"""Fair latencies (search/report/retime.py): models timed again together, in interleaved rounds,
by a real LocalMeasurer on real ONNX files."""

from __future__ import annotations

import torch

from search.report.retime import retime, same_setup
from search.stages.export import export_onnx
from search.stages.measure import LocalMeasurer
from search.targets import BUILTIN_TARGETS


class Recording:
    """The real measurer, noting which file each measurement was of."""

    def __init__(self, inner):
        self.inner, self.order = inner, []
        self.machine, self.runs_elsewhere = inner.machine, inner.runs_elsewhere

    def identity(self):
        return self.inner.identity()

    def measure(self, onnx, plan=None):
        self.order.append(onnx)
        return self.inner.measure(onnx, plan)


def models() -> dict[int, bytes]:
    torch.manual_seed(0)
    small = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    large = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 10))
    return {3: export_onnx(small, torch.zeros(1, 1, 8, 8)), 7: export_onnx(large, torch.zeros(1, 1, 8, 8))}


def test_each_model_is_timed_once_a_round_and_the_median_over_rounds_kept():
    files = models()
    measurer = Recording(LocalMeasurer(BUILTIN_TARGETS["host"]))
    retimed = retime(files, measurer, rounds=3)
    assert measurer.order == [files[3], files[7]] * 3
    assert set(retimed) == {3, 7} and all(r.rounds == 3 for r in retimed.values())
    assert 0 < retimed[3].p50_ms < retimed[7].p50_ms  # the larger network is slower
    assert all(r.p90_ms >= r.p50_ms for r in retimed.values())


def test_re_timing_happens_only_where_and_as_the_search_measured():
    measurer = LocalMeasurer(BUILTIN_TARGETS["host"])
    assert same_setup(measurer, [measurer.machine, dict(measurer.machine)])
    assert not same_setup(measurer, [measurer.machine, {**measurer.machine, "host": "another-box"}])
    assert not same_setup(measurer, [{**measurer.machine, "threads": 99}])
