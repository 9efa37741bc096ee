"""The seed's distillation exercise: a 3-layer CNN student, with and without the teacher.

    python bench/distill.py [--epochs 4] [--seeds 0 1 2] [--train-subset 0]

Teacher: the shared ResNet-18 (CIFAR-10). Student: three conv layers (3x3, batch norm,
ReLU, 2x2 max-pool) and a linear classifier, about 10x fewer parameters than the
teacher. Each seed trains the student twice for the same epochs, on the same images
in the same order: once with cross-entropy alone, once with the seed recipe
0.7 * CE + 0.3 * T^2 * KL at T = 4. Test accuracy on the 10,000 test images. The gap
recovered is (KD - CE) / (teacher - CE).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import cifar10, cifar_teacher, log, print_json, print_table
from torch import nn

from search.stages.teacher import teacher_logits
from search.stages.train import TrainConfig, accuracy, fit, predict_logits


def student(widths=(128, 256, 384), num_classes=10) -> nn.Module:
    layers, in_chs = [], 3
    for w in widths:
        layers += [nn.Conv2d(in_chs, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        in_chs = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_chs, num_classes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-subset", type=int, default=0, help="use the first N training images (0: all)")
    args = parser.parse_args()

    data = cifar10()
    teacher = cifar_teacher(data)
    train = data.train
    if args.train_subset:
        train = train.take(torch.arange(args.train_subset))
    logits = teacher_logits(teacher, train)
    teacher_acc = accuracy(predict_logits(teacher.model, data.test, batch_size=256), data.test.y)
    n_teacher = sum(p.numel() for p in teacher.model.parameters())
    n_student = sum(p.numel() for p in student().parameters())
    log(f"teacher test accuracy {teacher_acc:.4f}; {n_teacher:,} vs {n_student:,} parameters")

    results = {"ce": [], "kd": []}
    for seed in args.seeds:
        for name, alpha in (("ce", 0.0), ("kd", 0.3)):
            torch.manual_seed(seed)
            model = student()
            log(f"seed {seed}, {name}: training {args.epochs:g} epochs on {len(train)} images")
            config = TrainConfig(epochs=args.epochs, lr=0.05, batch_size=128, weight_decay=5e-4, optimizer="sgd",
                                 alpha=alpha, temperature=4.0, seed=seed)
            fit(model, train, config, logits if alpha > 0 else None)
            results[name].append(accuracy(predict_logits(model, data.test), data.test.y))
            log(f"seed {seed}, {name}: test accuracy {results[name][-1]:.4f}")

    def summary(values):
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    (ce_mean, ce_std), (kd_mean, kd_std) = summary(results["ce"]), summary(results["kd"])
    recovered = (kd_mean - ce_mean) / (teacher_acc - ce_mean) if teacher_acc > ce_mean else float("nan")
    print_table(
        f"Distillation on CIFAR-10: student {n_student:,} parameters ({n_teacher / n_student:.1f}x fewer than the "
        f"teacher), {args.epochs:g} epochs, {len(train):,} training images, seeds {args.seeds}",
        ["model", "test acc mean", "std", "per seed"],
        [
            ["teacher ResNet-18", f"{teacher_acc:.4f}", "-", "-"],
            ["student, CE only", f"{ce_mean:.4f}", f"{ce_std:.4f}", " ".join(f"{v:.4f}" for v in results["ce"])],
            ["student, 0.7 CE + 0.3 KL (T=4)", f"{kd_mean:.4f}", f"{kd_std:.4f}", " ".join(f"{v:.4f}" for v in results["kd"])],
        ],
    )
    print(f"distillation gain {100 * (kd_mean - ce_mean):+.2f} points; teacher-student gap recovered {100 * recovered:.1f}%")
    print_json({
        "teacher_accuracy": teacher_acc, "teacher_params": n_teacher, "student_params": n_student,
        "ce": results["ce"], "kd": results["kd"], "ce_mean": ce_mean, "ce_std": ce_std, "kd_mean": kd_mean,
        "kd_std": kd_std, "gap_recovered": recovered, "epochs": args.epochs, "train_images": len(train),
    })


if __name__ == "__main__":
    main()
