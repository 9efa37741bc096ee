"""Quantize an fp32 ONNX file with ONNX Runtime's own tools.

Modes: ``fp32`` (unchanged), ``fp16`` (weights and activations in half precision,
float32 inputs and outputs kept so callers need not change), ``int8-dynamic`` (int8
weights, activations quantized on the fly) and ``int8-static`` (QDQ, per-channel
weights, activation ranges calibrated on training samples). The int8 types come from
the target: signed activations suit ARM, unsigned suit x86 without VNNI. On x86 without
VNNI the unsigned x signed int8 kernels add pairs of products in 16 bits, which can
saturate; ``reduce_range`` keeps weights to 7 bits so that they cannot (measured on
CIFAR-10 in BENCHMARKS.md: 0.9 points of accuracy back, at the same speed).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from .export import INPUT_NAME, compact

log = logging.getLogger(__name__)

_CALIB_BATCH = 32


def quantize(
    onnx_bytes: bytes,
    mode: str,
    calibration: np.ndarray | None = None,
    calib_method: str | None = None,
    activation_type: str = "uint8",
    weight_type: str = "int8",
    reduce_range: bool = False,
) -> bytes:
    """The model quantized as ``mode`` asks; ``calibration`` (N x C x H x W) is needed for int8-static."""
    if mode == "fp32":
        return onnx_bytes
    if mode == "fp16":
        return _to_fp16(onnx_bytes)
    if mode == "int8-dynamic":
        return _int8_dynamic(onnx_bytes)
    if mode == "int8-static":
        if calibration is None or len(calibration) == 0:
            raise ValueError("int8-static quantization needs calibration samples")
        return _int8_static(
            onnx_bytes, calibration, calib_method or "minmax", activation_type, weight_type, reduce_range
        )
    raise ValueError(f"unknown quantization mode {mode!r}")


def _to_fp16(onnx_bytes: bytes) -> bytes:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load_from_string(onnx_bytes), keep_io_types=True)
    return compact(model).SerializeToString()


def _int8_dynamic(onnx_bytes: bytes) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(onnx_bytes)
        _pre_process(src, pre)
        # ORT's CPU ConvInteger kernel takes unsigned weights only.
        quantize_dynamic(pre, dst, weight_type=QuantType.QUInt8)
        return _strip(dst.read_bytes())


def _pre_process(src: Path, dst: Path) -> None:
    """ORT's recommended pre-processing: graph optimisation and shape inference, so that
    the quantizer sees the graph the runtime will run."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(src, dst, skip_symbolic_shape=True)


def _strip(onnx_bytes: bytes) -> bytes:
    return compact(onnx.load_from_string(onnx_bytes)).SerializeToString()


class _CalibrationReader:
    """Feeds calibration samples to ``quantize_static`` in small batches."""

    def __init__(self, samples: np.ndarray):
        self._batches = iter([samples[i : i + _CALIB_BATCH] for i in range(0, len(samples), _CALIB_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}


# Calibrator settings per method. ORT's quantize_static builds the Entropy calibrator
# with 128 histogram bins and 128 quantized bins, which leaves its threshold search a
# single candidate: its output was byte-identical to MinMax's. With 256 bins the search
# has 64 candidates; 2048 (TensorRT's choice) took 54 s on a small network against 3 s,
# too slow for a trial. The ranges reach quantize_static through its calibration cache.
_CALIBRATOR_OPTIONS = {
    "minmax": {},
    "entropy": {"num_bins": 256, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}


def _int8_static(
    onnx_bytes: bytes,
    calibration: np.ndarray,
    calib_method: str,
    activation_type: str,
    weight_type: str,
    reduce_range: bool,
) -> bytes:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    symmetric = activation_type == "int8"  # signed activations use a range centred on zero
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(onnx_bytes)
        _pre_process(src, pre)
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
            calibrator = create_calibrator(
                pre,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=methods[calib_method],
                extra_options={**_CALIBRATOR_OPTIONS[calib_method], "symmetric": symmetric},
            )
            calibrator.collect_data(_CalibrationReader(calibration))
            if calib_method == "entropy":
                calibrator.collector.get_entropy_threshold = entropy_threshold
            ranges = Path(tmp) / "ranges.json"
            save_tensors_data(calibrator.compute_data(), ranges)
            quantize_static(
                pre,
                dst,
                None,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=types[activation_type],
                weight_type=types[weight_type],
                reduce_range=reduce_range,
                calibrate_method=methods[calib_method],
                calibration_cache_path=ranges,
                extra_options={"ActivationSymmetric": symmetric},
            )
        return _strip(dst.read_bytes())


def entropy_threshold(histogram: tuple, num_quantized_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime's ``HistogramCollector.get_entropy_threshold``, its per-bin Python
    loops done as array operations: the same range for the same histogram (tests compare
    them, and the files). An entropy quantization of a small network took 0.35-0.39 s with
    it, 1.0-1.3 s with ORT's; in a digits search entropy trials had spent 1.3 s each there.

    For each candidate range, symmetric about the histogram's middle bin, the histogram
    clipped to it (outliers added to its end bins) is ``p``; ``q`` is ``p`` merged into
    ``num_quantized_bins`` and spread back over the non-empty bins. The range whose ``q``
    is nearest ``p`` (KL divergence, both smoothed) wins.
    """
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist, edges, min_value, max_value = histogram[:4]
    num_bins = hist.size
    zero_bin, half = num_bins // 2, num_quantized_bins // 2
    divergences, ranges = [], []
    for i in range(half, zero_bin + 1):
        start, end = zero_bin - i, min(zero_bin + i + 1, num_bins)
        ranges.append((edges[start], edges[end]))
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += hist[:start].sum()
        p[-1] += hist[end:].sum()
        merged = sliced.size // num_quantized_bins
        body = num_quantized_bins * merged
        quantized = sliced[:body].reshape(num_quantized_bins, merged).sum(axis=1).astype(np.int64)
        quantized[-1] += sliced[body:].sum()
        nonzero = (p[:body] != 0).reshape(num_quantized_bins, merged).sum(axis=1)
        q = np.zeros(p.size, dtype=np.int64)
        # ORT stores each merged bin's mean into an int64 array: truncated, as here.
        spread = np.where(nonzero != 0, quantized / np.maximum(nonzero, 1), 0.0)
        q[:body] = np.repeat(spread, merged).astype(np.int64)
        p, q = smooth_distribution(p), smooth_distribution(q)
        divergences.append(np.inf if p is None or q is None else float(np.array(entropy(p, q), dtype=edges.dtype)))
    low, high = ranges[int(np.argmin(divergences))]
    return (min_value if low < min_value else low), (max_value if high > max_value else high)
