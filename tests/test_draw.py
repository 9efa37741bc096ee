"""The front drawn and written (search/report/draw.py): pareto.csv, pareto.png and the front's
ONNX files, from a Report of real Optuna trials and models kept in a real Store."""

from __future__ import annotations

import csv
import dataclasses

import matplotlib.image
import pytest
import torch
from matplotlib.figure import Figure

from search.board.timing import make_session
from search.report.draw import draw, write_outputs
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


def test_write_outputs_writes_the_csv_of_every_complete_trial(tmp_path, stored):
    report = report_with_models(stored[1])
    paths = write_outputs(report, tmp_path / "out", stored[0].get_model)
    assert paths == [tmp_path / "out" / "pareto.csv", tmp_path / "out" / "pareto.png", tmp_path / "out" / "pareto"]
    rows = list(csv.DictReader((tmp_path / "out" / "pareto.csv").open()))
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
    write_outputs(report_with_models(models), out, store.get_model)
    # Trial 7 is on the front but its file is not stored: skipped, not an error. Trial 2 is off it.
    assert sorted(p.name for p in (out / "pareto").iterdir()) == ["trial-0000.onnx", "trial-0001.onnx", "trial-0003.onnx"]
    for number in (0, 1, 3):
        written = (out / "pareto" / f"trial-{number:04d}.onnx").read_bytes()
        assert written == models[number]
        meta = make_session(written, threads=1).get_modelmeta().custom_metadata_map
        assert meta["trial"] == str(number)
    assert sorted(p.name for p in out.iterdir()) == ["pareto", "pareto.csv", "pareto.png"]  # nothing temporary left


def test_the_plot_is_a_png_of_both_views(tmp_path, stored, figures):
    report = report_with_models(stored[1])
    draw(report, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(tmp_path / "pareto.png").shape[:2] == (624, 1560)  # 13 x 5.2 in at 120 dpi
    assert not list(tmp_path.glob("*.tmp.png"))
    (fig,) = figures
    latency_ax, size_ax = fig.axes
    front = report.front
    assert [tuple(xy) for xy in latency_ax.collections[1].get_offsets()] == [(p.latency_ms, p.accuracy) for p in front]
    assert [tuple(xy) for xy in size_ax.collections[1].get_offsets()] == [(p.size_kb, p.accuracy) for p in front]
    assert len(latency_ax.collections[0].get_offsets()) == 2  # trials 2 and 4, off the front
    assert "other trials (pink: over a limit)" in latency_ax.get_legend_handles_labels()[1]
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
