"""A farm: several board agents of one kind that measure for the search as one.

A target that names several agents (``--device a:8470,b:8470``, or ``devices = [...]`` in
``studies/targets.toml``) measures through a :class:`BoardFarm`. It implements
``search.stages.measure.Measurer``: each measurement and each run goes to the board that
is freest for this worker (fewest of this worker's requests in flight there, then the
shortest queue the agents report, then the board it used last), and every latency
records the board that took it (``measured_on["device"]``).

Boards of one kind must agree, or the front mixes machines. So a farm is checked before
a study starts: every board must report the same kind (CPU, architecture, ONNX Runtime,
threads, emulated or not), and one fixed reference model, timed on every board, must
agree (:func:`check_agreement`). The farm's identity, which keys the latency cache and
decides whether the report may re-time, is that kind (``timing.measuring_setup`` leaves
an agent's host out), so the cache and the re-timing hold across the farm's boards.

Imports no torch and no onnx: the reference model comes from the search's side.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import threading
from contextlib import contextmanager
from typing import Callable, TypeVar

import numpy as np

from ..targets import TargetError
from .client import AgentError, AgentMeasurer
from .timing import Measurement, TimingPlan

# Boards of one kind differ by their run-to-run noise; one further off than this differs
# in something that matters (its clock, cooling, load, a throttled core).
REFERENCE_TOLERANCE = 0.10
# Interleaved rounds, each board once a round, every other round in reverse order, the
# median over rounds: a slow minute of one board (or of the network) does not decide
# alone. Two agents on one 2-core Xeon VM, whose speed drifts between phases 30% apart,
# were 9-34% apart over 3 rounds and 0.5-5% over 7.
REFERENCE_ROUNDS = 7
REFERENCE_PLAN = TimingPlan(sessions=1, warmup_runs=5, warmup_seconds=0.1, min_runs=20, min_seconds=0.3,
                            max_runs=1000, max_seconds=5.0)

log = logging.getLogger(__name__)
Result = TypeVar("Result")


class BoardFarm:
    """Board agents of one kind (each an :class:`AgentMeasurer`), used as one measurer."""

    runs_elsewhere = True

    def __init__(self, boards: list[AgentMeasurer]):
        check_one_kind(boards)
        self.boards = boards
        first = boards[0].machine
        self.machine = {
            **first,
            "host": ", ".join(sorted({b.machine["host"] for b in boards})),
            "device": ", ".join(b.device for b in boards),
        }
        self._lock = threading.Lock()
        self._in_flight = {b.device: 0 for b in boards}
        # Among boards equally free, the one used last: a worker alone keeps to one board, so
        # its figures (and the report's re-timing) come from one machine. Workers start on a
        # board drawn at random, so that those starting together spread over the farm.
        self._last = random.choice(boards).device

    def identity(self) -> str:
        return self.boards[0].identity()  # every board's: check_one_kind

    def measure(self, onnx_bytes: bytes, plan: TimingPlan | None = None) -> Measurement:
        return self._on_free_board(lambda board: board.measure(onnx_bytes, plan))

    def run(self, onnx_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
        return self._on_free_board(lambda board: board.run(onnx_bytes, inputs))

    def reference_latencies(self, reference: bytes) -> dict[str, float]:
        """Each board's p50 of the ``reference`` model: the median over interleaved rounds."""
        p50s: dict[str, list[float]] = {b.device: [] for b in self.boards}
        for round_ in range(REFERENCE_ROUNDS):
            for board in self.boards if round_ % 2 == 0 else reversed(self.boards):
                p50s[board.device].append(board.measure(reference, REFERENCE_PLAN).stats.p50_ms)
        return {device: statistics.median(values) for device, values in p50s.items()}

    def check_reference(self, reference: bytes) -> dict[str, float]:
        """The boards' reference latencies, once they agree (TargetError naming those that do not)."""
        figures = self.reference_latencies(reference)
        log.info("reference model: %s", ", ".join(f"{d} {ms:.3f} ms" for d, ms in figures.items()))
        check_agreement(figures)
        return figures

    def _on_free_board(self, job: Callable[[AgentMeasurer], Result]) -> Result:
        with self._freest() as board:
            return job(board)

    @contextmanager
    def _freest(self):
        """The freest board, counted as this worker's while the block runs."""
        queues = {}
        for board in self.boards:
            try:
                queues[board.device] = board.queue_length()
            except AgentError as e:  # down or slow now: the others take the work
                log.warning("board %s did not say how busy it is (%s): passed over", board.device, e)
                queues[board.device] = None

        def busy(board: AgentMeasurer) -> tuple:
            queue = queues[board.device]
            return self._in_flight[board.device], queue is None, queue or 0, board.device != self._last

        with self._lock:  # choose and count in one step: a request is counted before the next one chooses
            board = min(self.boards, key=busy)
            self._in_flight[board.device] += 1
            self._last = board.device
        try:
            yield board
        finally:
            with self._lock:
                self._in_flight[board.device] -= 1


def check_one_kind(boards: list[AgentMeasurer]) -> None:
    """Refuse boards whose measuring setup differs from the farm's (the most common one)."""
    kinds: dict[str, list[AgentMeasurer]] = {}
    for board in boards:
        kinds.setdefault(board.identity(), []).append(board)
    if len(kinds) == 1:
        return
    common = max(kinds.values(), key=len)
    reference = json.loads(common[0].identity())
    odd = [b for b in boards if b.identity() != common[0].identity()]
    differences = []
    for board in odd:
        setup = json.loads(board.identity())
        what = ", ".join(f"{k} {setup[k]!r} where {common[0].device} has {reference[k]!r}"
                         for k in sorted(setup) if setup[k] != reference[k])
        differences.append(f"{board.device}: {what}")
    them = "it" if len(odd) == 1 else "them"
    raise TargetError(
        f"the boards of a farm must be of one kind, but {'; '.join(differences)}: leave {them} out of the farm "
        f"(--device, or devices in studies/targets.toml), or give another kind a target of its own"
    )


def check_agreement(figures: dict[str, float], tolerance: float = REFERENCE_TOLERANCE) -> None:
    """Refuse the boards whose reference latency (ms, by board) is off the others'.

    From three boards on, each is compared with the median of all: one slow board cannot
    pull that median its way, where the median of the others would lean towards it (two good boards
    and a slow one: each good board's "others" are a good board and the slow one). With two
    boards each is compared with the other, and a gap over ``tolerance`` refuses both: two
    figures cannot tell which board is off.
    """
    if len(figures) < 2:
        return
    listed = ", ".join(f"{device} {ms:.3f} ms" for device, ms in figures.items())
    rule = (f"boards of one kind must agree within {tolerance:.0%} on the reference model, or the front mixes "
            f"machines")
    if len(figures) == 2:
        (a, a_ms), (b, b_ms) = figures.items()
        gap = abs(a_ms - b_ms) / min(a_ms, b_ms)
        if gap > tolerance:
            raise TargetError(
                f"boards {a} and {b} disagree: the reference model takes {listed}, {gap:.0%} apart; {rule}; "
                f"two boards cannot tell which one is off: add a third board of the kind, or find why one is "
                f"slower (clock, cooling, load) before using both"
            )
        return
    median = statistics.median(figures.values())
    off = {device: ms for device, ms in figures.items() if abs(ms - median) / median > tolerance}
    if off:
        named = ", ".join(f"{device} ({abs(ms - median) / median:.0%} off)" for device, ms in off.items())
        raise TargetError(
            f"refused {'board' if len(off) == 1 else 'boards'} {named}: the reference model takes {listed}, "
            f"median {median:.3f} ms; {rule}: find why (clock, cooling, load, another thread count) or leave "
            f"{'it' if len(off) == 1 else 'them'} out of the farm (--device, or devices in studies/targets.toml)"
        )
