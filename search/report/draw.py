"""The study's outputs drawn and written: the report folder (index.html, its plots and
pareto.csv) and the front members' ONNX files."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from .front import Report, staircase, to_csv
from .html import render

PLOT_CAPTIONS = {
    "pareto.png": "Accuracy against latency and size",
    "hypervolume.png": "How the front grew: hypervolume after each complete trial",
    "importance.png": "Which choices decided each objective: parameter importance (fANOVA)",
}


QUANT_COLOURS = {"fp32": "tab:orange", "fp16": "tab:green", "int8-dynamic": "tab:purple", "int8-static": "tab:red"}


def draw(report: Report, path: Path) -> None:
    """Accuracy vs latency and accuracy vs size. Colour: quantization mode; marker: pruned
    (triangle) or not (circle); trials off the front faded; the front's latency bars span
    p10-p90 of its search-time runs; baselines as blue diamonds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    others = [p for p in report.points if not p.on_front and not p.baseline]
    front = report.front
    latency_label = "latency p50 (ms, batch 1)" + (" [EMULATED]" if report.emulated else "")
    for ax, key, label in ((axes[0], "latency_ms", latency_label), (axes[1], "size_kb", "ONNX file size (KB)")):
        ax.scatter(
            [getattr(p, key) for p in others],
            [p.accuracy for p in others],
            c=[_colour(p) for p in others],
            edgecolors=["grey" if p.feasible else "deeppink" for p in others],
            alpha=0.35,
            s=26,
            label="other trials" + ("" if all(p.feasible for p in others) else " (pink edge: over a limit)"),
        )
        if key == "latency_ms":
            timed = [p for p in front if p.latency_ms_p10 is not None]
            ax.errorbar(
                [p.latency_ms for p in timed], [p.accuracy for p in timed],
                xerr=[[p.latency_ms - p.latency_ms_p10 for p in timed], [p.latency_ms_p90 - p.latency_ms for p in timed]],
                fmt="none", ecolor="grey", elinewidth=0.8, zorder=2, label="_p10-p90",
            )
        for pruned, marker in ((False, "o"), (True, "^")):
            members = [p for p in front if bool(p.prune_ratio) == pruned]
            ax.scatter(
                [getattr(p, key) for p in members], [p.accuracy for p in members], c=[_colour(p) for p in members],
                marker=marker, edgecolors="black", linewidths=0.6, s=44, zorder=3,
                label=f"front, {'pruned' if pruned else 'unpruned'}",
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
        if report.teacher is not None:
            t = report.teacher
            ax.scatter([t.latency_ms if key == "latency_ms" else t.size_kb], [t.accuracy], marker="*", color="black",
                       s=130, zorder=4, label="teacher: ResNet-18, fp32")
        for other, colour in zip(report.compared, COMPARE_COLOURS):
            ax.scatter([getattr(p, key) for p in other.front], [p.accuracy for p in other.front], marker="x",
                       color=colour, s=36, zorder=3, label=compared_label(report, other))
            steps = staircase([(getattr(p, key), p.accuracy, p.number) for p in other.front])
            ax.step([x for x, _, _ in steps], [y for _, y, _ in steps], where="post", color=colour, lw=0.8, ls=":")
        # A 3-objective front does not read as a curve in two dimensions; the staircase
        # is the front of this view alone: the best accuracy reachable at each x.
        steps = staircase([(getattr(p, key), p.accuracy, p.number) for p in front])
        ax.step([x for x, _, _ in steps], [y for _, y, _ in steps], where="post", color="black", lw=0.8,
                ls="--", label="best accuracy at this " + ("latency" if key == "latency_ms" else "size"))
        for x, y, number in steps:
            ax.annotate(str(number), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")  # a study's latencies and sizes span orders of magnitude, the teacher's more
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide on a log axis
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy (ONNX Runtime)")
        ax.grid(alpha=0.3)
        modes = sorted({p.quant for p in report.points if p.quant in QUANT_COLOURS})
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], ls="", marker="s", color=QUANT_COLOURS[m]) for m in modes]
        ax.legend(handles, labels + modes, loc="lower right", fontsize=7)
    fig.suptitle(
        f"{report.study}: {report.dataset}, target {report.target}\nlatency measured on {report.measured_on}",
        fontsize=9,
    )
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


COMPARE_COLOURS = ("tab:cyan", "tab:olive", "tab:brown", "tab:pink", "navy", "darkgoldenrod")


def compared_label(report: Report, other) -> str:
    """How a compared study is named on the plot: its data too, where that is not this study's."""
    label = f"front of {other.name} (target {other.target})"
    return label + (f" [other data: {other.dataset}]" if other.dataset != report.dataset else "")


def _colour(p) -> str:
    return QUANT_COLOURS.get(p.quant, "lightgrey")


def draw_hypervolume(curve: Sequence[tuple[int, float]], path: Path) -> None:
    """Hypervolume of the feasible front against complete trials (``report.hypervolume``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
    if curve:
        ax.step([n for n, _ in curve], [hv for _, hv in curve], where="post", color="tab:red")
        ax.set_xlim(left=0)
    else:
        ax.text(0.5, 0.5, "no complete feasible trial yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("complete trials")
    ax.set_ylabel("hypervolume (error, log latency, log size;\nscaled over this study, reference 1.1)", fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_importances(importances, path: Path) -> None:
    """One bar chart per objective: each parameter's share of that objective's variance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = list(importances) or ["(too few trials)"]
    fig, axes = plt.subplots(1, len(objectives), figsize=(4.2 * len(objectives), 3.8), constrained_layout=True,
                             squeeze=False)
    for ax, objective in zip(axes[0], objectives):
        ranked = list((importances.get(objective) or {}).items())[:12][::-1]  # largest on top
        ax.barh([name for name, _ in ranked], [value for _, value in ranked], color="tab:blue")
        if not ranked:
            ax.text(0.5, 0.5, "needs more complete trials", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(objective, fontsize=9)
        ax.set_xlabel("importance", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: Report, out_dir: Path, load_model) -> list[Path]:
    """``report/`` (index.html, the plots it embeds, pareto.csv) and ``pareto/trial-NNNN.onnx``
    for each front member, each folder replaced whole.

    ``load_model(sha256)`` returns a stored ONNX file. Files of trials that have left
    the front are removed, so the folder always holds exactly the current front.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = _fresh(out_dir / "report.tmp")
    (staging / "pareto.csv").write_text(to_csv(report))
    draw(report, staging / "pareto.png")
    draw_hypervolume(report.hypervolume_curve, staging / "hypervolume.png")
    draw_importances(report.importances, staging / "importance.png")
    images = {caption: (staging / name).read_bytes() for name, caption in PLOT_CAPTIONS.items()}
    (staging / "index.html").write_text(render(report, images))
    _replace(out_dir / "report", staging)
    models = _fresh(out_dir / "pareto.tmp")
    for p in report.front:
        data = load_model(p.onnx_sha256)
        if data is not None:
            (models / f"trial-{p.number:04d}.onnx").write_bytes(data)
    _replace(out_dir / "pareto", models)
    for moved in ("pareto.csv", "pareto.png"):  # where versions before the report folder wrote them
        (out_dir / moved).unlink(missing_ok=True)
    return [out_dir / "report", out_dir / "pareto"]


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def _replace(folder: Path, staging: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
