import onnx
import pytest
import torch

from search.stages.cost import count_cost
from search.stages.export import export_onnx
from search.stages.prune import prune
from spaces import build_model, parse_arch

SPEC = "in1-stem16_s1_hs-ir_k3_s2_x48_c24_se16_re-ir_k5_s1_x96_c48_hs-ir_r2_k5_s1_x192_c48_se48_hs-conv128_hs-fc128_hs-cls10"
X = torch.zeros(1, 1, 8, 8)


def _model():
    torch.manual_seed(0)
    return build_model(parse_arch(SPEC)).eval()


@pytest.mark.parametrize("ratio, rounding", [(0.25, 1), (0.5, 8), (0.7, 4)])
def test_pruned_model_rebuilds_from_its_derived_string(ratio, rounding):
    model = prune(_model(), ratio, rounding, X)
    derived = str(model.spec)
    assert derived != SPEC
    rebuilt = build_model(parse_arch(derived)).eval()
    rebuilt.load_state_dict(model.state_dict())  # strict: every shape matches
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_pruning_removes_channels_and_shrinks_the_file():
    base = _model()
    base_size, base_cost = len(export_onnx(base, X)), count_cost(base, 1, 8)
    pruned = prune(_model(), 0.5, 8, X)
    cost = count_cost(pruned, 1, 8)
    size = len(export_onnx(pruned, X))
    assert cost.params <= 0.35 * base_cost.params
    assert cost.macs < 0.5 * base_cost.macs
    assert size < 0.4 * base_size
    # Removed, not zeroed: no all-zero output channel is left in any conv.
    for m in pruned.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert (m.weight.flatten(1).abs().sum(1) > 0).all()


def test_rounding_makes_widths_multiples():
    pruned = prune(_model(), 0.5, 8, X)
    spec = pruned.spec
    widths = [spec.stem_chs, spec.head_chs, spec.fc_chs] + [b.out_chs for b in spec.blocks] + [b.expand_chs for b in spec.blocks]
    assert all(w % 8 == 0 for w in widths)


def test_iterative_pruning_fine_tunes_between_steps():
    calls = []
    pruned = prune(_model(), 0.5, 1, X, steps=3, finetune=lambda m, step: calls.append((step, count_cost(m, 1, 8).params)))
    assert [c[0] for c in calls] == [0, 1, 2]
    assert calls[0][1] > calls[1][1] > calls[2][1]  # each step removes more
    assert str(pruned.spec) == str(prune(_model(), 0.5, 1, X).spec)  # same end shape as one step


def test_pruned_shape_does_not_depend_on_weights():
    a = prune(_model(), 0.5, 4, X).spec
    torch.manual_seed(123)
    b = prune(build_model(parse_arch(SPEC)).eval(), 0.5, 4, X).spec
    assert a == b


def test_zero_ratio_is_a_no_op():
    model = _model()
    assert prune(model, 0.0, 8, X).spec == parse_arch(SPEC)


@pytest.mark.parametrize("ratio, expected", [(0.5, 16), (0.7, 8)])
def test_kept_widths_round_to_the_nearest_multiple(ratio, expected):
    # The first block's 24 channels: 12 kept at 0.5 rounds to 16 (not down to 8);
    # 7.2 kept at 0.7 rounds to 8 (not to zero, which left all 24).
    assert prune(_model(), ratio, 8, X).spec.blocks[0].out_chs == expected
