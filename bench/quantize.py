"""Quantization of one trained network: size, latency and accuracy of each mode, side by side.

    python bench/quantize.py [--rounds 3] [--threads 2]

The network is BENCH_ARCH (bench/common.py: MobileNetV3-style, 804k parameters)
distilled on CIFAR-10 from the shared ResNet-18. Accuracy is that of each ONNX file
under ONNX Runtime on the 10,000 test images. Latencies are batch-1 medians, measured
in interleaved rounds (every variant once per round) so that drift of the machine
affects all variants alike; the figure is the median over rounds.
"""

from __future__ import annotations

import argparse
import statistics

from common import cifar10, cifar_teacher, log, print_json, print_table, trained_bench_model

from search.stages.cost import count_cost
from search.stages.evaluate import onnx_accuracy
from search.stages.export import export_onnx
from search.board.timing import measure_latency
from search.stages.quantize import quantize

GOAL_SIZE_RATIO = 0.30
GOAL_ACC_DROP = 0.010

# (name, mode, calibration method, activation type, 7-bit weights)
VARIANTS = [
    ("fp32", "fp32", None, None, False),
    ("fp16", "fp16", None, None, False),
    ("int8-dynamic", "int8-dynamic", None, None, False),
    ("int8-static minmax U8S8", "int8-static", "minmax", "uint8", False),
    ("int8-static entropy U8S8", "int8-static", "entropy", "uint8", False),
    ("int8-static percentile U8S8", "int8-static", "percentile", "uint8", False),
    ("int8-static minmax U8S7 (x86 profile)", "int8-static", "minmax", "uint8", True),
    ("int8-static percentile U8S7", "int8-static", "percentile", "uint8", True),
    ("int8-static minmax S8S8 (arm profile)", "int8-static", "minmax", "int8", False),
    ("int8-static percentile S8S8", "int8-static", "percentile", "int8", False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default: %(default)s)")
    parser.add_argument("--calib-samples", type=int, default=512, help="(default: %(default)s)")
    args = parser.parse_args()

    data = cifar10()
    model = trained_bench_model(data, cifar_teacher(data))
    cost = count_cost(model, data.in_chs, data.resolution)
    fp32 = export_onnx(model, data.val.batch(slice(0, 1)))
    calibration = data.train.batch(slice(0, args.calib_samples)).numpy()

    files = {}
    for name, mode, calib, act, reduce_range in VARIANTS:
        log(f"quantizing: {name}")
        files[name] = quantize(fp32, mode, calibration, calib, activation_type=act or "uint8", reduce_range=reduce_range)
    accuracy = {}
    for name in files:
        log(f"evaluating: {name}")
        accuracy[name] = onnx_accuracy(files[name], data.test)
    latencies = {name: [] for name in files}
    for r in range(args.rounds):
        log(f"latency round {r + 1} of {args.rounds}")
        for name, data_bytes in files.items():
            latencies[name].append(measure_latency(data_bytes, args.threads).p50_ms)
    latency = {name: statistics.median(v) for name, v in latencies.items()}

    base = "fp32"
    rows, result = [], {"network": {"params": cost.params, "macs": cost.macs}, "threads": args.threads, "variants": {}}
    for name in files:
        size_ratio = len(files[name]) / len(files[base])
        lat_ratio = latency[name] / latency[base]
        drop = accuracy[base] - accuracy[name]
        rows.append([
            name, f"{len(files[name]) / 1024:.1f}", f"{size_ratio:.3f}", f"{latency[name]:.3f}",
            f"{lat_ratio:.2f}", f"{accuracy[name]:.4f}", f"{100 * drop:+.2f}",
        ])
        result["variants"][name] = {
            "size_kb": len(files[name]) / 1024, "size_ratio": size_ratio, "latency_ms_p50": latency[name],
            "latency_ratio": lat_ratio, "accuracy": accuracy[name], "accuracy_drop_points": 100 * drop,
        }
    print_table(
        f"Quantization of a {cost.params:,}-parameter MobileNetV3-style network on CIFAR-10 "
        f"(ONNX Runtime, {args.threads} threads, batch 1, median of {args.rounds} interleaved rounds)",
        ["variant", "KB", "size x", "p50 ms", "latency x", "test acc", "drop pts"],
        rows,
    )
    static = {k: v for k, v in result["variants"].items() if k.startswith("int8-static")}
    result["goals"] = {
        "int8_static_size_ratio<=0.30": all(v["size_ratio"] <= GOAL_SIZE_RATIO for v in static.values()),
        "int8_static_best_drop<=1.0pt": min(v["accuracy_drop_points"] for v in static.values()) <= 100 * GOAL_ACC_DROP,
    }
    # Not a goal but the question the issue asks: is int8 faster than fp32 on this CPU?
    result["int8_static_latency_ratio_range"] = [
        min(v["latency_ratio"] for v in static.values()), max(v["latency_ratio"] for v in static.values())
    ]
    print("goals:", ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in result["goals"].items()))
    low, high = result["int8_static_latency_ratio_range"]
    print(f"int8-static latency / fp32 latency on this CPU: {low:.2f} to {high:.2f}")
    print_json(result)


if __name__ == "__main__":
    main()
