"""The MobileNetV3-style search space: which architectures a trial may sample.

A space is a set of per-stage choices (depth, kernel, expansion ratio, width,
squeeze-excite, activation) plus stem, head and classifier widths. Every parameter is
sampled in every trial (no conditional parameters), so the multi-objective samplers
see one fixed space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna

from .arch import ArchSpec, BlockSpec, parse_arch

# torchvision's mobilenet_v3_small and mobilenet_v3_large at 1000 classes, written in
# our grammar. Tests build these and load torchvision's weights into them.
MOBILENET_V3_SMALL = parse_arch(
    "in3-stem16_s2_hs-ir_k3_s2_c16_se8_re-ir_k3_s2_x72_c24_re-ir_k3_s1_x88_c24_re"
    "-ir_k5_s2_x96_c40_se24_hs-ir_r2_k5_s1_x240_c40_se64_hs-ir_k5_s1_x120_c48_se32_hs"
    "-ir_k5_s1_x144_c48_se40_hs-ir_k5_s2_x288_c96_se72_hs-ir_r2_k5_s1_x576_c96_se144_hs"
    "-conv576_hs-fc1024_hs-cls1000"
)
MOBILENET_V3_LARGE = parse_arch(
    "in3-stem16_s2_hs-ir_k3_s1_c16_re-ir_k3_s2_x64_c24_re-ir_k3_s1_x72_c24_re"
    "-ir_k5_s2_x72_c40_se24_re-ir_r2_k5_s1_x120_c40_se32_re-ir_k3_s2_x240_c80_hs"
    "-ir_k3_s1_x200_c80_hs-ir_r2_k3_s1_x184_c80_hs-ir_k3_s1_x480_c112_se120_hs"
    "-ir_k3_s1_x672_c112_se168_hs-ir_k5_s2_x672_c160_se168_hs-ir_r2_k5_s1_x960_c160_se240_hs"
    "-conv960_hs-fc1280_hs-cls1000"
)


@dataclass(frozen=True)
class StageChoices:
    widths: tuple[int, ...]
    depths: tuple[int, ...]


@dataclass(frozen=True)
class MobileNetV3Space:
    """Choices of one search space. ``fc_widths`` 0 means no hidden classifier layer."""

    name: str
    stem_widths: tuple[int, ...]
    stages: tuple[StageChoices, ...]
    head_widths: tuple[int, ...]
    fc_widths: tuple[int, ...]
    kernels: tuple[int, ...] = (3, 5, 7)
    expand_ratios: tuple[float, ...] = (2, 3, 4, 6)
    activations: tuple[str, ...] = ("re", "hs")


SPACES: dict[str, MobileNetV3Space] = {
    # Five stages with MobileNetV3-like widths, sized for small images (8-64 px).
    "mbv3": MobileNetV3Space(
        name="mbv3",
        stem_widths=(8, 16, 24),
        stages=(
            StageChoices(widths=(16, 24), depths=(1, 2)),
            StageChoices(widths=(24, 32, 40), depths=(1, 2, 3)),
            StageChoices(widths=(40, 48, 64), depths=(1, 2, 3)),
            StageChoices(widths=(64, 80, 96), depths=(1, 2, 3)),
            StageChoices(widths=(96, 112, 128), depths=(1, 2, 3)),
        ),
        head_widths=(128, 256, 512),
        fc_widths=(0, 256, 512),
    ),
    # Three narrow stages for tiny images (8-16 px, such as digits), where a proxy
    # training must take seconds on a CPU.
    "compact": MobileNetV3Space(
        name="compact",
        stem_widths=(8, 16),
        stages=(
            StageChoices(widths=(16, 24), depths=(1, 2)),
            StageChoices(widths=(24, 32, 48), depths=(1, 2)),
            StageChoices(widths=(32, 48, 64), depths=(1, 2)),
        ),
        head_widths=(64, 128, 256),
        fc_widths=(0, 128),
        kernels=(3, 5),
    ),
    # Two small stages: for tests and smoke runs, where each trial must take seconds.
    "tiny": MobileNetV3Space(
        name="tiny",
        stem_widths=(8,),
        stages=(
            StageChoices(widths=(8, 16), depths=(1,)),
            StageChoices(widths=(16, 24), depths=(1, 2)),
        ),
        head_widths=(32, 64),
        fc_widths=(0, 64),
        kernels=(3, 5),
        expand_ratios=(2, 4),
    ),
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor``, never more than 10% down (torchvision's rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def stride_schedule(resolution: int, num_stages: int) -> tuple[int, list[int]]:
    """Stem stride and per-stage strides for an input of ``resolution`` pixels.

    Downsample until the last feature map is about 4x4 (7x7 at 224 px, as MobileNetV3):
    ``floor(log2(resolution / 4))`` stride-2 layers. Large images stride in the stem,
    where a full-resolution conv would dominate the cost; the rest go to the earliest
    stages, so the deep, wide stages run at the small resolution.
    """
    n_down = max(0, int(math.floor(math.log2(max(resolution, 1) / 4))))
    stem_stride = 2 if resolution >= 64 and n_down > 0 else 1
    n_stage_down = min(n_down - (stem_stride == 2), num_stages)
    return stem_stride, [2 if i < n_stage_down else 1 for i in range(num_stages)]


def sample_arch(
    trial: optuna.Trial, space: MobileNetV3Space, in_chs: int, resolution: int, num_classes: int
) -> ArchSpec:
    """Sample one architecture from ``space`` for inputs of the given shape."""
    stem_stride, strides = stride_schedule(resolution, len(space.stages))
    stem_chs = trial.suggest_categorical("stem", space.stem_widths)
    blocks: list[BlockSpec] = []
    in_stage = stem_chs
    for i, (stage, stride) in enumerate(zip(space.stages, strides), start=1):
        depth = trial.suggest_categorical(f"s{i}_depth", stage.depths)
        width = trial.suggest_categorical(f"s{i}_width", stage.widths)
        kernel = trial.suggest_categorical(f"s{i}_kernel", space.kernels)
        ratio = trial.suggest_categorical(f"s{i}_expand", space.expand_ratios)
        use_se = trial.suggest_categorical(f"s{i}_se", (False, True))
        act = trial.suggest_categorical(f"s{i}_act", space.activations)
        for j in range(depth):
            block_in = in_stage if j == 0 else width
            expand = make_divisible(block_in * ratio)
            blocks.append(
                BlockSpec(
                    kernel=kernel,
                    stride=stride if j == 0 else 1,
                    out_chs=width,
                    act=act,
                    expand_chs=expand,
                    se_chs=make_divisible(expand // 4) if use_se else None,
                )
            )
        in_stage = width
    fc = trial.suggest_categorical("fc", space.fc_widths)
    return ArchSpec(
        in_chs=in_chs,
        stem_chs=stem_chs,
        stem_stride=stem_stride,
        stem_act="hs",
        blocks=tuple(blocks),
        head_chs=trial.suggest_categorical("head", space.head_widths),
        head_act="hs",
        fc_chs=fc or None,
        fc_act="hs",
        num_classes=num_classes,
    )


def mobilenet_v3_small(width: float, in_chs: int, resolution: int, num_classes: int) -> ArchSpec:
    """torchvision's ``mobilenet_v3_small(width_mult=width)`` for inputs of the given
    shape: every width scaled as torchvision scales it (to a multiple of 8, never more
    than 10% down; squeeze widths a quarter of the expanded ones; the head conv six
    times the last block's width), the strides of its four downsampling stages and
    stem set by :func:`stride_schedule` for the resolution."""
    ref = MOBILENET_V3_SMALL
    n_stages = sum(b.stride == 2 for b in ref.blocks)
    stem_stride, strides = stride_schedule(resolution, n_stages)
    stem = make_divisible(ref.stem_chs * width)
    blocks, block_in, stage = [], stem, -1
    for b in ref.blocks:
        stage += b.stride == 2
        expand = make_divisible(b.expand_chs * width) if b.expand_chs is not None else block_in
        out = make_divisible(b.out_chs * width)
        blocks.append(
            BlockSpec(
                kernel=b.kernel,
                stride=strides[stage] if b.stride == 2 else 1,
                out_chs=out,
                act=b.act,
                expand_chs=expand if expand != block_in else None,  # torchvision's rule for the 1x1 expansion
                se_chs=make_divisible(expand // 4) if b.se_chs is not None else None,
            )
        )
        block_in = out
    return ArchSpec(
        in_chs=in_chs,
        stem_chs=stem,
        stem_stride=stem_stride,
        stem_act=ref.stem_act,
        blocks=tuple(blocks),
        head_chs=6 * block_in,
        head_act=ref.head_act,
        fc_chs=make_divisible(ref.fc_chs * width),
        fc_act=ref.fc_act,
        num_classes=num_classes,
    )


def nearest_params(space: MobileNetV3Space, arch: ArchSpec) -> dict:
    """The parameters of the point of ``space`` nearest to ``arch``: where the samplers
    file a network the space cannot build exactly (a baseline), so that every trial of
    a study has the same parameters. The blocks are dealt to the space's stages in
    order, as evenly as possible; each choice is the one nearest to what its blocks have."""
    n, k = len(arch.blocks), len(space.stages)
    in_chs = arch.block_in_chs()
    bounds = [round(i * n / k) for i in range(k + 1)]
    params = {"stem": _nearest(space.stem_widths, arch.stem_chs)}
    for i, stage in enumerate(space.stages, start=1):
        idx = range(bounds[i - 1], max(bounds[i], bounds[i - 1] + 1)) if bounds[i - 1] < n else range(n - 1, n)
        blocks = [arch.blocks[j] for j in idx]
        ratios = [(arch.blocks[j].expand_chs or in_chs[j]) / in_chs[j] for j in idx]
        acts = [b.act for b in blocks if b.act in space.activations] or [space.activations[0]]
        params[f"s{i}_depth"] = _nearest(stage.depths, len(blocks))
        params[f"s{i}_width"] = _nearest(stage.widths, blocks[-1].out_chs)
        params[f"s{i}_kernel"] = _nearest(space.kernels, sorted(b.kernel for b in blocks)[len(blocks) // 2])
        params[f"s{i}_expand"] = _nearest(space.expand_ratios, sum(ratios) / len(ratios))
        params[f"s{i}_se"] = 2 * sum(b.se_chs is not None for b in blocks) >= len(blocks)
        params[f"s{i}_act"] = max(set(acts), key=acts.count)
    params["fc"] = _nearest(space.fc_widths, arch.fc_chs or 0)
    params["head"] = _nearest(space.head_widths, arch.head_chs)
    return params


def _nearest(choices, value):
    return min(choices, key=lambda c: (abs(c - value), c))
