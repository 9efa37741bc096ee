"""Structured pruning of one trained network at several ratios, side by side.

    python bench/prune.py [--finetune-epochs 2] [--rounds 3]

The network is BENCH_ARCH (bench/common.py) distilled on CIFAR-10. Each ratio is
pruned in one step with Torch-Pruning (L2 magnitude, widths rounded to multiples of
8), batch-norm statistics are recomputed, and the network is fine-tuned with
distillation for the same number of epochs, ratio 0 included, so that the comparison
isolates the pruning. Accuracy is that of the fp32 ONNX file under ONNX Runtime on the
10,000 test images; latency is the batch-1 median over interleaved rounds.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from common import cifar10, cifar_teacher, log, print_json, print_table, trained_bench_model

from search.stages.cost import count_cost
from search.stages.evaluate import onnx_accuracy
from search.stages.export import export_onnx
from search.board.timing import measure_latency
from search.stages.prune import prune
from search.stages.teacher import teacher_logits
from search.stages.train import TrainConfig, fit

RATIOS = (0.0, 0.25, 0.5, 0.7)
GOALS_AT_HALF = {"params_ratio": 0.35, "latency_ratio": 0.7, "accuracy_drop_points": 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finetune-epochs", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channel-round", type=int, default=8)
    args = parser.parse_args()

    data = cifar10()
    teacher = cifar_teacher(data)
    base = trained_bench_model(data, teacher)
    example = data.val.batch(slice(0, 1))
    files, costs, specs = {}, {}, {}
    for ratio in RATIOS:
        model = copy.deepcopy(base)
        torch.manual_seed(0)
        prune(model, ratio, args.channel_round, example, steps=1, bn_data=data.train.batch(slice(0, 2048)))
        log(f"ratio {ratio}: fine-tuning {args.finetune_epochs} epochs")
        fit(model, data.train, TrainConfig(epochs=args.finetune_epochs, lr=0.005, batch_size=128), teacher_logits(teacher, data.train))
        costs[ratio] = count_cost(model, data.in_chs, data.resolution)
        specs[ratio] = str(model.spec)
        files[ratio] = export_onnx(model, example)
    accuracy = {r: onnx_accuracy(f, data.test) for r, f in files.items()}
    latencies = {r: [] for r in RATIOS}
    for i in range(args.rounds):
        log(f"latency round {i + 1} of {args.rounds}")
        for r in RATIOS:
            latencies[r].append(measure_latency(files[r], args.threads).p50_ms)
    latency = {r: statistics.median(v) for r, v in latencies.items()}

    rows, result = [], {"ratios": {}, "finetune_epochs": args.finetune_epochs, "threads": args.threads}
    b = 0.0
    for r in RATIOS:
        entry = {
            "params": costs[r].params, "params_ratio": costs[r].params / costs[b].params,
            "macs": costs[r].macs, "macs_ratio": costs[r].macs / costs[b].macs,
            "size_kb": len(files[r]) / 1024, "size_ratio": len(files[r]) / len(files[b]),
            "latency_ms_p50": latency[r], "latency_ratio": latency[r] / latency[b],
            "accuracy": accuracy[r], "accuracy_drop_points": 100 * (accuracy[b] - accuracy[r]), "arch": specs[r],
        }
        result["ratios"][str(r)] = entry
        rows.append([
            f"{r:g}", f"{entry['params']:,}", f"{entry['params_ratio']:.3f}", f"{entry['macs_ratio']:.3f}",
            f"{entry['size_kb']:.1f}", f"{entry['latency_ms_p50']:.3f}", f"{entry['latency_ratio']:.3f}",
            f"{entry['accuracy']:.4f}", f"{entry['accuracy_drop_points']:+.2f}",
        ])
    print_table(
        f"Structured pruning on CIFAR-10, each ratio fine-tuned {args.finetune_epochs:g} epochs "
        f"(ONNX Runtime fp32, {args.threads} threads, batch 1, median of {args.rounds} interleaved rounds)",
        ["ratio", "params", "params x", "MACs x", "KB", "p50 ms", "latency x", "test acc", "drop pts"],
        rows,
    )
    half = result["ratios"]["0.5"]
    result["goals_at_0.5"] = {
        f"{k}<={v}": half[k] <= v for k, v in GOALS_AT_HALF.items()
    }
    print("goals at 0.5:", ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in result["goals_at_0.5"].items()))
    print_json(result)


if __name__ == "__main__":
    main()
