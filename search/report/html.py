"""The study's report as one self-contained page: ``studies/<study>/report/index.html``.

Images are embedded as data URIs and the styles and the table-sorting script are inline,
so the file opens offline in any browser and can be mailed or attached as it is. The page
is drawn from a :class:`~search.report.front.Report` and its plots alone.
"""

from __future__ import annotations

import base64
import html
from typing import Sequence

from .decision import decide, describe
from .front import NOT_MEASURED_HERE, Report, TrialPoint, baselines_are, dominated_by

ARCH_SHOWN = 48  # characters of the architecture string in the table; the rest on hover

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 2em; }
.meta { color: #555; } .warn { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 0.8em; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 12.5px; } th, td { padding: 3px 8px; border-bottom: 1px solid #e4e4e4; }
th { background: #f4f4f4; cursor: pointer; text-align: left; position: sticky; top: 0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } code { font-size: 11.5px; }
tr.baseline td { color: #1f5fa8; }
"""

# Click a header to sort by it; numbers sort as numbers ("-" last).
SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const asc = th.dataset.asc !== "1"; th.dataset.asc = asc ? "1" : "0";
  const key = r => { const t = r.cells[col].dataset.v ?? r.cells[col].textContent; const x = parseFloat(t);
                     return isNaN(x) ? t : x; };
  rows.sort((a, b) => { const x = key(a), y = key(b);
    if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1;
    return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); });
  rows.forEach(r => body.appendChild(r));
}));
// Say on the page how many of its images decoded: a headless browser's test reads it back.
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.dataset.imagesDecoded = images.filter(i => i.complete && i.naturalWidth > 0).length + "/" + images.length;
});
"""

COLUMNS = [
    "trial", "architecture", "params", "MACs", "KB", "p50 ms", "p90 ms", "p50 ms re-timed", "p90 ms re-timed",
    "val acc", "test acc",
    "board acc", "before quant", "prune", "quantization", "int8 types", "measured on",
]


def render(report: Report, images: dict[str, bytes]) -> str:
    """The page; ``images`` maps a caption to PNG bytes, embedded in that order."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(report.study)}: report</title><style>{STYLE}</style></head><body>",
        f"<h1>Study {esc(report.study)}</h1>",
        f'<p class="meta">data {esc(report.dataset)}, target {esc(report.target)}; '
        f"latency measured on {esc(report.measured_on)}" + (f"; {esc(report.retime_note)}" if report.retime_note else "")
        + "</p>",
        f"<p>{_counts(report)}</p>",
    ]
    if report.teacher is not None:
        t = report.teacher
        retimed = "" if t.retimed_p50_ms is None else f" (re-timed {t.retimed_p50_ms:.3f} ms)"
        parts.append(
            f"<p>Teacher (ResNet-18, fp32, exported and measured as the trials are): validation accuracy "
            f"{t.accuracy:.4f}, p50 {t.latency_ms:.3f} ms{retimed}, {t.size_kb:.1f} KB.</p>"
        )
    elif report.teacher_accuracy is not None:
        parts.append(
            f"<p>Teacher (ResNet-18, the study's): validation accuracy {report.teacher_accuracy:.4f}; "
            "not exported and measured here.</p>"
        )
    if report.test_note:
        parts.append(f'<p class="warn">{esc(report.test_note)}</p>')
    if report.n_running:
        parts.append(
            f'<p class="warn">This study is still running ({report.n_running} trials running or waiting): '
            "the page shows the trials complete when it was written.</p>"
        )
    if report.emulated:
        parts.append('<p class="warn">EMULATED: latencies come from an emulated board, not the target\'s own timing.</p>')
    parts.append("<h2>The model to ship</h2><ul>" + "".join(f"<li>{esc(line)}</li>" for line in describe(decide(report))) + "</ul>")
    for caption, png in images.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{esc(caption)}</h2><img alt=\"{esc(caption)}\" src=\"data:image/png;base64,{data}\">")
    parts.append(f"<h2>The front: {len(report.front)} trials, fastest first (click a column to sort)</h2>")
    parts.append(_table(report.front))
    if report.compared:
        parts.append(f"<h2>Compared with {len(report.compared)} other studies</h2>")
        parts.append(_compared(report))
    if report.baselines:
        parts.append(f"<h2>Baselines: {html.escape(baselines_are(report))}</h2>")
        parts.append(_baselines(report))
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


def _counts(report: Report) -> str:
    curve = report.hypervolume_curve
    text = (
        f"{len(report.points)} complete trials ({report.n_failed} failed, {report.n_rejected} rejected by a limit, "
        f"{report.n_stopped} stopped early as dominated); {len(report.front)} on the front"
    )
    if curve:
        text += f"; hypervolume {curve[-1][1]:.3f} after {curve[-1][0]} trials"
    return html.escape(text)


def _table(points: Sequence[TrialPoint]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    rows = "\n".join(_row(p) for p in points)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>\n{rows}\n</tbody></table>'


def _row(p: TrialPoint) -> str:
    arch = p.arch if len(p.arch) <= ARCH_SHOWN else p.arch[:ARCH_SHOWN] + "..."
    cells = [
        _num(p.number, str(p.number)),
        f'<td title="{html.escape(p.arch)}"><code>{html.escape(arch)}</code></td>',
        _num(p.params, f"{p.params:,}"),
        _num(p.macs, f"{p.macs:,}"),
        _num(p.size_kb, f"{p.size_kb:.1f}"),
        _num(p.latency_ms, f"{p.latency_ms:.3f}"),
        _num(p.latency_ms_p90, f"{p.latency_ms_p90:.3f}"),
        _maybe(p.retimed_p50_ms, "{:.3f}"),
        _maybe(p.retimed_p90_ms, "{:.3f}"),
        _num(p.accuracy, f"{p.accuracy:.4f}"),
        _maybe(p.test_accuracy, missing=NOT_MEASURED_HERE),
        _maybe(p.accuracy_on_target),
        _maybe(p.accuracy_before_quant),
        _maybe(p.prune_ratio, "{:g}"),
        f"<td>{html.escape(p.quant or p.compression)}</td>",
        f"<td>{html.escape(p.int8_types)}</td>",
        f"<td>{html.escape(p.measured_on)}</td>",
    ]
    return f'<tr class="{"baseline" if p.baseline else ""}">' + "".join(cells) + "</tr>"


def _num(value, text: str) -> str:
    return f'<td class="n" data-v="{value}">{html.escape(text)}</td>'


def _maybe(value, fmt: str = "{:.4f}", missing: str = "-") -> str:
    return f'<td class="n" data-v="">{html.escape(missing)}</td>' if value is None else _num(value, fmt.format(value))


def _baselines(report: Report) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("baseline", "trial", "val acc", "p50 ms", "KB", "dominated by"))
    rows = []
    for p in report.baselines:
        by = dominated_by(p, report.front)
        where = "on the front" if p.on_front else f"trial {by}" if by is not None else "not dominated"
        rows.append(
            f'<tr class="baseline"><td>{html.escape(p.baseline)}</td>{_num(p.number, str(p.number))}'
            f"{_num(p.accuracy, f'{p.accuracy:.4f}')}{_num(p.latency_ms, f'{p.latency_ms:.3f}')}"
            f"{_num(p.size_kb, f'{p.size_kb:.1f}')}<td>{where}</td></tr>"
        )
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(rows) + "\n</tbody></table>"


def _compared(report: Report) -> str:
    """One table of every study's front: this one first, each row with its study and provenance."""
    head = "".join(f"<th>{c}</th>" for c in ("study", "data", "target", "trial", "val acc", "test acc", "p50 ms", "KB",
                                             "compression", "measured on"))
    studies = [(report.study, report.dataset, report.target, report.front)]
    studies += [(c.name, c.dataset, c.target, c.front) for c in report.compared]
    rows = []
    for name, dataset, target, front in studies:
        data = html.escape(dataset) + ("" if dataset == report.dataset else " (other data)")
        for p in front:
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>{data}</td><td>{html.escape(target)}</td>{_num(p.number, str(p.number))}"
                f"{_num(p.accuracy, f'{p.accuracy:.4f}')}{_maybe(p.test_accuracy, missing=NOT_MEASURED_HERE)}"
                f"{_num(p.fair_latency_ms, f'{p.fair_latency_ms:.3f}')}{_num(p.size_kb, f'{p.size_kb:.1f}')}"
                f"<td>{html.escape(p.compression)}</td><td>{html.escape(p.measured_on)}</td></tr>"
            )
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(rows) + "\n</tbody></table>"
