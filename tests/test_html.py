"""The report page (search/report/html.py): self-contained, and listing what the report holds."""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser

from search.report.html import render
from search.study import attrs
from test_front import report_of, sample_trials

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags, self.rows, self._row = [], [], [], None

    def handle_starttag(self, tag, attributes):
        self.tags.append(tag)
        self.refs += [v for k, v in attributes if k in ("src", "href", "action", "data", "poster") and v]
        if tag == "tr":
            self._row = []
        elif tag == "td" and self._row is not None:
            self._row.append("")

    def handle_data(self, data):
        if self._row:
            self._row[-1] += data

    def handle_endtag(self, tag):
        if tag == "tr" and self._row:
            self.rows.append(self._row)
            self._row = None


def parse(page: str) -> Collect:
    c = Collect()
    c.feed(page)
    return c


def test_the_page_references_nothing_outside_itself():
    report = report_of(sample_trials(t1={attrs.BASELINE: "mnv3-small-0.5-fp32"}))
    page = render(dataclasses.replace(report, hypervolume_curve=((1, 0.2), (2, 0.4))), {"plot": PNG, "other": PNG})
    parsed = parse(page)
    assert parsed.refs and all(ref.startswith("data:image/png;base64,") for ref in parsed.refs)
    assert "link" not in parsed.tags and "@import" not in page and "url(" not in page
    assert "http://" not in page and "https://" not in page


def test_the_tables_list_the_front_fastest_first_and_each_baseline_with_what_dominates_it():
    report = report_of(sample_trials(t2={attrs.BASELINE: "mnv3-small-0.5-fp32"}), test_accuracy={0: 0.93})
    rows = parse(render(report, {})).rows
    front_rows = [r for r in rows if len(r) > 6]
    assert [int(r[0]) for r in front_rows] == [3, 1, 0, 7]
    assert front_rows[2][10] == "0.9300" and front_rows[0][10] == "not measured here"  # test accuracy where measured
    (baseline,) = [r for r in rows if r[0] == "mnv3-small-0.5-fp32"]
    assert baseline[1] == "2" and baseline[-1] == "trial 1"


def test_a_running_study_an_emulated_board_and_untested_trials_are_said_so():
    report = report_of(sample_trials())
    page = render(report, {})
    assert "still running" not in page and "EMULATED" not in page and '<p class="warn">test' not in page
    page = render(dataclasses.replace(report, n_running=2, emulated=True, test_note="test accuracy <why>"), {})
    assert "still running (2 trials running or waiting)" in page and "EMULATED" in page
    assert '<p class="warn">test accuracy &lt;why&gt;</p>' in page


def test_the_page_names_the_model_to_ship_within_the_study_s_budget():
    report = dataclasses.replace(report_of(sample_trials()), max_latency_ms=1.2)
    assert "best within 1.2 ms: trial 1 " in render(report, {})


def test_compared_studies_share_one_table_each_row_with_its_study_and_other_data_labelled():
    from search.report.front import compared_study

    other = compared_study(report_of(sample_trials()))
    other = dataclasses.replace(other, name="cifar-arm", dataset="cifar10", target="arm")
    report = dataclasses.replace(report_of(sample_trials()), compared=(other,))
    rows = [r for r in parse(render(report, {})).rows if r[0] in ("s", "cifar-arm")]
    assert [(r[0], int(r[3])) for r in rows] == [("s", 3), ("s", 1), ("s", 0), ("s", 7)] + [
        ("cifar-arm", n) for n in (3, 1, 0, 7)]
    assert {r[1] for r in rows if r[0] == "cifar-arm"} == {"cifar10 (other data)"}
    assert {r[1] for r in rows if r[0] == "s"} == {"digits"}


def test_the_teacher_is_shown_beside_the_front():
    from search.report.front import TeacherPoint

    teacher = TeacherPoint(0.99, 1.5, 1.75, 44000.0, "here", retimed_p50_ms=1.4)
    page = render(dataclasses.replace(report_of(sample_trials()), teacher=teacher), {})
    assert "validation accuracy 0.9900, p50 1.500 ms (re-timed 1.400 ms), 44000.0 KB" in page


def test_the_study_s_teacher_accuracy_is_shown_where_the_teacher_was_not_measured():
    page = render(dataclasses.replace(report_of(sample_trials()), teacher_accuracy=0.9477), {})
    assert "Teacher (ResNet-18, the study's): validation accuracy 0.9477; not exported and measured here." in page
    assert "Teacher (" not in render(report_of(sample_trials()), {})
