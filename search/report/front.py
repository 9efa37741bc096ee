"""The Pareto front as data: which trials are on it, and the table and CSV that list them.

Pure functions of the trials' recorded attributes (``search.study.attrs``): tests check
this data, not pixels; ``draw`` turns it into the plot and the files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Hashable, Sequence

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from ..study import attrs
from .retime import Retimed


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Which rows of ``values`` (n points x k objectives) no other row dominates.

    A row dominates another when it is at least as good in every objective and
    strictly better in one. Duplicated points are all kept.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(directions):
        raise ValueError(f"expected an n x {len(directions)} array, got shape {values.shape}")
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    costs = values * signs  # everything minimised
    n = len(costs)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        no_worse = np.all(costs <= costs[i], axis=1)
        better = np.any(costs < costs[i], axis=1)
        if np.any(no_worse & better):
            mask[i] = False
    return mask


@dataclass(frozen=True)
class TrialPoint:
    number: int
    accuracy: float  # validation split: what the search selected on
    latency_ms: float  # median
    latency_ms_p90: float
    size_kb: float
    params: int
    macs: int
    arch: str
    compression: str
    onnx_sha256: str
    feasible: bool
    on_front: bool
    test_accuracy: float | None  # test split, front members only (None on the front: NOT_MEASURED_HERE)
    accuracy_on_target: float | None  # validation split on the board's kernels (agent only)
    measured_on: str
    baseline: str | None = None  # the name of the hand-designed network this trial is (``study.baselines``)
    accuracy_before_quant: float | None = None  # validation split, the fp32 export of the same network
    prune_ratio: float | None = None
    quant: str = ""  # fp32, fp16, int8-dynamic or int8-static
    int8_types: str = ""  # int8-static: activations/weights types and weight bits
    # Timed again with the other front members and baselines, in interleaved rounds (``retime``).
    retimed_p50_ms: float | None = None
    retimed_p90_ms: float | None = None
    latency_ms_p10: float | None = None  # with p90: the spread of the search-time runs

    @property
    def fair_latency_ms(self) -> float:
        """The latency to rank on: the re-timed one where there is one."""
        return self.latency_ms if self.retimed_p50_ms is None else self.retimed_p50_ms
    # The deployed file of the candidate trained at full budget (``nas.py finalize``), if it was.
    final_accuracy: float | None = None
    final_accuracy_test: float | None = None
    final_p50_ms: float | None = None
    final_kb: float | None = None


@dataclass(frozen=True)
class FinalizedPoint:
    """A trial's candidate trained at full budget, beside what its proxy training gave."""

    number: int
    epochs: int
    proxy_accuracy: float  # validation split, the trial's own file
    accuracy: float  # validation split, the finalized file
    accuracy_test: float
    latency_ms: float  # median
    size_kb: float

    @property
    def gain(self) -> float:
        return self.accuracy - self.proxy_accuracy


def finalized_points(study_user_attrs: Mapping) -> list[FinalizedPoint]:
    """Every finalized trial of a study, by trial number."""
    points = []
    for key, record in study_user_attrs.items():
        if key.startswith(attrs.FINALIZED_PREFIX):
            points.append(
                FinalizedPoint(
                    number=int(key[len(attrs.FINALIZED_PREFIX) :]),
                    epochs=record[attrs.FINAL_EPOCHS],
                    proxy_accuracy=record[attrs.PROXY_ACCURACY],
                    accuracy=record[attrs.ACCURACY],
                    accuracy_test=record[attrs.ACCURACY_TEST],
                    latency_ms=record[attrs.LATENCY_P50],
                    size_kb=record[attrs.SIZE_BYTES] / 1024.0,
                )
            )
    return sorted(points, key=lambda p: p.number)


@dataclass(frozen=True)
class RankAgreement:
    """Kendall's tau between the proxy's validation accuracy and the finalized one: how far
    the search's ranking of candidates holds at full budget."""

    tau: float | None  # None below two trials, or when one ranking is all ties
    p_value: float | None
    trials: tuple[int, ...]


def rank_agreement(points: Sequence[FinalizedPoint]) -> RankAgreement:
    from scipy.stats import kendalltau

    trials = tuple(p.number for p in points)
    proxy, final = [p.proxy_accuracy for p in points], [p.accuracy for p in points]
    if len(points) < 2 or len(set(proxy)) < 2 or len(set(final)) < 2:  # scipy would warn and answer NaN
        return RankAgreement(None, None, trials)
    result = kendalltau(proxy, final)
    return RankAgreement(float(result.statistic), float(result.pvalue), trials)


def format_finalized(points: Sequence[FinalizedPoint]) -> str:
    """The finalized trials as a terminal table, and the rank agreement below it."""
    header = ["trial", "epochs", "proxy val", "final val", "final test", "gain", "p50 ms", "KB"]
    rows = [
        [
            str(p.number), str(p.epochs), f"{p.proxy_accuracy:.4f}", f"{p.accuracy:.4f}", f"{p.accuracy_test:.4f}",
            f"{p.gain:+.4f}", f"{p.latency_ms:.3f}", f"{p.size_kb:.1f}",
        ]
        for p in points
    ]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    agreement = rank_agreement(points)
    if agreement.tau is None:
        lines.append("Kendall tau between proxy and final validation accuracy: needs two trials of distinct accuracies")
    else:
        lines.append(
            f"Kendall tau between proxy and final validation accuracy: {agreement.tau:.3f} over {len(points)} trials "
            f"(p = {agreement.p_value:.2g})"
        )
    if len({p.epochs for p in points}) > 1:
        lines.append("note: the trials were finalized with different epochs")
    return "\n".join(lines)


@dataclass(frozen=True)
class TeacherPoint:
    """The teacher, exported and measured as a trial's file is: what the students learn from."""

    accuracy: float  # validation split, its ONNX file under ONNX Runtime
    latency_ms: float
    latency_ms_p90: float
    size_kb: float
    measured_on: str
    retimed_p50_ms: float | None = None


@dataclass(frozen=True)
class ComparedStudy:
    """Another study's front, drawn and listed beside this one's (``nas.py report --compare``)."""

    name: str
    dataset: str
    target: str
    measured_on: str
    front: tuple[TrialPoint, ...]


@dataclass(frozen=True)
class Report:
    study: str
    dataset: str
    target: str
    measured_on: str  # one line of provenance for the latency axis
    emulated: bool
    points: tuple[TrialPoint, ...]
    n_failed: int
    n_rejected: int  # pruned, but not stopped early: by a hard limit (or a repeat set aside)
    n_stopped: int = 0  # early, as dominated (``study.early_stop``)
    finalized: tuple[FinalizedPoint, ...] = ()
    n_running: int = 0  # trials running or waiting when the report was built: the study is not finished
    # The budget a model to ship must fit (``decision``): the study's limits unless the report was given others.
    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    retime_note: str = ""  # how the front was re-timed, or why it was not
    test_note: str = ""  # which front members have no test accuracy, and why
    # (complete trials so far, hypervolume of their feasible front), scaled over this study (``hypervolume``).
    hypervolume_curve: tuple[tuple[int, float], ...] = ()
    # {objective: {parameter: importance}} (``importance``), largest first.
    importances: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    compared: tuple[ComparedStudy, ...] = ()
    teacher: TeacherPoint | None = None
    # The study's teacher's validation accuracy as the study records it (``search.shared_teacher``):
    # shown even where the teacher is not exported and measured.
    teacher_accuracy: float | None = None

    @property
    def front(self) -> list[TrialPoint]:
        return sorted((p for p in self.points if p.on_front), key=lambda p: p.latency_ms)

    @property
    def baselines(self) -> list[TrialPoint]:
        return sorted((p for p in self.points if p.baseline), key=lambda p: p.latency_ms)


def provenance(measured_on: dict) -> str:
    if not measured_on:
        return "unknown"
    parts = [
        f"{measured_on.get('arch', '?')} {measured_on.get('cpu', '?')}",
        f"{measured_on.get('threads', '?')} threads",
        f"ORT {measured_on.get('onnxruntime', '?')}",
        f"host {measured_on.get('host', '?')}",
    ]
    if measured_on.get("via") == "agent":
        parts.append("via agent")
    text = ", ".join(parts)
    return text + " (EMULATED: not the board's timing)" if measured_on.get("emulated") else text


def build_report(
    study_name: str,
    dataset: str,
    target: str,
    trials: list[FrozenTrial],
    test_accuracy: dict[int, float],
    finalized: Sequence[FinalizedPoint] = (),
    retimed: Mapping[int, Retimed] = {},
) -> Report:
    # A repeat is the same candidate as an earlier trial, with its values: shown once.
    complete = [
        t for t in trials
        if t.state == TrialState.COMPLETE and t.values is not None and attrs.REPEAT_OF not in t.user_attrs
    ]
    feasible = [all(v <= 0 for v in t.user_attrs.get(attrs.CONSTRAINT_VIOLATION, [])) for t in complete]
    values = np.array([t.values for t in complete], dtype=float).reshape(-1, len(attrs.DIRECTIONS))
    on_front = np.zeros(len(complete), dtype=bool)
    idx = [i for i, ok in enumerate(feasible) if ok]
    if idx:
        on_front[idx] = pareto_mask(values[idx], attrs.DIRECTIONS)
    final = {f.number: f for f in finalized}
    points = []
    for t, ok, front in zip(complete, feasible, on_front):
        ua = t.user_attrs
        f = final.get(t.number)
        points.append(
            TrialPoint(
                number=t.number,
                accuracy=t.values[0],
                latency_ms=t.values[1],
                latency_ms_p90=ua.get(attrs.LATENCY_P90, float("nan")),
                size_kb=t.values[2],
                params=ua.get(attrs.PARAMS, 0),
                macs=ua.get(attrs.MACS, 0),
                arch=ua.get(attrs.ARCH, ""),
                compression=ua.get(attrs.COMPRESSION, ""),
                onnx_sha256=ua.get(attrs.ONNX_SHA256, ""),
                feasible=ok,
                on_front=bool(front),
                test_accuracy=None,
                accuracy_on_target=ua.get(attrs.ACCURACY_ON_TARGET),
                measured_on=provenance(ua.get(attrs.MEASURED_ON, {})),
                baseline=ua.get(attrs.BASELINE),
                accuracy_before_quant=ua.get(attrs.ACCURACY_BEFORE_QUANT),
                prune_ratio=ua.get(attrs.PRUNE_RATIO),
                quant=ua.get(attrs.QUANT, ""),
                int8_types=_int8_types(ua.get(attrs.INT8_TYPES)),
                latency_ms_p10=(ua.get(attrs.LATENCY) or {}).get("p10_ms"),
                final_accuracy=f.accuracy if f else None,
                final_accuracy_test=f.accuracy_test if f else None,
                final_p50_ms=f.latency_ms if f else None,
                final_kb=f.size_kb if f else None,
            )
        )
    sources = sorted({p.measured_on for p in points})
    report = Report(
        study=study_name,
        dataset=dataset,
        target=target,
        measured_on="; ".join(sources) if sources else "nothing measured yet",
        emulated=any(t.user_attrs.get(attrs.MEASURED_ON, {}).get("emulated") for t in complete),
        points=tuple(points),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
        n_rejected=sum(t.state == TrialState.PRUNED and attrs.EARLY_STOPPED not in t.user_attrs for t in trials),
        n_stopped=sum(attrs.EARLY_STOPPED in t.user_attrs for t in trials),
        finalized=tuple(finalized),
        n_running=sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials),
    )
    return add_measurements(report, test_accuracy, retimed)


def add_measurements(
    report: Report, test_accuracy: Mapping[int, float], retimed: Mapping[Hashable, Retimed] = {}
) -> Report:
    """``report`` with what is measured once its front is known: test accuracies and re-timed
    latencies, by trial number (neither moves a trial on or off the front)."""
    points = tuple(
        replace(
            p,
            test_accuracy=test_accuracy.get(p.number, p.test_accuracy),
            retimed_p50_ms=retimed[p.number].p50_ms if p.number in retimed else p.retimed_p50_ms,
            retimed_p90_ms=retimed[p.number].p90_ms if p.number in retimed else p.retimed_p90_ms,
        )
        for p in report.points
    )
    return replace(report, points=points)


def compared_study(report: Report) -> ComparedStudy:
    """``report``'s front, to draw beside another study's."""
    return ComparedStudy(report.study, report.dataset, report.target, report.measured_on, tuple(report.front))


def _int8_types(types: dict | None) -> str:
    if not types:
        return ""
    return f"{types.get('activations', '?')}/{types.get('weights', '?')}, {types.get('weight_bits', 8)}-bit weights"


def format_table(report: Report) -> str:
    """The front as a terminal table, fastest first."""
    on_board = any(p.accuracy_on_target is not None for p in report.front)
    retimed = any(p.retimed_p50_ms is not None for p in report.front)
    header = ["trial", "val acc"] + (["board acc"] if on_board else []) + [
        "test acc", "p50 ms", "p90 ms"] + (["re-timed p50"] if retimed else []) + ["KB", "params", "compression",
    ]
    rows = [
        [str(p.number), f"{p.accuracy:.4f}"]
        + ([_maybe(p.accuracy_on_target)] if on_board else [])
        + [
            _maybe(p.test_accuracy, missing=NOT_MEASURED_HERE),
            f"{p.latency_ms:.3f}",
            f"{p.latency_ms_p90:.3f}",
        ]
        + ([_maybe(p.retimed_p50_ms, "{:.3f}")] if retimed else [])
        + [
            f"{p.size_kb:.1f}",
            f"{p.params:,}",
            p.compression,
        ]
        for p in report.front
    ]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [
        f"Pareto front of study {report.study}: {len(report.front)} of {len(report.points)} complete trials "
        f"({report.n_failed} failed, {report.n_rejected} rejected by constraints, {report.n_stopped} stopped early)",
        f"latency measured on: {report.measured_on}" + (f"; {report.retime_note}" if report.retime_note else ""),
        *([report.test_note] if report.test_note else []),
        "  ".join(h.rjust(w) for h, w in zip(header, widths)),
    ]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    drifted = [
        p.number for p in report.front
        if p.accuracy_on_target is not None and abs(p.accuracy_on_target - p.accuracy) > BOARD_ACCURACY_GAP
    ]
    if drifted:
        lines.append(
            f"note: on the board's kernels trials {', '.join(map(str, drifted))} differ from this machine's "
            f"accuracy by more than {100 * BOARD_ACCURACY_GAP:g} point"
        )
    if report.teacher is not None or report.teacher_accuracy is not None:
        lines.append(f"teacher (ResNet-18, every trial distilled from it): {_teacher_figures(report)}")
    if report.baselines:
        lines += ["", f"Baselines ({baselines_are(report)}):"]
        lines += [f"  {_baseline_line(p, report.front)}" for p in report.baselines]
    if report.finalized:
        lines += ["", f"Finalized (trained at full budget): {len(report.finalized)} trials", format_finalized(report.finalized)]
    return "\n".join(lines)


BOARD_ACCURACY_GAP = 0.01


def baselines_are(report: Report) -> str:
    """What the report's baselines are: hand-designed networks, or one's own network as given."""
    if all(p.baseline.startswith(attrs.ORIGINAL_BASELINE) for p in report.baselines):
        return "your network as given: unpruned, not fine-tuned, only quantized"
    return "hand-designed, trained like every trial"


def _teacher_figures(report: Report) -> str:
    t = report.teacher
    if t is None:
        return f"validation accuracy {report.teacher_accuracy:.4f} (not measured here)"
    retimed = "" if t.retimed_p50_ms is None else f" (re-timed {t.retimed_p50_ms:.3f} ms)"
    return f"validation accuracy {t.accuracy:.4f}, p50 {t.latency_ms:.3f} ms{retimed}, {t.size_kb:.1f} KB"


def _baseline_line(p: TrialPoint, front: Sequence[TrialPoint]) -> str:
    by = dominated_by(p, front)
    where = "on the front" if p.on_front else f"dominated by trial {by}" if by is not None else "not dominated"
    return f"{p.baseline:28s} trial {p.number:3d}  val {p.accuracy:.4f}  p50 {p.latency_ms:.3f} ms  {p.size_kb:8.1f} KB  {where}"


def dominated_by(point: TrialPoint, front: Sequence[TrialPoint]) -> int | None:
    """A front member at most as slow and as large and at least as accurate as ``point``
    (another trial than itself), the most accurate such; None if there is none."""
    better = [
        f for f in front
        if f.number != point.number and f.latency_ms <= point.latency_ms and f.size_kb <= point.size_kb
        and f.accuracy >= point.accuracy
    ]
    return max(better, key=lambda f: (f.accuracy, -f.latency_ms)).number if better else None


def _maybe(value: float | None, fmt: str = "{:.4f}", missing: str = "-") -> str:
    return missing if value is None else fmt.format(value)


# A front member's test accuracy is measured by a report that has the study's data (and the
# member's file) at hand; one without shows this instead, and a later report where they are fills it in.
NOT_MEASURED_HERE = "not measured here"


CSV_FIELDS = [f for f in TrialPoint.__dataclass_fields__]


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for p in sorted(report.points, key=lambda p: (not p.on_front, p.latency_ms)):
        row = asdict(p)
        if p.on_front and p.test_accuracy is None:
            row["test_accuracy"] = NOT_MEASURED_HERE
        writer.writerow(row)
    return out.getvalue()


def staircase(points: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """The points not beaten by a point that is both smaller in x and at least as accurate."""
    out: list[tuple[float, float, int]] = []
    for x, y, number in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or y > out[-1][1]:
            out.append((x, y, number))
    return out
