"""The designs an engineer would try by hand, as the first trials of every new study.

MobileNetV3-Small at torchvision's widths, each as fp32 and as the target's int8-static,
unpruned, are enqueued once, when the study is created: they count towards the budget,
train with the same proxy budget as every trial, and the report draws them as reference
points (trial attribute ``baseline``). Each trains the exact torchvision network (its
strides set for the data's resolution), which no search space builds; its parameters
are those of the space's nearest point (``spaces.nearest_params``), so that the samplers
see every trial with the same parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

import spaces
from spaces import ArchSpec, CompressionSpec, MobileNetV3Space

from ..targets import Target
from . import attrs

WIDTHS = (0.35, 0.5, 0.75, 1.0)
QUANT_MODES = ("fp32", "int8-static")
CALIB_METHOD = "minmax"  # ONNX Runtime's default: what a quantization by hand uses


@dataclass(frozen=True)
class Baseline:
    name: str
    arch: ArchSpec
    compression: CompressionSpec


def study_baselines(
    space: MobileNetV3Space, target: Target, in_chs: int, resolution: int, num_classes: int
) -> tuple[list[Baseline], dict[str, str]]:
    """The baselines a study of this space, target and data starts with, and those it
    cannot run, each with why."""
    chosen, skipped = [], {}
    for width in WIDTHS:
        arch = spaces.mobilenet_v3_small(width, in_chs, resolution, num_classes)
        for quant in QUANT_MODES:
            name = f"mnv3-small-{width:g}-{quant}"
            why = _why_not(target, quant)
            if why:
                skipped[name] = why
                continue
            comp = CompressionSpec(0.0, target.channel_rounds[0], quant, CALIB_METHOD if quant == "int8-static" else None)
            chosen.append(Baseline(name, arch, comp))
    return chosen, skipped


def _why_not(target: Target, quant: str) -> str | None:
    if quant not in target.quant_modes:
        return f"target {target.name} offers no {quant} (its modes: {', '.join(target.quant_modes)})"
    if 0.0 not in target.prune_ratios:
        return f"target {target.name} offers no unpruned candidates (prune ratios {target.prune_ratios})"
    return None


def enqueue_baselines(study: optuna.Study, space: MobileNetV3Space, baselines: list[Baseline], skipped: dict) -> bool:
    """Enqueue the baselines into a study that has no trials yet, once (call it under the
    study's start lock: two workers starting together enqueue them once between them).
    Returns whether they were enqueued now."""
    if attrs.STUDY_BASELINES in study.user_attrs or study.get_trials(deepcopy=False):
        return False
    for b in baselines:
        study.enqueue_trial(
            {**spaces.nearest_params(space, b.arch), **spaces.compression_params(b.compression)},
            user_attrs={attrs.BASELINE: b.name, attrs.ARCH_SAMPLED: str(b.arch)},
        )
    study.set_user_attr(attrs.STUDY_BASELINES, {"enqueued": [b.name for b in baselines], "skipped": skipped})
    return True
