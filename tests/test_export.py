import onnx
import pytest
import torch

from search.stages.export import ParityError, check_parity, export_onnx
from spaces import build_model, parse_arch

SPEC = "in1-stem8_s1_hs-ir_k3_s2_x16_c16_se8_re-ir_k5_s1_x48_c16_hs-conv32_hs-fc32_hs-cls10"


def _model():
    torch.manual_seed(0)
    model = build_model(parse_arch(SPEC)).eval()
    # Non-trivial batch-norm statistics, so that folding them into the convs is exercised.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 1, 8, 8))
    return model.eval()


def test_export_is_self_contained_and_checked():
    onnx_bytes = export_onnx(_model(), torch.zeros(1, 1, 8, 8), {"arch": SPEC})
    proto = onnx.load_from_string(onnx_bytes)
    onnx.checker.check_model(proto, full_check=True)
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    assert {p.key: p.value for p in proto.metadata_props}["arch"] == SPEC
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)  # folded


def test_onnx_runtime_matches_pytorch():
    model = _model()
    onnx_bytes = export_onnx(model, torch.zeros(1, 1, 8, 8))
    diff = check_parity(onnx_bytes, model, torch.randn(16, 1, 8, 8))
    assert diff < 1e-4


def test_parity_check_catches_a_mismatch():
    model = _model()
    onnx_bytes = export_onnx(model, torch.zeros(1, 1, 8, 8))
    with torch.no_grad():
        model.classifier[-1].bias += 1.0
    with pytest.raises(ParityError):
        check_parity(onnx_bytes, model, torch.randn(4, 1, 8, 8))
