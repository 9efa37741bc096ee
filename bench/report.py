"""How long ``nas.py report`` takes on a study, and where the time goes.

    python bench/report.py [--study digits-host] [--storage URL] [-- MORE REPORT ARGS]

Runs ``nas.py report --study S ...`` in this process, as the command runs it, with a
stopwatch around each part: start-up (the imports the command needs), opening the study
with its data and teacher, the front's test accuracies, the teacher (export, accuracy,
measurement), re-timing the front, hypervolume and importance, the plots, the HTML page;
"other" is the rest (the CSV, the front's ONNX files, the terminal table). It writes the
study's report as the command does. The default study is the one ``make search`` leaves;
issue 12's goal is a report of its 50 trials in at most 60 s, re-timing included. Run it
from the repository root, on a quiet machine: the figures are one run's.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
from collections import defaultdict  # noqa: E402

from common import ROOT, print_json, print_table  # noqa: E402

import nas  # noqa: E402
import search.cli  # noqa: E402, F401  (imported by the command before it reports)
import search.report.draw as draw  # noqa: E402
import search.runner as runner  # noqa: E402

GOAL_SECONDS = 60.0
SPENT: defaultdict[str, float] = defaultdict(float)

# (module, function, part): each call of the function counts towards its part.
TIMED = [
    (runner, "front_test_accuracies", "test accuracies"),
    (runner, "teacher_point", "teacher"),
    (runner, "retime_front", "re-timing"),
    (runner, "hypervolume_by_trial", "hypervolume and importance"),
    (runner, "param_importances", "hypervolume and importance"),
    (draw, "draw", "plots"),
    (draw, "draw_hypervolume", "plots"),
    (draw, "draw_importances", "plots"),
    (draw, "render", "HTML"),
]


def stopwatch(module, name: str, part: str) -> None:
    real = getattr(module, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            SPENT[part] += time.perf_counter() - start

    setattr(module, name, timed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="digits-host", help="default: the study make search leaves")
    parser.add_argument("--storage", metavar="URL", help="as for nas.py report")
    parser.add_argument("more", nargs="*", help="further nas.py report arguments, after --")
    args = parser.parse_args()
    os.chdir(ROOT)  # where studies/<study> is, as for make search
    started = time.perf_counter()
    SPENT["start-up (imports)"] = started - START
    for module, name, part in TIMED:
        stopwatch(module, name, part)
    real_finish = runner.finish

    def finish(*a, **k):  # everything before it: the study, its data and teacher opened
        SPENT["open study, data and teacher"] = time.perf_counter() - started
        return real_finish(*a, **k)

    runner.finish = finish
    command = ["report", "--study", args.study, *(["--storage", args.storage] if args.storage else []), *args.more]
    with contextlib.redirect_stdout(io.StringIO()):  # the command's table: not this benchmark's
        code = nas.main(command)
    total = time.perf_counter() - START
    if code != 0:
        return code
    SPENT["other"] = total - sum(SPENT.values())
    rows = [[part, f"{seconds:.2f}", f"{100 * seconds / total:.0f}%"] for part, seconds in SPENT.items()]
    rows.append(["total", f"{total:.2f}", "100%"])
    print_table(f"nas.py report --study {args.study}: seconds by part, one run", ["part", "seconds", "share"], rows)
    print(f"goal: at most {GOAL_SECONDS:.0f} s: {'met' if total <= GOAL_SECONDS else 'not met'}")
    print_json({"study": args.study, "total_s": round(total, 3), **{f"{k}_s": round(v, 3) for k, v in SPENT.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
