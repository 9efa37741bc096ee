import numpy as np
import onnx
import pytest
import torch

from search.stages.evaluate import onnx_logits
from search.stages.export import export_onnx
from search.board.timing import make_session
from search.stages import quantize as quantize_module
from search.stages.quantize import entropy_threshold, quantize
from spaces import build_model, parse_arch

SPEC = "in1-stem16_s1_hs-ir_k3_s2_x64_c32_se16_re-ir_r2_k3_s1_x128_c32_hs-conv128_hs-fc64_hs-cls10"


@pytest.fixture(scope="module")
def fp32():
    torch.manual_seed(0)
    model = build_model(parse_arch(SPEC)).eval()
    return export_onnx(model, torch.zeros(1, 1, 8, 8))


@pytest.fixture(scope="module")
def calibration():
    return np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)


@pytest.mark.parametrize(
    "mode, calib, act",
    [
        ("fp32", None, "uint8"),
        ("fp16", None, "uint8"),
        ("int8-dynamic", None, "uint8"),
        ("int8-static", "minmax", "uint8"),
        ("int8-static", "entropy", "uint8"),
        ("int8-static", "percentile", "uint8"),
        ("int8-static", "minmax", "int8"),
    ],
)
def test_each_mode_gives_a_valid_model_that_onnx_runtime_runs(fp32, calibration, mode, calib, act):
    q = quantize(fp32, mode, calibration, calib, activation_type=act)
    # Structural check only: onnx's shape inference trips over ORT's per-channel QDQ
    # weights ("Conv input must have at least 3 dimensions"); running it in ORT below
    # is the real proof.
    onnx.checker.check_model(onnx.load_from_string(q))
    x = calibration[:8]
    out, ref = onnx_logits(q, x), onnx_logits(fp32, x)
    assert out.shape == ref.shape == (8, 10) and out.dtype == np.float32
    # Quantized logits stay close to the float ones (random weights, so a loose bound).
    assert np.abs(out - ref).max() <= 0.25 * np.abs(ref).max() + 1e-3
    if mode != "fp32":
        assert len(q) < len(fp32)


def test_static_int8_is_qdq_with_the_asked_types(fp32, calibration):
    for act, expected in (("uint8", onnx.TensorProto.UINT8), ("int8", onnx.TensorProto.INT8)):
        q = onnx.load_from_string(quantize(fp32, "int8-static", calibration, "minmax", activation_type=act))
        ops = {n.op_type for n in q.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        zero_points = [i for i in q.graph.initializer if i.name in {n.input[2] for n in q.graph.node if n.op_type == "QuantizeLinear"}]
        assert zero_points and all(z.data_type == expected for z in zero_points)


def test_fp16_keeps_float32_inputs(fp32):
    session = make_session(quantize(fp32, "fp16"), threads=1)
    assert session.get_inputs()[0].type == "tensor(float)"


def test_static_needs_calibration(fp32):
    with pytest.raises(ValueError, match="calibration"):
        quantize(fp32, "int8-static", None, "minmax")


def test_calibration_methods_give_different_ranges(fp32, calibration):
    # ORT's own Entropy settings reproduce MinMax byte for byte; ours must not.
    files = {m: quantize(fp32, "int8-static", calibration, m) for m in ("minmax", "entropy", "percentile")}
    assert len(set(files.values())) == 3


def _conv_weight_codes(onnx_bytes: bytes) -> np.ndarray:
    model = onnx.load_from_string(onnx_bytes)
    int8_weights = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer
                    if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert int8_weights
    return np.concatenate([w.ravel() for w in int8_weights])


def test_reduce_range_keeps_weights_to_seven_bits(fp32, calibration):
    # Widened before comparing: np.abs(np.int8(-128)) is -128, which would pass any bound.
    full = _conv_weight_codes(quantize(fp32, "int8-static", calibration, "minmax")).astype(np.int16)
    reduced = _conv_weight_codes(
        quantize(fp32, "int8-static", calibration, "minmax", reduce_range=True)
    ).astype(np.int16)
    # Per-channel weights are symmetric: ORT maps each channel's largest |w| to the end of
    # its range, [-127, 127] in full (never -128), [-64, 64] reduced (ORT's
    # ONNX_INT_TYPE_REDUCED_RANGE for INT8), so the ends are reached, not only bounded.
    assert full.min() >= -127 and full.max() <= 127 and np.abs(full).max() == 127
    assert reduced.min() >= -64 and reduced.max() <= 64 and np.abs(reduced).max() == 64
    assert ((full < -64) | (full > 64)).any()


def test_entropy_threshold_is_onnx_runtimes_on_every_histogram_of_a_calibration(fp32, calibration, tmp_path):
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import HistogramCollector, create_calibrator

    path = tmp_path / "fp32.onnx"
    path.write_bytes(fp32)
    calibrator = create_calibrator(path, augmented_model_path=str(tmp_path / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options=quantize_module._CALIBRATOR_OPTIONS["entropy"])
    calibrator.collect_data(quantize_module._CalibrationReader(calibration))
    histograms = calibrator.collector.histogram_dict
    assert len(histograms) > 10
    quantized_bins = quantize_module._CALIBRATOR_OPTIONS["entropy"]["num_quantized_bins"]
    for histogram in histograms.values():
        ours = entropy_threshold(histogram, quantized_bins)
        theirs = HistogramCollector.get_entropy_threshold(calibrator.collector, histogram, quantized_bins)
        assert [float(v) for v in ours] == [float(v) for v in theirs]


@pytest.mark.parametrize("quantized_bins", [128, 64, 32])
def test_entropy_threshold_is_onnx_runtimes_where_bins_merge_unevenly(quantized_bins):
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(quantized_bins)
    for _ in range(5):
        counts = rng.poisson(rng.uniform(0, 40, 256)) * (rng.uniform(size=256) > 0.2)  # odd sums, empty bins
        edges = np.linspace(-3, 3, 257, dtype=np.float32)
        histogram = (counts.astype(np.int64), edges, np.float32(-2.9), np.float32(2.95))
        ours = entropy_threshold(histogram, quantized_bins)
        theirs = HistogramCollector.get_entropy_threshold(None, histogram, quantized_bins)
        assert [float(v) for v in ours] == [float(v) for v in theirs]


def test_entropy_calibration_gives_the_file_onnx_runtimes_own_search_gives(fp32, calibration, monkeypatch):
    from onnxruntime.quantization.calibrate import HistogramCollector

    ours = quantize(fp32, "int8-static", calibration, "entropy")
    # ORT's own method reads nothing of its collector but the histogram.
    monkeypatch.setattr(quantize_module, "entropy_threshold",
                        lambda histogram, bins: HistogramCollector.get_entropy_threshold(None, histogram, bins))
    assert quantize(fp32, "int8-static", calibration, "entropy") == ours
