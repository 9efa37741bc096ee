"""The study's outputs drawn and written (search/report/draw.py): the report folder
(index.html, its plots, pareto.csv) and the front's ONNX files, from a Report of real
Optuna trials and models kept in a real Store."""

from __future__ import annotations

import csv
import dataclasses

import matplotlib.colors
import matplotlib.image
import pytest
import torch
from matplotlib.figure import Figure

from search.board.timing import make_session
from search.report.draw import QUANT_COLOURS, draw, draw_hypervolume, write_outputs
from search.report.front import CSV_FIELDS, build_report
from search.stages.export import export_onnx
from search.study import attrs
from search.study.storage import Store, sha256
from test_front import sample_trials

FRONT = [3, 1, 0, 7]  # sample_trials()'s front, fastest first


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A Store on a SQLite file holding one real exported model for each of trials 0-3 (trial 7,
    on the front, has none; trial 2 is off it): (store, {trial number: ONNX bytes})."""
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('store')}/study.db")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    models = {n: export_onnx(net, torch.zeros(1, 1, 8, 8), {"trial": n}) for n in (0, 1, 2, 3)}
    for data in models.values():
        store.put_model(data)
    yield store, models
    store.close()


def report_with_models(models: dict[int, bytes]):
    shas = {f"t{n}": {attrs.ONNX_SHA256: sha256(data)} for n, data in models.items()}
    shas["t7"] = {attrs.ONNX_SHA256: "0" * 64}  # a front member whose file is not in the store
    return build_report("s", "digits", "host", sample_trials(**shas), {0: 0.93})


@pytest.fixture
def figures(monkeypatch) -> list[Figure]:
    """Every figure saved meanwhile, kept for inspection; matplotlib still writes the file."""
    saved = []
    real_savefig = Figure.savefig

    def savefig(self, fname, **kwargs):
        saved.append(self)
        return real_savefig(self, fname, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


CURVE = [(1, 0.2), (2, 0.5), (4, 0.6)]


def test_write_outputs_writes_the_csv_of_every_complete_trial(tmp_path, stored):
    report = report_with_models(stored[1])
    paths = write_outputs(report, tmp_path / "out", stored[0].get_model)
    assert paths == [tmp_path / "out" / "report", tmp_path / "out" / "pareto"]
    assert sorted(p.name for p in paths[0].iterdir()) == ["hypervolume.png", "importance.png", "index.html", "pareto.csv", "pareto.png"]
    rows = list(csv.DictReader((tmp_path / "out" / "report" / "pareto.csv").open()))
    assert list(rows[0]) == CSV_FIELDS
    assert [int(r["number"]) for r in rows] == FRONT + [4, 2]
    assert [r["on_front"] for r in rows] == ["True"] * 4 + ["False"] * 2
    assert rows[2]["test_accuracy"] == "0.93" and rows[2]["onnx_sha256"] == sha256(stored[1][0])


def test_write_outputs_leaves_exactly_the_front_files_that_are_stored(tmp_path, stored):
    store, models = stored
    out = tmp_path / "out"
    (out / "pareto").mkdir(parents=True)
    (out / "pareto" / "trial-0099.onnx").write_bytes(b"left the front")
    (out / "pareto.tmp").mkdir()
    (out / "pareto.tmp" / "trial-0098.onnx").write_bytes(b"an interrupted earlier run")
    (out / "pareto.png").write_bytes(b"where an earlier version drew the front")
    write_outputs(report_with_models(models), out, store.get_model)
    # Trial 7 is on the front but its file is not stored: skipped, not an error. Trial 2 is off it.
    assert sorted(p.name for p in (out / "pareto").iterdir()) == ["trial-0000.onnx", "trial-0001.onnx", "trial-0003.onnx"]
    for number in (0, 1, 3):
        written = (out / "pareto" / f"trial-{number:04d}.onnx").read_bytes()
        assert written == models[number]
        meta = make_session(written, threads=1).get_modelmeta().custom_metadata_map
        assert meta["trial"] == str(number)
    assert sorted(p.name for p in out.iterdir()) == ["pareto", "report"]  # nothing temporary or stale left


def test_the_plot_is_a_png_of_both_views(tmp_path, stored, figures):
    trials = sample_trials(t0={attrs.PRUNE_RATIO: 0.3, attrs.QUANT: "int8-static", attrs.LATENCY: {"p10_ms": 1.5}},
                           t1={attrs.QUANT: "fp16"})
    report = build_report("s", "digits", "host", trials, {0: 0.93})
    draw(report, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(tmp_path / "pareto.png").shape[:2] == (624, 1560)  # 13 x 5.2 in at 120 dpi
    assert not list(tmp_path.glob("*.tmp.png"))
    (fig,) = figures
    latency_ax, size_ax = fig.axes
    front = report.front
    for ax, key in ((latency_ax, "latency_ms"), (size_ax, "size_kb")):
        drawn = {c.get_label(): [tuple(xy) for xy in c.get_offsets()] for c in ax.collections}
        assert drawn["front, pruned"] == [(getattr(p, key), p.accuracy) for p in front if p.number == 0]
        assert drawn["front, unpruned"] == [(getattr(p, key), p.accuracy) for p in front if p.number != 0]
        assert len(drawn["other trials (pink edge: over a limit)"]) == 2  # trials 2 and 4, off the front
    unpruned = next(c for c in latency_ax.collections if c.get_label() == "front, unpruned")
    assert [tuple(c[:3]) for c in unpruned.get_facecolors()] == [
        matplotlib.colors.to_rgb(QUANT_COLOURS[q]) if q else matplotlib.colors.to_rgb("lightgrey")
        for q in ("", "fp16", "")]  # trials 3, 1, 7: colour by quantization mode
    (bars,) = [c for c in latency_ax.containers if c.get_label() == "_p10-p90"]
    (segments,) = bars.lines[2]
    assert [tuple(seg[:, 0]) for seg in segments.get_segments()] == [(1.5, 2.5)]  # trial 0: p10 1.5, p90 1.25 x 2.0 ms
    assert {"int8-static", "fp16"} <= set(latency_ax.get_legend().get_texts()[i].get_text()
                                          for i in range(len(latency_ax.get_legend().get_texts())))
    # The staircase's corners are labelled with their trial numbers.
    assert [t.get_text() for t in latency_ax.texts] == ["3", "1", "0"]  # 7 is slower and less accurate than 0
    assert [t.get_text() for t in size_ax.texts] == ["7", "1", "0"]
    assert fig.get_suptitle() == f"s: digits, target host\nlatency measured on {report.measured_on}"
    assert latency_ax.get_xlabel() == "latency p50 (ms, batch 1)"
    assert size_ax.get_xlabel() == "ONNX file size (KB)"


def test_an_emulated_latency_is_labelled_on_the_axis(tmp_path, stored, figures):
    report = dataclasses.replace(report_with_models(stored[1]), emulated=True)
    draw(report, tmp_path / "pareto.png")
    assert figures[0].axes[0].get_xlabel() == "latency p50 (ms, batch 1) [EMULATED]"


def test_the_hypervolume_plot_draws_the_curve_it_is_given(tmp_path, figures):
    draw_hypervolume(CURVE, tmp_path / "hv.png")
    (fig,) = figures
    (line,) = fig.axes[0].lines
    assert list(line.get_xdata()) == [1, 2, 4] and list(line.get_ydata()) == [0.2, 0.5, 0.6]


def test_a_compared_study_s_front_is_drawn_in_its_own_colour_and_other_data_is_labelled(tmp_path, figures):
    from search.report.front import compared_study

    other = dataclasses.replace(compared_study(build_report("s", "digits", "host", sample_trials(), {})),
                                name="other", dataset="cifar10", target="arm")
    report = dataclasses.replace(build_report("s", "digits", "host", sample_trials(), {}), compared=(other,))
    draw(report, tmp_path / "pareto.png")
    latency_ax = figures[0].axes[0]
    drawn = {c.get_label(): c for c in latency_ax.collections}
    points = drawn["front of other (target arm) [other data: cifar10]"]
    assert [tuple(xy) for xy in points.get_offsets()] == [(p.latency_ms, p.accuracy) for p in other.front]


def test_the_teacher_is_a_black_star_on_both_views(tmp_path, figures):
    from search.report.front import TeacherPoint

    teacher = TeacherPoint(0.99, 1.5, 1.75, 44.0, "here")
    draw(dataclasses.replace(build_report("s", "digits", "host", sample_trials(), {}), teacher=teacher), tmp_path / "p.png")
    latency_ax, size_ax = figures[0].axes
    for ax, x in ((latency_ax, 1.5), (size_ax, 44.0)):
        (star,) = [c for c in ax.collections if c.get_label() == "teacher: ResNet-18, fp32"]
        assert [tuple(xy) for xy in star.get_offsets()] == [(x, 0.99)]
