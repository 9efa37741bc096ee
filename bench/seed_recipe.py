"""The seed tutorial's recipe against ours, on the tutorial's own TinyCNN.

    python bench/seed_recipe.py

Seed: ``torch.quantization.quantize_dynamic(model, {nn.Linear, nn.Conv2d}, dtype=torch.qint8)``,
size from ``torch.save(state_dict)`` and latency from PyTorch, as the tutorial measures.
Ours: the same trained network exported to ONNX and quantized int8-static (QDQ,
per-channel, MinMax calibration on 512 training images) with the int8 types the search
uses for this machine (the ``host`` target profile), run by ONNX Runtime.
Data: the embedded digits, upsampled to the tutorial's 1x28x28 input; accuracy on the
held-out test split. Latencies are batch-1 medians over interleaved rounds, both
runtimes on the same thread count.
"""

from __future__ import annotations

import argparse
import io
import statistics
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from common import log, print_json, print_table

from search.data import Split, load_dataset
from search.stages.evaluate import onnx_accuracy
from search.stages.export import export_onnx
from search.board.timing import TimingPlan, latency_stats, measure_latency
from search.stages.quantize import quantize
from search.targets import get_target
from search.stages.train import TrainConfig, accuracy, fit, predict_logits

RESOLUTION = 28


class TinyCNN(nn.Module):
    """The tutorial's network, verbatim."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.flatten(1))


def _upsample(split: Split) -> Split:
    return Split(F.interpolate(split.x, size=RESOLUTION, mode="bilinear", align_corners=False), split.y)


def _torch_latency(model: nn.Module, plan: TimingPlan) -> float:
    """Batch-1 median in ms with the same warm-up / run plan as ONNX Runtime gets."""
    import time

    x = torch.randn(1, 1, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        for _ in range(plan.warmup_runs):
            model(x)
        samples, start = [], time.perf_counter()
        while len(samples) < plan.min_runs or time.perf_counter() - start < plan.min_seconds:
            t0 = time.perf_counter()
            model(x)
            samples.append((time.perf_counter() - t0) * 1000)
    return latency_stats(samples).p50_ms


def _state_dict_kb(model: nn.Module) -> float:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_dataset("digits")
    train, test = _upsample(data.train), _upsample(data.test)
    torch.manual_seed(0)
    model = TinyCNN()
    log("training TinyCNN on digits (28 px)")
    fit(model, train, TrainConfig(epochs=15, lr=0.003, batch_size=64))
    model.eval()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.quantization's deprecation notice
        seed = torch.quantization.quantize_dynamic(model, {nn.Linear, nn.Conv2d}, dtype=torch.qint8)
    quantized_layers = sorted({type(m).__module__ + "." + type(m).__name__ for m in seed.modules() if "quantized" in type(m).__module__})

    fp32_onnx = export_onnx(model, train.x[:1])
    host = get_target("host")
    int8_onnx = quantize(fp32_onnx, "int8-static", train.x[:512].numpy(), "minmax",
                         activation_type=host.activation_type, weight_type=host.weight_type,
                         reduce_range=host.reduce_range)

    plan = TimingPlan()
    lat = {k: [] for k in ("torch fp32", "seed: torch quantize_dynamic", "ONNX fp32", "ours: ONNX int8-static")}
    for r in range(args.rounds):
        log(f"latency round {r + 1} of {args.rounds}")
        lat["torch fp32"].append(_torch_latency(model, plan))
        lat["seed: torch quantize_dynamic"].append(_torch_latency(seed, plan))
        lat["ONNX fp32"].append(measure_latency(fp32_onnx, args.threads, plan=plan).p50_ms)
        lat["ours: ONNX int8-static"].append(measure_latency(int8_onnx, args.threads, plan=plan).p50_ms)
    latency = {k: statistics.median(v) for k, v in lat.items()}
    size = {
        "torch fp32": _state_dict_kb(model),
        "seed: torch quantize_dynamic": _state_dict_kb(seed),
        "ONNX fp32": len(fp32_onnx) / 1024,
        "ours: ONNX int8-static": len(int8_onnx) / 1024,
    }
    acc = {
        "torch fp32": accuracy(predict_logits(model, test), test.y),
        "seed: torch quantize_dynamic": accuracy(predict_logits(seed, test), test.y),
        "ONNX fp32": onnx_accuracy(fp32_onnx, test),
        "ours: ONNX int8-static": onnx_accuracy(int8_onnx, test),
    }
    rows = [
        [k, f"{size[k]:.1f}", f"{latency[k]:.4f}", f"{acc[k]:.4f}"] for k in lat
    ]
    print_table(
        f"TinyCNN ({sum(p.numel() for p in model.parameters()):,} parameters) on digits at 28 px, "
        f"batch 1, {args.threads} threads, median of {args.rounds} rounds",
        ["variant", "KB", "p50 ms", "test acc"],
        rows,
    )
    print(f"layers quantize_dynamic actually quantized: {', '.join(quantized_layers) or 'none'}")
    ratios = {
        "seed_size_ratio": size["seed: torch quantize_dynamic"] / size["torch fp32"],
        "ours_size_ratio": size["ours: ONNX int8-static"] / size["ONNX fp32"],
        "seed_latency_ratio": latency["seed: torch quantize_dynamic"] / latency["torch fp32"],
        "ours_latency_ratio": latency["ours: ONNX int8-static"] / latency["ONNX fp32"],
        "ours_vs_seed_latency": latency["ours: ONNX int8-static"] / latency["seed: torch quantize_dynamic"],
        "ours_vs_seed_size": size["ours: ONNX int8-static"] / size["seed: torch quantize_dynamic"],
    }
    print("ratios:", ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    print_json({"size_kb": size, "latency_ms_p50": latency, "accuracy": acc, "ratios": ratios,
                "seed_quantized_layers": quantized_layers, "threads": args.threads})


if __name__ == "__main__":
    main()
