"""The designs an engineer would try by hand, as the first trials of every new study.

MobileNetV3-Small at torchvision's widths, each as fp32 and as the target's int8-static,
unpruned, are enqueued once, when the study is created: they count towards the budget,
train with the same proxy budget as every trial, and the report draws them as reference
points (trial attribute ``baseline``). Each trains the exact torchvision network (its
strides set for the data's resolution), which no search space builds; its parameters
are those of the space's nearest point (``spaces.nearest_params``), so that the samplers
see every trial with the same parameters.

A study of one's own network starts instead from the network itself, unpruned, as fp32
and as the target's int8-static (:func:`original_baselines`): what the compression has
to beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

import spaces
from spaces import ArchSpec, CompressionSpec, MobileNetV3Space, ModelCompression, model_compression_params

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


def original_baselines(target: Target, calib_samples: int) -> tuple[dict[str, ModelCompression], dict[str, str]]:
    """One's own network unpruned, as fp32 and as the target's int8-static (calibrated on
    ``calib_samples`` images, the middle of the sizes the space samples), by name; and
    those the target cannot run, each with why."""
    chosen, skipped = {}, {}
    for quant in QUANT_MODES:
        name = f"{attrs.ORIGINAL_BASELINE}{quant}"
        why = _why_not(target, quant)
        if why:
            skipped[name] = why
            continue
        static = quant == "int8-static"
        chosen[name] = ModelCompression(0.0, (), 1, quant, CALIB_METHOD if static else None, calib_samples if static else None)
    return chosen, skipped


def enqueue_baselines(study: optuna.Study, space: MobileNetV3Space, baselines: list[Baseline], skipped: dict) -> bool:
    """Enqueue the baselines into a study that has no trials yet, once (call it under the
    study's start lock: two workers starting together enqueue them once between them).
    Returns whether they were enqueued now."""
    return _enqueue(study, [
        (b.name, str(b.arch), {**spaces.nearest_params(space, b.arch), **spaces.compression_params(b.compression)})
        for b in baselines
    ], skipped)


def enqueue_originals(study: optuna.Study, model: str, originals: dict[str, ModelCompression], skipped: dict) -> bool:
    """As :func:`enqueue_baselines`, for one's own network ``model`` (its --model name)."""
    return _enqueue(study, [(name, model, model_compression_params(c)) for name, c in originals.items()], skipped)


def _enqueue(study: optuna.Study, trials: list[tuple[str, str, dict]], skipped: dict) -> bool:
    """Enqueue (name, arch_sampled, parameters) once, into a study without trials."""
    if attrs.STUDY_BASELINES in study.user_attrs or study.get_trials(deepcopy=False):
        return False
    for name, arch, params in trials:
        study.enqueue_trial(params, user_attrs={attrs.BASELINE: name, attrs.ARCH_SAMPLED: arch})
    study.set_user_attr(attrs.STUDY_BASELINES, {"enqueued": [name for name, _, _ in trials], "skipped": skipped})
    return True
