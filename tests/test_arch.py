import optuna
import pytest

from spaces import (
    MOBILENET_V3_LARGE,
    MOBILENET_V3_SMALL,
    SPACES,
    ArchSpec,
    BlockSpec,
    parse_arch,
    sample_arch,
    stride_schedule,
)


def _sampled(space: str, seed: int, in_chs=3, resolution=32, classes=10) -> ArchSpec:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return sample_arch(study.ask(), SPACES[space], in_chs, resolution, classes)


@pytest.mark.parametrize("spec", [MOBILENET_V3_SMALL, MOBILENET_V3_LARGE], ids=["small", "large"])
def test_reference_round_trip(spec):
    assert parse_arch(str(spec)) == spec


@pytest.mark.parametrize("space", sorted(SPACES))
@pytest.mark.parametrize("seed", range(5))
def test_sampled_round_trip(space, seed):
    spec = _sampled(space, seed)
    text = str(spec)
    assert parse_arch(text) == spec
    assert str(parse_arch(text)) == text


def test_repeats_fold_identical_blocks():
    text = str(MOBILENET_V3_SMALL)
    assert "ir_r2_k5_s1_x240_c40_se64_hs" in text
    assert len(MOBILENET_V3_SMALL.blocks) == 11


def test_noskip_round_trip():
    blocks = (
        BlockSpec(kernel=3, stride=1, out_chs=16, act="re", expand_chs=32, skip=False),
        BlockSpec(kernel=3, stride=1, out_chs=16, act="re", expand_chs=32),
    )
    spec = ArchSpec(3, 16, 1, "hs", blocks, 64, "hs", None, "hs", 10)
    text = str(spec)
    assert "ir_k3_s1_x32_c16_re_noskip" in text
    back = parse_arch(text)
    assert back == spec
    assert not back.blocks[0].has_skip(16) and back.blocks[1].has_skip(16)


def test_skip_flag_is_normalised_where_no_skip_is_possible():
    a = ArchSpec(3, 8, 1, "hs", (BlockSpec(3, 2, 16, "re", skip=False),), 32, "hs", None, "hs", 10)
    b = ArchSpec(3, 8, 1, "hs", (BlockSpec(3, 2, 16, "re"),), 32, "hs", None, "hs", 10)
    assert a == b and str(a) == str(b)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "in3-stem16_s2_hs-conv64_hs-cls10",  # no blocks
        "in3-stem16_s3_hs-ir_k3_s1_c16_re-conv64_hs-cls10",  # stem stride 3
        "in3-stem16_s2_hs-ir_k4_s1_c16_re-conv64_hs-cls10",  # even kernel
        "in3-stem16_s2_hs-ir_k3_s1_c16_gelu-conv64_hs-cls10",  # unknown activation
        "in3-stem16_s2_hs-ir_k3_s1_c16_re-conv64_hs",  # no class count
        "in3-stem16_s2_hs-ir_k3_s1_c016_re-conv64_hs-cls10",  # leading zero
        "in3-stem16_s2_hs-ir_c16_k3_s1_re-conv64_hs-cls10",  # fields out of order
        "in3-stem16_s2_hs-ir_k3_s2_c24_re_noskip-conv64_hs-cls10",  # noskip where no skip is possible
        "in3-stem16_s2_hs-ir_r2_k3_s1_c24_re-conv64_hs-cls10",  # repeat that changes width
        "in0-stem16_s2_hs-ir_k3_s1_c16_re-conv64_hs-cls10",  # zero channels
    ],
)
def test_malformed_strings_raise_value_error(text):
    with pytest.raises(ValueError):
        parse_arch(text)


def test_unrolled_repeats_parse_to_the_same_spec_and_print_canonically():
    rolled = "in3-stem16_s2_hs-ir_r2_k3_s1_c16_re-conv64_hs-cls10"
    unrolled = "in3-stem16_s2_hs-ir_k3_s1_c16_re-ir_k3_s1_c16_re-conv64_hs-cls10"
    assert parse_arch(unrolled) == parse_arch(rolled)
    assert str(parse_arch(unrolled)) == rolled


def test_hand_written_mobilenet_v3_small_without_repeats_is_the_reference():
    unrolled = str(MOBILENET_V3_SMALL).replace("ir_r2_k5_s1_x240_c40_se64_hs", "ir_k5_s1_x240_c40_se64_hs-ir_k5_s1_x240_c40_se64_hs")
    assert unrolled != str(MOBILENET_V3_SMALL)
    assert parse_arch(unrolled) == MOBILENET_V3_SMALL


@pytest.mark.parametrize(
    "resolution, stem, stages, final",
    [(8, 1, [2, 1, 1], 4), (28, 1, [2, 2, 1], 7), (32, 1, [2, 2, 2], 4), (224, 2, [2, 2, 2], 14)],
)
def test_stride_schedule_adapts_to_resolution(resolution, stem, stages, final):
    got_stem, got_stages = stride_schedule(resolution, 3)
    assert (got_stem, got_stages) == (stem, stages)
    size = resolution
    for s in [got_stem, *got_stages]:
        size = (size + s - 1) // s
    assert size == final


def test_stride_schedule_with_enough_stages_reaches_7x7_at_224():
    stem, stages = stride_schedule(224, 5)
    assert stem == 2 and stages == [2, 2, 2, 2, 1]
