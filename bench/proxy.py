"""Proxy training settings side by side: which short run tells candidates apart best.

    python bench/proxy.py [--archs 4] [--setting NAME:KEY=V,KEY=V ...]

Candidates: ``--archs`` architectures drawn at random from the mbv3 space (seed 0) for
CIFAR-10 at 32 px, unpruned and in fp32, so that only the training differs. Each setting
trains every candidate on a class-balanced subset of the training split (the search's
proxy), distilling from the shared ResNet-18, and reports validation accuracy and the
wall time per candidate. Settings keys: ``subset`` (images), ``epochs``, ``batch``,
``lr``, ``alpha``, ``temperature``. The last column is Kendall's tau between the
setting's ranking of the candidates and the ``--reference`` setting's (by default the
last one given: make it the long run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import optuna
from scipy.stats import kendalltau
import torch
from common import cifar10, cifar_teacher, log, parse_setting, print_json, print_table

from search.data import balanced_subset
from search.stages.teacher import teacher_logits
from search.stages.train import TrainConfig, accuracy, fit, predict_logits
from spaces import build_model, get_space, sample_arch

DEFAULT_SETTINGS = [
    "b128:subset=5000,epochs=3,batch=128,lr=0.01",
    "b64:subset=5000,epochs=3,batch=64,lr=0.01",
    "b32:subset=5000,epochs=3,batch=32,lr=0.005",
    "b64-lr.02:subset=5000,epochs=3,batch=64,lr=0.02",
    "b64-15k:subset=15000,epochs=1,batch=64,lr=0.01",
    "b64-a.7:subset=5000,epochs=3,batch=64,lr=0.01,alpha=0.7",
]
KEYS = {"subset": int, "epochs": float, "batch": int, "lr": float, "alpha": float, "temperature": float}
DEFAULTS = {"subset": 5000, "epochs": 3.0, "batch": 128, "lr": 0.01, "alpha": 0.3, "temperature": 4.0}


def sample_archs(n: int, data) -> list:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [sample_arch(study.ask(), get_space("mbv3"), data.in_chs, data.resolution, data.num_classes) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", type=int, default=4)
    parser.add_argument("--setting", action="append", help="NAME:KEY=V,... (repeatable; default: a built-in grid)")
    parser.add_argument("--reference", help="the setting whose ranking the others are compared with (default: last)")
    args = parser.parse_args()
    settings = [parse_setting(s, KEYS, DEFAULTS) for s in (args.setting or DEFAULT_SETTINGS)]
    reference = args.reference or settings[-1][0]

    data = cifar10()
    teacher = cifar_teacher(data)
    archs = sample_archs(args.archs, data)
    params = [sum(p.numel() for p in build_model(a).parameters()) for a in archs]
    log(f"{len(archs)} candidates, {min(params):,} to {max(params):,} parameters")

    results = {}
    for name, s in settings:
        images = data.train.take(balanced_subset(data.train.y, s["subset"], seed=0))
        logits = teacher_logits(teacher, images)
        accs, seconds = [], []
        for i, arch in enumerate(archs):
            torch.manual_seed(i)
            model = build_model(arch)
            config = TrainConfig(epochs=s["epochs"], lr=s["lr"], batch_size=s["batch"], alpha=s["alpha"],
                                 temperature=s["temperature"], seed=i)
            start = time.perf_counter()
            fit(model, images, config, logits)
            seconds.append(time.perf_counter() - start)
            accs.append(accuracy(predict_logits(model, data.val), data.val.y))
            log(f"{name}, candidate {i}: val {accs[-1]:.4f} in {seconds[-1]:.0f} s")
        results[name] = {"setting": s, "val": accs, "seconds": seconds}

    rows = []
    for name, r in results.items():
        s = r["setting"]
        r["tau"] = float(kendalltau(r["val"], results[reference]["val"]).statistic)
        rows.append([
            name, f"{s['subset']}x{s['epochs']:g}", s["batch"], s["lr"], s["alpha"],
            f"{statistics.fmean(r['val']):.4f}", " ".join(f"{v:.3f}" for v in r["val"]),
            f"{statistics.fmean(r['seconds']):.0f}", f"{r['tau']:.2f}",
        ])
    print_table(
        f"Proxy settings on CIFAR-10: {len(archs)} random mbv3 candidates, unpruned fp32, validation accuracy",
        ["setting", "images x epochs", "batch", "lr", "alpha", "val mean", "per candidate", "s/candidate",
         f"tau vs {reference}"],
        rows,
    )
    print_json({"archs": [str(a) for a in archs], "params": params, "results": results})


if __name__ == "__main__":
    main()
