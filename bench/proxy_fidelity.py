"""How well other proxy settings would have ranked a study's finalized candidates.

    python bench/proxy_fidelity.py --study cifar10 [--cache-dir DIR] \
        --setting NAME:KEY=V,... [--setting ...]

Finalized trials (``nas.py finalize``) know their full-budget accuracy. This reruns each
one's proxy (train, its own pruning and fine-tune, export, quantization, validation
accuracy of the deployed file, as a trial does) under every ``--setting``, and gives
Kendall's tau between that proxy accuracy and the finalized one, beside the study's own
(its trials' stored accuracy). Keys: ``train_subset``, ``epochs``, ``finetune_epochs``,
``batch_size``, ``lr``, ``alpha``, ``temperature`` (any other study setting is the
study's). Latency is not measured: the proxy setting does not change a file's shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import optuna
import torch
from common import ROOT, log, parse_setting, print_json, print_table
from scipy.stats import kendalltau

from search.data import balanced_subset, load_dataset
from search.report.front import finalized_points
from search.stages.evaluate import onnx_accuracy
from search.stages.teacher import load_or_train_teacher, teacher_logits
from search.stages.train import fit
from search.study.config import study_dir
from search.study.objective import (
    calibration_samples,
    export_fp32,
    file_metadata,
    prune_and_finetune,
    quantize_for,
    train_config,
    trial_seed,
)
from search.study.storage import open_storage, study_config
from search.targets import get_target
from spaces import build_model, parse_arch, parse_compression

KEYS = {"train_subset": int, "epochs": float, "finetune_epochs": float, "batch_size": int, "lr": float,
        "alpha": float, "temperature": float}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", help="default: the study's own SQLite file")
    parser.add_argument("--cache-dir", default=str(ROOT / "studies" / ".cache"))
    parser.add_argument("--setting", action="append", default=[], help="NAME:KEY=V,... (repeatable)")
    args = parser.parse_args()

    url = args.storage or f"sqlite:///{ROOT / study_dir(args.study) / 'study.db'}"
    study = optuna.load_study(study_name=args.study, storage=open_storage(url))
    points = finalized_points(study.user_attrs)
    if len(points) < 2:
        raise SystemExit(f"study {args.study} has {len(points)} finalized trials; tau needs at least 2")
    base = study_config(study)
    data = load_dataset(base.dataset, cache_dir=args.cache_dir, resolution=base.resolution)
    teacher = load_or_train_teacher(data, args.cache_dir)
    target = get_target(base.target)
    example = data.val.batch(slice(0, 1))
    final = [p.accuracy for p in points]

    rows = [["study's own", f"{base.train_subset}x{base.epochs:g}", f"{base.finetune_epochs:g}", base.batch_size,
             " ".join(f"{p.proxy_accuracy:.3f}" for p in points), "-", f"{kendalltau([p.proxy_accuracy for p in points], final).statistic:.3f}"]]
    results = {}
    for name, overrides in (parse_setting(s, KEYS) for s in args.setting):
        cfg = dataclasses.replace(base, **overrides)
        images = data.train.take(balanced_subset(data.train.y, cfg.train_subset, cfg.seed))
        logits = teacher_logits(teacher, images)
        calibration = calibration_samples(images, cfg.calib_samples, cfg.seed)
        accs, seconds = [], []
        for p in points:
            trial = study.trials[p.number]
            comp = parse_compression(trial.user_attrs["compression"])
            torch.manual_seed(trial_seed(cfg, p.number))
            model = build_model(parse_arch(trial.user_attrs["arch_sampled"]))
            start = time.perf_counter()
            fit(model, images, train_config(cfg, cfg.epochs, p.number), logits)
            prune_and_finetune(model, comp, cfg, images, logits, cfg.finetune_epochs, p.number, example)
            seconds.append(time.perf_counter() - start)
            deployed = quantize_for(export_fp32(model, example, file_metadata(data)), comp, calibration, target)
            accs.append(onnx_accuracy(deployed, data.val))
            log(f"{name}, trial {p.number}: proxy {accs[-1]:.4f} (study's {p.proxy_accuracy:.4f}, final {p.accuracy:.4f})")
        tau = float(kendalltau(accs, final).statistic)
        results[name] = {"overrides": overrides, "proxy": accs, "seconds": seconds, "tau": tau}
        rows.append([name, f"{cfg.train_subset}x{cfg.epochs:g}", f"{cfg.finetune_epochs:g}", cfg.batch_size,
                     " ".join(f"{a:.3f}" for a in accs), f"{sum(seconds) / len(seconds):.0f}", f"{tau:.3f}"])
    print_table(
        f"Study {args.study}: proxy settings against {len(points)} finalized trials "
        f"({', '.join(str(p.number) for p in points)}; final val {' '.join(f'{a:.3f}' for a in final)})",
        ["setting", "images x epochs", "fine-tune epochs", "batch", "proxy val per trial", "s/trial (train+prune)",
         "Kendall tau vs final"],
        rows,
    )
    print_json({"trials": [p.number for p in points], "final": final,
                "study_proxy": [p.proxy_accuracy for p in points], "settings": results})


if __name__ == "__main__":
    main()
