"""A study's finalized models against its teacher, measured side by side (issue 10).

    python bench/final_vs_teacher.py --study cifar10 [--cache-dir DIR] [--rounds 5]

Reads the study's finalized trials (``nas.py finalize``) and their deployed ONNX files
from the study's database, exports the study's teacher to fp32 ONNX, then times every
file in interleaved rounds on this machine (the median over rounds), and scores each on
the test split with ONNX Runtime. Ratios are to the teacher, from this one run.
"""

from __future__ import annotations

import argparse
import statistics

import optuna
from common import ROOT, log, print_json, print_table

from search.board.timing import TimingPlan, cpu_model, measure_latency
from search.data import load_dataset
from search.report.front import finalized_points, rank_agreement
from search.stages.evaluate import onnx_accuracy
from search.stages.export import export_onnx
from search.stages.teacher import load_or_train_teacher
from search.study import attrs
from search.study.config import study_dir
from search.study.storage import Store, open_storage, study_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", help="default: the study's own SQLite file")
    parser.add_argument("--cache-dir", default=str(ROOT / "studies" / ".cache"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    url = args.storage or f"sqlite:///{ROOT / study_dir(args.study) / 'study.db'}"
    study = optuna.load_study(study_name=args.study, storage=open_storage(url))
    points = finalized_points(study.user_attrs)
    if not points:
        raise SystemExit(f"study {args.study} has no finalized trials: run nas.py finalize --study {args.study} first")
    config = study_config(study)
    data = load_dataset(config.dataset, cache_dir=args.cache_dir, resolution=config.resolution)
    teacher = load_or_train_teacher(data, args.cache_dir)
    files = {"teacher": export_onnx(teacher.model.eval(), data.val.batch(slice(0, 1)))}
    store = Store(url)
    for p in points:
        files[f"trial {p.number}"] = store.get_model(study.user_attrs[attrs.FINALIZED_PREFIX + str(p.number)][attrs.ONNX_SHA256])
    store.close()

    plan = TimingPlan()
    samples = {name: [] for name in files}
    for r in range(args.rounds):
        log(f"latency round {r + 1} of {args.rounds}")
        for name, model in files.items():
            samples[name].append(measure_latency(model, args.threads, plan=plan).p50_ms)
    latency = {name: statistics.median(v) for name, v in samples.items()}
    log("test accuracy")
    test = {name: onnx_accuracy(model, data.test) for name, model in files.items()}
    size = {name: len(model) / 1024 for name, model in files.items()}
    params = {"teacher": sum(p.numel() for p in teacher.model.parameters())}
    for p in points:
        params[f"trial {p.number}"] = study.user_attrs[attrs.FINALIZED_PREFIX + str(p.number)][attrs.PARAMS]

    by_name = {f"trial {p.number}": p for p in points}
    rows = []
    for name in files:
        p = by_name.get(name)
        rows.append([
            name, study.user_attrs[attrs.FINALIZED_PREFIX + str(p.number)][attrs.COMPRESSION] if p else "fp32",
            f"{p.proxy_accuracy:.4f}" if p else "-", f"{p.accuracy:.4f}" if p else f"{teacher.val_accuracy:.4f}",
            f"{test[name]:.4f}", f"{test[name] / test['teacher']:.3f}", f"{params[name]:,}", f"{size[name]:.1f}",
            f"{size[name] / size['teacher']:.4f}", f"{latency[name]:.3f}", f"{latency[name] / latency['teacher']:.3f}",
        ])
    agreement = rank_agreement(points)
    print_table(
        f"Study {args.study}: finalized trials ({points[0].epochs} epochs) against the teacher; {cpu_model()}, "
        f"{args.threads} threads, median of {args.rounds} interleaved rounds; Kendall tau proxy vs final "
        f"validation accuracy {agreement.tau:.3f} (p {agreement.p_value:.3g}, {len(points)} trials)",
        ["model", "compression", "proxy val", "final val", "test", "test / teacher", "params", "KB", "KB / teacher",
         "p50 ms", "p50 / teacher"],
        rows,
    )
    print_json({"cpu": cpu_model(), "tau": agreement.tau, "p_value": agreement.p_value, "latency_ms": latency,
                "test_accuracy": test, "size_kb": size, "params": params})


if __name__ == "__main__":
    main()
