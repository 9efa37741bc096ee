"""The front drawn and written: pareto.png, pareto.csv and the front members' ONNX files."""

from __future__ import annotations

import shutil
from pathlib import Path

from .front import Report, staircase, to_csv


def draw(report: Report, path: Path) -> None:
    """Accuracy vs latency and accuracy vs size; every trial grey, the front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    others = [p for p in report.points if not p.on_front and not p.baseline]
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
        baselines = report.baselines
        if baselines:
            ax.scatter(
                [getattr(p, key) for p in baselines],
                [p.accuracy for p in baselines],
                marker="D",
                facecolors="none",
                edgecolors="tab:blue",
                s=44,
                zorder=4,
                label="baselines: MobileNetV3-Small (width, fp32 / int8)",
            )
            for p in baselines:
                short = p.baseline.removeprefix("mnv3-small-").replace("int8-static", "int8")
                ax.annotate(short, (getattr(p, key), p.accuracy), fontsize=6, color="tab:blue",
                            xytext=(3, -8), textcoords="offset points")
        # A 3-objective front does not read as a curve in two dimensions; the staircase
        # is the front of this view alone: the best accuracy reachable at each x.
        steps = staircase([(getattr(p, key), p.accuracy, p.number) for p in front])
        ax.step([x for x, _, _ in steps], [y for _, y, _ in steps], where="post", color="black", lw=0.8,
                ls="--", label="best accuracy at this " + ("latency" if key == "latency_ms" else "size"))
        for x, y, number in steps:
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
