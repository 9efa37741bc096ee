#!/usr/bin/env python3
"""Hardware-aware architecture search and compression for edge devices.

    python nas.py --budget 50 --target host          search (the default command)
    python nas.py report --study digits-host         rebuild a study's plot, CSV and files
    python nas.py status                             studies, trial counts, fronts
    python nas.py export --study digits-host --trial 12 --out model.onnx
    python nas.py teacher --dataset cifar10 --data-dir DATA [--weights resnet18.pt]
    python nas.py agent --port 8470 --token SECRET   on the board: measure for the search

This file parses and dispatches; the work is in search/ and spaces/.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

COMMANDS = ("search", "report", "status", "export", "teacher", "agent")
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
        "file. Ends with the Pareto front: a table, studies/STUDY/pareto.{csv,png} and the front's ONNX files. "
        "Rerunning the same command resumes: --budget counts complete trials of the study, earlier runs included.",
    )
    s.add_argument("--budget", type=int, default=50, metavar="N", help="complete trials the study should end with (default: %(default)s)")
    s.add_argument("--target", metavar="NAME", help="hardware profile: host (default), arm, x86, cuda, or one in studies/targets.toml")
    s.add_argument("--device", metavar="HOST:PORT", help="measure latency on the board agent at HOST:PORT (see 'nas.py agent')")
    s.add_argument("--token", metavar="SECRET", default=os.environ.get("EDGENAS_TOKEN"), help="the agent's token (default: $EDGENAS_TOKEN)")
    _add_study_args(s)
    s.add_argument(
        "--dataset",
        metavar="NAME",
        help="digits (default; embedded, no download), cifar10, mnist, fashion-mnist (with --data-dir), "
        "or imagefolder:PATH (a folder or zip with train/ and test/ or val/ of class folders)",
    )
    _add_data_args(s)
    s.add_argument("--space", metavar="NAME", help="search space: auto (default: compact up to 16 px, mbv3 above), compact, mbv3, tiny")
    s.add_argument("--epochs", type=float, metavar="N", help="proxy training epochs per candidate (default: 8)")
    s.add_argument("--finetune-epochs", type=float, metavar="N", help="distillation fine-tune after pruning (default: 4)")
    s.add_argument("--prune-steps", type=int, metavar="N", help="iterative pruning steps, fine-tuning between them (default: 1)")
    s.add_argument("--alpha", type=float, metavar="A", help="distillation weight: (1-A)*CE + A*T^2*KL (default: 0.3)")
    s.add_argument("--temperature", type=float, metavar="T", help="distillation temperature (default: 4)")
    s.add_argument("--teacher-epochs", type=int, metavar="N", help="teacher training epochs (default: by data set size)")
    s.add_argument("--calib-samples", type=int, metavar="N", help="int8-static calibration samples (default: 256)")
    s.add_argument("--sampler", choices=("nsga2", "tpe", "random"), help="Optuna sampler (default: nsga2)")
    s.add_argument("--population", type=int, metavar="N", help="NSGA-II generation size (default: 16)")
    s.add_argument("--seed", type=int, metavar="N", help="seed of the sampler and of training (default: 0)")
    s.add_argument("--max-latency-ms", type=float, metavar="MS", help="reject candidates slower than this, before training")
    s.add_argument("--max-size-kb", type=float, metavar="KB", help="reject candidates whose file is larger, before training")
    s.add_argument("-v", "--verbose", action="store_true", help="log what each stage does")

    r = sub.add_parser("report", help="rebuild a study's table, plot, CSV and front files")
    r.add_argument("--study", metavar="NAME", required=True)
    r.add_argument("--storage", metavar="URL", help="as for search")
    _add_data_args(r)

    st = sub.add_parser("status", help="list studies with their trial counts")
    _add_study_args(st)

    e = sub.add_parser("export", help="write a trial's deployed ONNX file")
    e.add_argument("--study", metavar="NAME", required=True)
    e.add_argument("--storage", metavar="URL", help="as for search")
    e.add_argument("--trial", type=int, required=True, metavar="N")
    e.add_argument("--out", metavar="PATH", help="output file (default: trial-N.onnx)")

    t = sub.add_parser("teacher", help="train a data set's teacher, or install one from a state dict")
    t.add_argument("--dataset", default="digits", metavar="NAME", help="as for search (default: %(default)s)")
    _add_data_args(t)
    t.add_argument("--weights", metavar="PATH", help="a ResNet-18 state dict to install instead of training")
    t.add_argument("--epochs", type=int, metavar="N", help="training epochs (default: by data set size)")

    a = sub.add_parser(
        "agent",
        help="serve latency measurements on a board (needs only onnxruntime and numpy)",
        description="Run on the target board. Receives ONNX files from search workers, measures one at a time, "
        "replies with latency statistics and what it ran on. Install on the board with: "
        "pip install onnxruntime numpy; then copy nas.py and search/ there.",
    )
    a.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for the network)")
    a.add_argument("--port", type=int, default=8470, help="(default: %(default)s)")
    a.add_argument("--token", default=os.environ.get("EDGENAS_TOKEN"), help="required secret (default: $EDGENAS_TOKEN)")
    a.add_argument("--max-model-mb", type=float, default=64.0, help="refuse larger models (default: %(default)s)")
    a.add_argument("--time-limit-s", type=float, default=300.0, help="stop a measurement after this long (default: %(default)s)")
    return parser


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"nas.py: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "search")
    args = build_parser().parse_args(argv)

    if args.command == "agent":  # no torch on a board: import nothing else
        from search.agent import serve

        if not args.token:
            return _fail("the agent needs --token SECRET (or $EDGENAS_TOKEN): it runs what it is sent")
        return serve(args.host, args.port, args.token, int(args.max_model_mb * 1024 * 1024), args.time_limit_s)

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
