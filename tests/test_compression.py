"""How a trial compresses its network (spaces/compression.py): the spec, its string, its sampling."""

import optuna
import pytest

from spaces import CALIB_METHODS, QUANT_MODES, CompressionSpec, parse_compression, sample_compression
from search.targets import BUILTIN_TARGETS


def test_the_string_names_every_setting():
    assert str(CompressionSpec()) == "prune0_round1_fp32"
    assert str(CompressionSpec(0.3, 8, "int8-static", "entropy")) == "prune0.3_round8_int8-static/entropy"
    assert str(CompressionSpec(0.5, 4, "int8-dynamic")) == "prune0.5_round4_int8-dynamic"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"prune_ratio": 0.8}, r"prune ratio must be in \[0, 0.7\], got 0.8"),
        ({"prune_ratio": -0.1}, "prune ratio must be in"),
        ({"channel_round": 0}, "channel rounding must be >= 1, got 0"),
        ({"quant": "int4"}, "quantization must be one of"),
        ({"quant": "int8-static"}, "calibration method is given exactly when"),
        ({"quant": "fp16", "calib_method": "minmax"}, "calibration method is given exactly when"),
        ({"quant": "int8-static", "calib_method": "mse"}, "calibration method must be one of"),
    ],
)
def test_an_impossible_spec_is_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        CompressionSpec(**settings)


def test_a_trial_s_parameters_become_the_spec():
    trial = optuna.trial.FixedTrial({"prune_ratio": 0.5, "channel_round": 8, "quant": "int8-static",
                                     "calib_method": "percentile"})
    spec = sample_compression(trial, QUANT_MODES, (4, 8), (0.0, 0.5))
    assert spec == CompressionSpec(0.5, 8, "int8-static", "percentile")


def _sampled(n: int, quant_modes, channel_rounds, prune_ratios) -> list[tuple[CompressionSpec, set]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((sample_compression(trial, quant_modes, channel_rounds, prune_ratios), set(trial.params)))
    return out


def test_sampling_reaches_every_choice_of_the_target_and_nothing_else():
    arm = BUILTIN_TARGETS["arm"]
    sampled = _sampled(80, arm.quant_modes, arm.channel_rounds, arm.prune_ratios)
    specs = [s for s, _ in sampled]
    assert {s.prune_ratio for s in specs} == set(arm.prune_ratios)
    assert {s.channel_round for s in specs} == set(arm.channel_rounds)
    assert {s.quant for s in specs} == set(arm.quant_modes)
    assert {s.calib_method for s in specs if s.quant == "int8-static"} == set(CALIB_METHODS)
    # The calibration method is a parameter of int8-static trials only.
    for spec, params in sampled:
        assert ("calib_method" in params) == (spec.quant == "int8-static")


def test_a_target_without_int8_static_never_samples_a_calibration():
    sampled = _sampled(10, ("fp32", "fp16"), (8,), (0.0, 0.2))
    assert {s.quant for s, _ in sampled} == {"fp32", "fp16"}
    assert all(params == {"prune_ratio", "channel_round", "quant"} for _, params in sampled)


@pytest.mark.parametrize(
    "spec",
    [
        CompressionSpec(),
        CompressionSpec(0.3, 8, "int8-static", "entropy"),
        CompressionSpec(0.5, 4, "int8-dynamic"),
        CompressionSpec(0.125, 16, "fp16"),
        CompressionSpec(0.7, 1, "int8-static", "percentile"),
    ],
    ids=str,
)
def test_the_string_parses_back_to_the_spec(spec):
    assert parse_compression(str(spec)) == spec
    assert str(parse_compression(str(spec))) == str(spec)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is not of the form prune<ratio>_round<N>_<quant>"),
        ("prune0.3_int8-dynamic", "is not of the form"),
        ("prune0.3_round8_int8-static/entropy/x", "is not of the form"),
        ("prune0..3_round8_fp32", "prune ratio '0..3' is not a number"),
        ("prune0.9_round8_fp32", r"prune ratio must be in \[0, 0.7\]"),
        ("prune0.3_round8_int8-static", "calibration method is given exactly when"),
        ("prune0.3_round8_int4", "quantization must be one of"),
    ],
)
def test_a_bad_string_is_refused_saying_why(text, message):
    with pytest.raises(ValueError, match=message):
        parse_compression(text)
