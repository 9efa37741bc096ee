"""Bring your own model: a network one already has, before and after the tool compresses it.

    python bench/byo.py [mobilenet-v2] [--size 224] [--rounds 5]
    python bench/byo.py resnet18-cifar [--trials 30] [--train-subset 5000] [--finetune-epochs 1] [--try COMPRESSION ...]
    python bench/byo.py finetune [--train-subset 5000] [--val-images 2000]

mobilenet-v2 (the seed tutorial's comparison): torchvision's ``mobilenet_v2`` (1000
classes, weights=None: random weights, since nothing is downloaded; latency and size do
not depend on the values) at SIZExSIZE, batch 1, as PyTorch eager, as ONNX Runtime fp32,
and as the int8 file a study makes of it (static QDQ, per-channel weights, MinMax
calibration, the host target's int8 types: what ``original-int8-static`` is), timed in
interleaved rounds (every variant once per round, the median of each round's runs, then
the median over rounds), with the target's thread count.

resnet18-cifar: a compression study (``studies/cifar10-resnet18.toml``) of the shared
CIFAR-10 ResNet-18 (``../shared/models/resnet18-cifar10.pt``, 83.9% test) for TRIALS
complete trials (the two baselines among them), then its front against the fp32
original: size ratio, latency ratio (re-timed together) and test accuracy delta, and
whether a member meets issue 14's goal (>= 4x smaller, >= 2x faster, <= 1 point less
test accuracy). finetune: what one epoch of a trial's distillation fine-tune on
TRAIN_SUBSET images does to that ResNet-18, unpruned, with the last stage pruned by a
tenth and with every layer pruned by 0.3: validation accuracy (the first VAL_IMAGES)
with no fine-tune, and fine-tuned with AdamW at 0.001 and 0.0001 and SGD at 0.01.
``--try`` enqueues compressions an engineer would try by hand (for
example ``prune0-0-0-0.1_round8_int8-static/minmax/256``: a tenth of the last stage's
channels) right after the baselines, into a new study only; the table marks them, so
what the search found and what was handed to it stay apart. ResNet-18 fine-tunes at about 20 min per CIFAR-10 epoch on 2 CPU cores:
--train-subset and --finetune-epochs size a trial.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import statistics
import sys
import time

import numpy as np
import torch
import torchvision

from common import ROOT, log, print_json, print_table

from search.board.timing import make_session
from search.stages.evaluate import onnx_accuracy
from search.stages.export import INPUT_NAME, export_onnx
from search.stages.quantize import quantize
from search.study.baselines import CALIB_METHOD
from search.targets import get_target

STUDY = "cifar10-resnet18"  # studies/cifar10-resnet18.toml
HAND_PICKED = "hand_picked"  # trial attribute of a --try candidate
GOAL = {"size_ratio": 4.0, "latency_ratio": 2.0, "accuracy_drop": 0.01}


def mobilenet_v2(size: int, rounds: int, runs: int, calib: int) -> None:
    target = get_target("host")
    threads = target.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.randn(1, 3, size, size)
    fp32 = export_onnx(model, x)
    calibration = np.random.default_rng(0).standard_normal((calib, 3, size, size), dtype=np.float32)
    log(f"quantizing int8-static ({calib} calibration images)")
    int8 = quantize(fp32, "int8-static", calibration, CALIB_METHOD, target.activation_type, target.weight_type,
                    target.reduce_range)
    state = io.BytesIO()
    torch.save(model.state_dict(), state)

    sessions = {name: make_session(f, threads) for name, f in (("ORT fp32", fp32), ("ORT int8", int8))}
    feed = x.numpy()
    variants = {
        "PyTorch eager": lambda: model(x),
        "ORT fp32": lambda: sessions["ORT fp32"].run(None, {INPUT_NAME: feed}),
        "ORT int8": lambda: sessions["ORT int8"].run(None, {INPUT_NAME: feed}),
    }
    sizes = {"PyTorch eager": len(state.getvalue()), "ORT fp32": len(fp32), "ORT int8": len(int8)}
    medians = {name: [] for name in variants}
    with torch.inference_mode():
        for run in variants.values():  # warm-up: first runs allocate and pick kernels
            for _ in range(5):
                run()
        for r in range(rounds):
            for name, run in variants.items():
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    run()
                    times.append((time.perf_counter() - start) * 1000)
                medians[name].append(statistics.median(times))
            log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {m[-1]:.2f} ms" for n, m in medians.items()))
    p50 = {name: statistics.median(m) for name, m in medians.items()}
    base = p50["PyTorch eager"]
    rows = [[name, f"{p50[name]:.2f}", f"{base / p50[name]:.2f}x", f"{sizes[name] / 1e6:.2f}",
             f"{sizes['PyTorch eager'] / sizes[name]:.2f}x"] for name in variants]
    print_table(
        f"torchvision mobilenet_v2, {size}x{size}, batch 1, {threads} threads, {rounds} interleaved rounds of {runs} runs",
        ["variant", "p50 ms", "speed-up vs eager", "MB", "smaller vs eager"], rows,
    )
    print(f"ORT int8 vs ORT fp32: {p50['ORT fp32'] / p50['ORT int8']:.2f}x faster, {len(fp32) / len(int8):.2f}x smaller")
    print_json({"bench": "byo-mobilenet-v2", "size": size, "threads": threads, "p50_ms": p50, "bytes": sizes,
                "rounds": {n: [round(v, 3) for v in m] for n, m in medians.items()}})


def resnet18_cifar(trials: int, train_subset: int, finetune_epochs: float, hand_picked: list[str]) -> None:
    from search.cli import TerminalProgress
    from search.runner import SearchRequest, load_study_data, run_search
    from search.study.storage import existing_study, open_study, plan_study, study_config
    from spaces.compression_only import model_compression_params, parse_model_compression

    os.chdir(ROOT)  # the study's settings are studies/cifar10-resnet18.toml, its paths relative to the project
    explicit = {"train_subset": train_subset, "finetune_epochs": finetune_epochs}
    if hand_picked:
        if plan_study(STUDY, None, {}).exists:
            sys.exit(f"--try enqueues into a new study only: remove studies/{STUDY}/ first")
        comps = [parse_model_compression(c) for c in hand_picked]  # a typo stops here, before the baselines train
        run_search(SearchRequest(budget=2, explicit=explicit, study=STUDY), TerminalProgress())  # the two originals
        plan = existing_study(STUDY, None)
        study, _ = open_study(plan, plan.config.resolution)
        for text, comp in zip(hand_picked, comps):
            study.enqueue_trial(model_compression_params(comp), user_attrs={HAND_PICKED: text})
    report = run_search(SearchRequest(budget=trials, explicit=explicit, study=STUDY), TerminalProgress())
    plan = existing_study(STUDY, None)
    study, store = open_study(plan, plan.config.resolution)
    config = study_config(study)
    data = load_study_data(config, None, "studies/.cache", False)
    original = next((p for p in report.points if p.baseline == "original-fp32"), None)
    if original is None:
        sys.exit("the study has no complete original-fp32 baseline to compare with")
    test = {p.number: p.test_accuracy for p in report.front if p.test_accuracy is not None}
    test.setdefault(original.number, onnx_accuracy(store.get_model(original.onnx_sha256), data.test))
    picked = {t.number for t in study.get_trials(deepcopy=False) if HAND_PICKED in t.user_attrs}
    rows, met = [], []
    for p in [original, *(p for p in report.front if p.number != original.number)]:
        if p.number not in test:
            test[p.number] = onnx_accuracy(store.get_model(p.onnx_sha256), data.test)
        size_ratio = original.size_kb / p.size_kb
        latency_ratio = original.fair_latency_ms / p.fair_latency_ms
        delta = test[p.number] - test[original.number]
        if size_ratio >= GOAL["size_ratio"] and latency_ratio >= GOAL["latency_ratio"] and -delta <= GOAL["accuracy_drop"]:
            met.append(p.number)
        rows.append([p.number, p.baseline or p.compression + (" (hand-picked)" if p.number in picked else ""), f"{p.size_kb:.0f}", f"{size_ratio:.2f}x",
                     f"{p.fair_latency_ms:.3f}", f"{latency_ratio:.2f}x", f"{test[p.number]:.4f}", f"{100 * delta:+.2f}"])
    print_table(
        f"study {STUDY}: {len(report.points)} complete trials; the front against the fp32 original "
        f"(latencies re-timed together: {report.retime_note or 'as measured'})",
        ["trial", "compression", "KB", "smaller", "p50 ms", "faster", "test acc", "delta pts"], rows,
    )
    print(f"goal (>= {GOAL['size_ratio']:g}x smaller, >= {GOAL['latency_ratio']:g}x faster, <= 1 point less test accuracy): "
          + (f"met by trials {', '.join(map(str, met))}" if met else "not met"))
    print_json({"bench": "byo-resnet18-cifar", "trials": trials, "train_subset": train_subset,
                "finetune_epochs": finetune_epochs, "goal_met_by": met,
                "rows": [dict(zip(["trial", "compression", "kb", "smaller", "p50_ms", "faster", "test", "delta"], r))
                         for r in rows]})


def finetune_effect(train_subset: int, val_images: int) -> None:
    from dataclasses import replace

    from search.data import balanced_subset
    from search.own_model import load_own_model
    from search.runner import load_study_data
    from search.stages.prune import prune
    from search.stages.train import accuracy, fit, predict_logits
    from search.study.config import resolve
    from search.study.objective import BN_SAMPLES, train_config

    os.chdir(ROOT)
    cfg = resolve(STUDY, {}, None)  # studies/cifar10-resnet18.toml over the defaults
    data = load_study_data(cfg, None, "studies/.cache", False)
    own = load_own_model(cfg.model, cfg.weights, data.num_classes, data.val.batch(slice(0, 1)))
    proxy = data.train.take(balanced_subset(data.train.y, train_subset, cfg.seed))
    val = data.val.take(torch.arange(min(val_images, len(data.val))))
    logits = predict_logits(own.network, proxy)
    example, bn_data = data.val.batch(slice(0, 1)), proxy.batch(slice(0, BN_SAMPLES))
    prunings = {"unpruned": None, "last stage pruned by 0.1": (0.0, (0, 0, 0, 0.1)), "every layer pruned by 0.3": (0.3, ())}
    tunings = {"no fine-tune": None, "AdamW 0.001": ("adamw", 0.001), "AdamW 0.0001": ("adamw", 0.0001),
               "SGD 0.01": ("sgd", 0.01)}
    rows = []
    for name, pruning in prunings.items():
        row = [name]
        for tuning in tunings.values():
            model = copy.deepcopy(own.network)
            if pruning is not None:
                prune(model, pruning[0], 8, example, 1, bn_data, None, pruning[1])
            if tuning is not None:
                fit(model, proxy, replace(train_config(cfg, 1.0, 2), optimizer=tuning[0], lr=tuning[1]), logits)
            row.append(f"{accuracy(predict_logits(model, val), val.y):.4f}")
            log(f"{name}: {row[-1]}")
        rows.append(row)
    print_table(
        f"{cfg.model} on {len(val)} validation images: one epoch of distillation on {len(proxy)} training images",
        ["network", *tunings], rows,
    )
    print_json({"bench": "byo-finetune", "train_subset": len(proxy), "val_images": len(val),
                "rows": [dict(zip(["network", *tunings], r)) for r in rows]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", default="mobilenet-v2", choices=("mobilenet-v2", "resnet18-cifar", "finetune"))
    parser.add_argument("--size", type=int, default=224, help="mobilenet-v2: input size (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="mobilenet-v2: interleaved rounds (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=30, help="mobilenet-v2: runs per variant per round (default: %(default)s)")
    parser.add_argument("--calib-samples", type=int, default=64, help="mobilenet-v2: (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=30, help="resnet18-cifar: complete trials (default: %(default)s)")
    parser.add_argument("--train-subset", type=int, default=5000, help="resnet18-cifar and finetune: fine-tune images (default: %(default)s)")
    parser.add_argument("--finetune-epochs", type=float, default=1.0, help="resnet18-cifar: (default: %(default)s)")
    parser.add_argument("--val-images", type=int, default=2000, help="finetune: validation images (default: %(default)s)")
    parser.add_argument("--try", dest="hand_picked", action="append", default=[], metavar="COMPRESSION",
                        help="resnet18-cifar: a compression string to enqueue after the baselines (repeatable)")
    args = parser.parse_args()
    if args.which == "mobilenet-v2":
        mobilenet_v2(args.size, args.rounds, args.runs, args.calib_samples)
    elif args.which == "finetune":
        finetune_effect(args.train_subset, args.val_images)
    else:
        resnet18_cifar(args.trials, args.train_subset, args.finetune_epochs, args.hand_picked)


if __name__ == "__main__":
    main()
