"""The MobileNetV3-style search spaces (spaces/mobilenetv3.py): what a trial may sample.

tests/test_arch.py covers the stride schedule and the spec strings, tests/test_build.py
the networks built from samples; this file checks the samples against the declared choices."""

import optuna
import pytest
from torchvision.models._utils import _make_divisible

from spaces import SPACES, get_space, sample_arch, stride_schedule
from spaces.mobilenetv3 import make_divisible

RESOLUTIONS = (8, 16, 32, 64)


def _stages(spec, params: dict, n_stages: int) -> list[list]:
    """The spec's blocks, grouped by the stage that sampled them."""
    stages, start = [], 0
    for i in range(1, n_stages + 1):
        depth = params[f"s{i}_depth"]
        stages.append(list(spec.blocks[start : start + depth]))
        start += depth
    assert start == len(spec.blocks)
    return stages


@pytest.fixture(scope="module", params=sorted(SPACES))
def samples(request):
    """(space, [(resolution, spec, trial params)]): 25 random samples at each resolution."""
    space = SPACES[request.param]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for resolution in RESOLUTIONS:
        for _ in range(25):
            trial = study.ask()
            out.append((resolution, sample_arch(trial, space, 3, resolution, 7), trial.params))
    return space, out


def test_samples_stay_within_the_declared_choices(samples):
    space, sampled = samples
    for resolution, spec, params in sampled:
        assert (spec.in_chs, spec.num_classes) == (3, 7)
        assert spec.stem_chs in space.stem_widths and spec.head_chs in space.head_widths
        assert (spec.fc_chs or 0) in space.fc_widths
        stem_stride, strides = stride_schedule(resolution, len(space.stages))
        assert spec.stem_stride == stem_stride
        in_chs = spec.stem_chs
        for i, (choices, blocks, stride) in enumerate(zip(space.stages, _stages(spec, params, len(space.stages)), strides), 1):
            assert len(blocks) in choices.depths
            assert [b.stride for b in blocks] == [stride] + [1] * (len(blocks) - 1)
            ratio = params[f"s{i}_expand"]
            assert ratio in space.expand_ratios
            for b in blocks:
                # One choice of kernel, width, activation and SE per stage.
                assert (b.kernel, b.out_chs, b.act) == (blocks[0].kernel, blocks[0].out_chs, blocks[0].act)
                assert b.kernel in space.kernels and b.out_chs in choices.widths and b.act in space.activations
                assert b.expand_chs == make_divisible(in_chs * ratio)
                assert b.se_chs == (make_divisible(b.expand_chs // 4) if params[f"s{i}_se"] else None)
                in_chs = b.out_chs


def test_every_declared_choice_can_be_sampled(samples):
    space, sampled = samples
    specs = [spec for _, spec, _ in sampled]
    assert {s.stem_chs for s in specs} == set(space.stem_widths)
    assert {s.head_chs for s in specs} == set(space.head_widths)
    assert {s.fc_chs or 0 for s in specs} == set(space.fc_widths)
    blocks = [b for s in specs for b in s.blocks]
    assert {b.kernel for b in blocks} == set(space.kernels)
    assert {b.act for b in blocks} == set(space.activations)
    assert {p[f"s{i}_expand"] for _, _, p in sampled for i in range(1, len(space.stages) + 1)} == set(space.expand_ratios)
    for i, choices in enumerate(space.stages):
        stages = [_stages(spec, p, len(space.stages))[i] for _, spec, p in sampled]
        assert {len(b) for b in stages} == set(choices.depths)
        assert {b[0].out_chs for b in stages} == set(choices.widths)


def test_make_divisible_is_torchvision_s_rule():
    for divisor in (4, 8):
        for value in [v / 4 for v in range(1, 2400)]:
            assert make_divisible(value, divisor) == _make_divisible(value, divisor), (value, divisor)


def test_get_space_names_the_known_spaces():
    assert get_space("tiny") is SPACES["tiny"]
    with pytest.raises(ValueError, match="unknown search space 'huge'; choose one of: mbv3, compact, tiny"):
        get_space("huge")
