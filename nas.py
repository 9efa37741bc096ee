#!/usr/bin/env python3
"""Hardware-aware architecture search and compression for edge devices.

    python nas.py --budget 50 --target host          search (the default command)
    python nas.py report --study digits-host         rebuild a study's plot, CSV and files
    python nas.py status                             studies, trial counts, fronts
    python nas.py finalize --study digits-host --front   the front trained in full; proxy vs final
    python nas.py export --study digits-host --trial 12 --out model/ [--final]
    python nas.py teacher --dataset cifar10 --data-dir DATA [--weights resnet18.pt] [--study NAME]
    python nas.py agent --port 8470 --token SECRET   on the board: measure for the search

This file parses and dispatches; the work is in search/ and spaces/.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields

from search.study.config import StudyConfig, option_name

COMMANDS = ("search", "report", "status", "export", "finalize", "teacher", "agent")
EXIT_USAGE = 2


def _add_study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", metavar="NAME", help="study name (default: <dataset>-<target>); outputs go to studies/NAME/")
    p.add_argument(
        "--storage",
        metavar="URL",
        help="SQLAlchemy URL of the study database (default: sqlite:///studies/NAME/study.db); "
        "share one study between machines with postgresql+psycopg://user@host/db",
    )


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", metavar="DIR", help="where torchvision finds cifar10 / mnist / fashion-mnist (never downloads)")
    p.add_argument("--cache-dir", metavar="DIR", default="studies/.cache", help="teachers and decoded images (default: %(default)s)")
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out images that cannot be decoded, and list them (default: stop at the first, naming it)",
    )


def _add_machine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", metavar="HOST:PORT[,...]",
        help="measure latency on the board agent at HOST:PORT (see 'nas.py agent'); several, separated by commas, "
        "are a farm of boards of one kind: each measurement goes to a free one",
    )
    p.add_argument("--token", metavar="SECRET", default=os.environ.get("EDGENAS_TOKEN"), help="the agent's token (default: $EDGENAS_TOKEN)")
    p.add_argument(
        "--train-device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where this worker trains: auto takes a CUDA GPU when there is one (mixed precision, data on the GPU); "
        "latency is always measured on the target (default: %(default)s)",
    )


def _trial_numbers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of trial numbers, e.g. 3,7,12") from None


def _add_config_args(p: argparse.ArgumentParser) -> None:
    """One option per study setting; its type, default and help come from StudyConfig.
    Options not given stay None, so that a joined study's stored settings apply."""
    for f in fields(StudyConfig):
        meta = f.metadata
        if meta.get("recorded"):  # derived when the study is created, not set
            continue
        if isinstance(f.default, bool):  # --baselines / --no-baselines
            on_off = "on" if f.default else "off"
            p.add_argument(option_name(f.name), action=argparse.BooleanOptionalAction, help=f"{meta['help']} (default: {on_off})")
            continue
        kind = float if f.default is None else type(f.default)
        shown = "none" if f.default in (None, "") else f"{f.default:g}" if kind is float else f.default
        p.add_argument(
            option_name(f.name),
            type=kind,
            metavar=meta["metavar"],
            choices=meta["choices"],
            help=f"{meta['help']} (default: {shown})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas.py",
        description=__doc__.rsplit("\n\n", 1)[0],  # the usage examples, without the note on this file
        epilog="Run 'python nas.py COMMAND --help' for a command's options. Without a command, 'search' runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser(
        "search",
        help="run or resume a study (default)",
        description="Sample MobileNetV3-style networks and how to compress them, train each briefly with "
        "distillation from a teacher, export to ONNX, and measure accuracy, latency and size of the deployed "
        "file. Ends with the Pareto front: a table, the report studies/STUDY/report/index.html (plots and pareto.csv beside it) and the front's ONNX files in studies/STUDY/pareto/. "
        "Rerunning the same command resumes: --budget counts complete trials of the study, earlier runs included.",
    )
    s.add_argument("--budget", type=int, default=50, metavar="N", help="complete trials the study should end with (default: %(default)s)")
    _add_machine_args(s)
    _add_study_args(s)
    _add_data_args(s)
    _add_config_args(s)
    s.add_argument("-v", "--verbose", action="store_true", help="log what each stage does")

    r = sub.add_parser(
        "report",
        help="rebuild a study's report, table, plots, CSV and front files",
        description="Rebuild studies/STUDY/report/index.html (one self-contained page: plots, the front's table, "
        "baselines and the model to ship), pareto.csv beside it and the front's ONNX files. Works on a running "
        "study too, marked as such, and from the study's database alone on a machine without its data set or "
        "teacher (test accuracies not yet measured are then shown as 'not measured here').",
    )
    r.add_argument("--study", metavar="NAME", required=True)
    r.add_argument("--storage", metavar="URL", help="as for search")
    r.add_argument("--max-latency-ms", type=float, metavar="MS",
                   help="choose the model to ship within this latency (default: the study's --max-latency-ms, if any)")
    r.add_argument("--max-size-kb", type=float, metavar="KB",
                   help="choose the model to ship within this file size (default: the study's --max-size-kb, if any)")
    r.add_argument("--compare", nargs="+", default=[], metavar="OTHER",
                   help="other studies (same --storage, or their own studies/OTHER/study.db) whose fronts go on the "
                   "same plots and in one table, e.g. the same data on another target, or another sampler")
    r.add_argument("--device", metavar="HOST:PORT", help="the board agent to re-time the front on, for a board target")
    r.add_argument("--token", metavar="SECRET", default=os.environ.get("EDGENAS_TOKEN"), help="the agent's token (default: $EDGENAS_TOKEN)")
    _add_data_args(r)

    st = sub.add_parser("status", help="list studies with their trial counts; per worker, its trials and when it was last seen; per board, what it measured")
    _add_study_args(st)
    st.add_argument("--token", metavar="SECRET", default=os.environ.get("EDGENAS_TOKEN"),
                    help="the board agents' token, to ask each how many requests it has queued (default: $EDGENAS_TOKEN)")

    e = sub.add_parser(
        "export",
        help="write a trial's deployed ONNX file with its model card",
        description="Write a trial's deployed ONNX file into a folder, with its model card: card.json and "
        "README.md (input shape and preprocessing, class names, accuracy, latency and where it was measured) "
        "and predict.py, which runs the file on one image. Reads only the study's database.",
    )
    e.add_argument("--study", metavar="NAME", required=True)
    e.add_argument("--storage", metavar="URL", help="as for search")
    e.add_argument("--trial", type=int, required=True, metavar="N")
    e.add_argument("--out", metavar="DIR", help="folder to write (default: STUDY-trial-N, STUDY-trial-N-final with --final)")
    e.add_argument("--force", action="store_true", help="replace what --out holds")
    e.add_argument("--final", action="store_true", help="the file 'nas.py finalize' made of the trial's candidate")

    f = sub.add_parser(
        "finalize",
        help="train chosen candidates at full budget, ship them, and measure how well the proxy ranked them",
        description="Train the chosen trials' candidates again on the whole training split (distilled from the "
        "study's teacher, with the study's settings), prune, export, quantize and measure them as the search did, "
        "and store each result in the study. Ends with a table of proxy vs final accuracy and their Kendall tau. "
        "Rerunning resumes: finalized trials are skipped, a killed training continues from its last epoch.",
    )
    f.add_argument("--study", metavar="NAME", required=True)
    f.add_argument("--storage", metavar="URL", help="as for search")
    chosen = f.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--front", action="store_true", help="the study's Pareto front")
    chosen.add_argument("--trials", type=_trial_numbers, metavar="N,N,...", help="these complete trials, e.g. 3,7,12")
    f.add_argument(
        "--epochs",
        type=int,
        metavar="E",
        help="training epochs on the whole training split (default: the fewest giving 5x the proxy's epochs x images)",
    )
    _add_machine_args(f)
    _add_data_args(f)

    t = sub.add_parser(
        "teacher",
        help="train a data set's teacher, or install one from a state dict; with --study, as that study's",
        description="Without --study: train this machine's teacher for a data set (kept under --cache-dir), or "
        "install a ResNet-18 state dict as it; a new study on that data takes it as its own. With --study: the "
        "same, into the study's database, where every worker of the study loads it from (the study's data set "
        "and resolution apply). A teacher no better than 1.5x chance on the validation split is refused.",
    )
    t.add_argument("--dataset", metavar="NAME", help="as for search (default: digits, or the --study's)")
    t.add_argument("--resolution", type=int, metavar="N", help="as for search (default: from the data, or the --study's)")
    t.add_argument("--study", metavar="NAME", help="make or install the teacher of this study, in its database")
    t.add_argument("--storage", metavar="URL", help="as for search: the --study's database (default: sqlite:///studies/NAME/study.db)")
    _add_data_args(t)
    t.add_argument("--weights", metavar="PATH", help="a ResNet-18 state dict to install instead of training")
    t.add_argument("--epochs", type=int, metavar="N", help="training epochs (default: by data set size)")

    # The agent parses its own options (search/board/agent.py): a board has no more than that.
    sub.add_parser("agent", add_help=False, help="serve latency measurements on a board (needs only onnxruntime and numpy)")
    return parser


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"nas.py: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agent"]:  # no torch on a board: import nothing else
        from search.board.agent import main as agent_main

        return agent_main(argv[1:], prog="nas.py agent")
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "search")
    args = build_parser().parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "verbose", False):  # ours only: ONNX Runtime's quantizer logs every tensor at INFO
        logging.getLogger("search").setLevel(logging.INFO)
    from search import cli

    try:
        return getattr(cli, f"cmd_{args.command}")(args)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to continue the study", file=sys.stderr)
        return 130
    except cli.USAGE_ERRORS as e:
        return _fail(str(e))
    except cli.RUN_ERRORS as e:
        return _fail(str(e), code=1)


if __name__ == "__main__":
    sys.exit(main())
