"""What a study leaves for the meeting: the Pareto front as a table, a CSV, a plot and
the ONNX files of its members.

As in Optuna's visualization code, building *what to draw* (:func:`build_report`, a
pure function of the trials' recorded attributes) is kept apart from drawing it, so
that tests check the data and not pixels.
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from . import attrs
from .pareto import pareto_mask


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
    test_accuracy: float | None  # test split, front members only
    accuracy_on_target: float | None  # validation split on the board's kernels (agent only)
    measured_on: str


@dataclass(frozen=True)
class Report:
    study: str
    dataset: str
    target: str
    measured_on: str  # one line of provenance for the latency axis
    emulated: bool
    points: tuple[TrialPoint, ...]
    n_failed: int
    n_rejected: int

    @property
    def front(self) -> list[TrialPoint]:
        return sorted((p for p in self.points if p.on_front), key=lambda p: p.latency_ms)


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
    study_name: str, dataset: str, target: str, trials: list[FrozenTrial], test_accuracy: dict[int, float]
) -> Report:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    feasible = [all(v <= 0 for v in t.user_attrs.get(attrs.CONSTRAINT_VIOLATION, [])) for t in complete]
    values = np.array([t.values for t in complete], dtype=float).reshape(-1, len(attrs.DIRECTIONS))
    on_front = np.zeros(len(complete), dtype=bool)
    idx = [i for i, ok in enumerate(feasible) if ok]
    if idx:
        on_front[idx] = pareto_mask(values[idx], attrs.DIRECTIONS)
    points = []
    for t, ok, front in zip(complete, feasible, on_front):
        ua = t.user_attrs
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
                test_accuracy=test_accuracy.get(t.number),
                accuracy_on_target=ua.get(attrs.ACCURACY_ON_TARGET),
                measured_on=provenance(ua.get(attrs.MEASURED_ON, {})),
            )
        )
    sources = sorted({p.measured_on for p in points})
    return Report(
        study=study_name,
        dataset=dataset,
        target=target,
        measured_on="; ".join(sources) if sources else "nothing measured yet",
        emulated=any(t.user_attrs.get(attrs.MEASURED_ON, {}).get("emulated") for t in complete),
        points=tuple(points),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
        n_rejected=sum(t.state == TrialState.PRUNED for t in trials),
    )


def format_table(report: Report) -> str:
    """The front as a terminal table, fastest first."""
    on_board = any(p.accuracy_on_target is not None for p in report.front)
    header = ["trial", "val acc"] + (["board acc"] if on_board else []) + [
        "test acc", "p50 ms", "p90 ms", "KB", "params", "compression",
    ]
    rows = [
        [str(p.number), f"{p.accuracy:.4f}"]
        + ([_maybe(p.accuracy_on_target)] if on_board else [])
        + [
            _maybe(p.test_accuracy),
            f"{p.latency_ms:.3f}",
            f"{p.latency_ms_p90:.3f}",
            f"{p.size_kb:.1f}",
            f"{p.params:,}",
            p.compression,
        ]
        for p in report.front
    ]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [
        f"Pareto front of study {report.study}: {len(report.front)} of {len(report.points)} complete trials "
        f"({report.n_failed} failed, {report.n_rejected} rejected by constraints)",
        f"latency measured on: {report.measured_on}",
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
    return "\n".join(lines)


BOARD_ACCURACY_GAP = 0.01


def _maybe(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


CSV_FIELDS = [f for f in TrialPoint.__dataclass_fields__]


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for p in sorted(report.points, key=lambda p: (not p.on_front, p.latency_ms)):
        writer.writerow(asdict(p))
    return out.getvalue()


def draw(report: Report, path: Path) -> None:
    """Accuracy vs latency and accuracy vs size; every trial grey, the front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    others = [p for p in report.points if not p.on_front]
    front = report.front
    latency_label = "latency p50 (ms, batch 1)" + (" [EMULATED]" if report.emulated else "")
    for ax, key, label in ((axes[0], "latency_ms", latency_label), (axes[1], "size_kb", "ONNX file size (KB)")):
        ax.scatter(
            [getattr(p, key) for p in others],
            [p.accuracy for p in others],
            c=["lightgrey" if p.feasible else "mistyrose" for p in others],
            edgecolors="grey",
            s=28,
            label="other trials" + ("" if all(p.feasible for p in others) else " (pink: over a limit)"),
        )
        ax.scatter(
            [getattr(p, key) for p in front],
            [p.accuracy for p in front],
            color="tab:red",
            s=36,
            zorder=3,
            label="Pareto front (accuracy, latency, size)",
        )
        # A 3-objective front does not read as a curve in two dimensions; the staircase
        # is the front of this view alone: the best accuracy reachable at each x.
        staircase = _staircase([(getattr(p, key), p.accuracy, p.number) for p in front])
        ax.step([x for x, _, _ in staircase], [y for _, y, _ in staircase], where="post", color="black", lw=0.8,
                ls="--", label="best accuracy at this " + ("latency" if key == "latency_ms" else "size"))
        for x, y, number in staircase:
            ax.annotate(str(number), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy (ONNX Runtime)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"{report.study}: {report.dataset}, target {report.target}\nlatency measured on {report.measured_on}",
        fontsize=9,
    )
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _staircase(points: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """The points not beaten by a point that is both smaller in x and at least as accurate."""
    out: list[tuple[float, float, int]] = []
    for x, y, number in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or y > out[-1][1]:
            out.append((x, y, number))
    return out


def write_outputs(report: Report, out_dir: Path, load_model) -> list[Path]:
    """pareto.csv, pareto.png and pareto/trial-NNNN.onnx for each front member.

    ``load_model(sha256)`` returns a stored ONNX file. Files of trials that have left
    the front are removed, so the folder always holds exactly the current front.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "pareto.csv", to_csv(report).encode())
    draw(report, out_dir / "pareto.png")
    models = out_dir / "pareto"
    staging = out_dir / "pareto.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for p in report.front:
        data = load_model(p.onnx_sha256)
        if data is not None:
            (staging / f"trial-{p.number:04d}.onnx").write_bytes(data)
    shutil.rmtree(models, ignore_errors=True)
    staging.rename(models)
    return [out_dir / "pareto.csv", out_dir / "pareto.png", models]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
