"""The space of a study of one's own network: how to compress it, never which network.

A trial samples a structured prune ratio, either one share for every layer (uniform)
or one per stage of the network (``search.stages.prune.layer_stages``: its feature-map
resolutions), the channel rounding of the pruned widths, the quantization mode, and
for int8-static the calibration method and the number of calibration images.

Parameters are conditional: rounding only where something is pruned, the stage ratios
only in per-stage mode, calibration only for int8-static. An unpruned candidate thus
has one form, so the original network fp32 and int8 (the study's baselines) is the
candidate a sampled trial without pruning repeats, not a look-alike trained again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import optuna

from .compression import CALIB_METHODS, MAX_PRUNE_RATIO, QUANT_MODES

PRUNE_MODES = ("uniform", "per-stage")
# Calibration sizes sampled, as multiples of the study's --calib-samples: the tutorial's
# 100-1000 images around the default 256.
CALIB_SCALES = (0.25, 1, 4)


@dataclass(frozen=True)
class ModelCompression:
    """How one trial compresses the user's network."""

    prune_ratio: float = 0.0  # uniform: the share of channels removed from every prunable layer
    stage_ratios: tuple[float, ...] = ()  # per stage instead, first stage first (empty: uniform)
    channel_round: int = 1  # pruned channel counts are multiples of this
    quant: str = "fp32"
    calib_method: str | None = None  # int8-static only
    calib_samples: int | None = None  # int8-static only: training images the ranges are taken on

    def __post_init__(self) -> None:
        for r in (self.prune_ratio, *self.stage_ratios):
            if not 0.0 <= r <= MAX_PRUNE_RATIO:
                raise ValueError(f"prune ratio must be in [0, {MAX_PRUNE_RATIO}], got {r}")
        if self.stage_ratios and self.prune_ratio:
            raise ValueError("a prune ratio is uniform or per stage, not both")
        if self.channel_round < 1:
            raise ValueError(f"channel rounding must be >= 1, got {self.channel_round}")
        if self.quant not in QUANT_MODES:
            raise ValueError(f"quantization must be one of {QUANT_MODES}, got {self.quant!r}")
        static = self.quant == "int8-static"
        if static != (self.calib_method is not None) or static != (self.calib_samples is not None):
            raise ValueError("a calibration method and size are given exactly when quantization is int8-static")
        if self.calib_method is not None and self.calib_method not in CALIB_METHODS:
            raise ValueError(f"calibration method must be one of {CALIB_METHODS}, got {self.calib_method!r}")

    @property
    def pruned(self) -> bool:
        return max(self.stage_ratios, default=self.prune_ratio) > 0

    def describe_pruning(self) -> str:
        """For people: ``unpruned``, ``pruned 0.5, round 8``, ``pruned 0.2/0.5/0.7 by stage, round 8``."""
        if not self.pruned:
            return "unpruned"
        ratios = "/".join(f"{r:g}" for r in self.stage_ratios) + " by stage" if self.stage_ratios else f"{self.prune_ratio:g}"
        return f"pruned {ratios}, round {self.channel_round}"

    def __str__(self) -> str:
        ratios = "-".join(f"{r:g}" for r in self.stage_ratios) if self.stage_ratios else f"{self.prune_ratio:g}"
        quant = self.quant + (f"/{self.calib_method}/{self.calib_samples}" if self.calib_method else "")
        return f"prune{ratios}_round{self.channel_round}_{quant}"


_SPEC_STRING = re.compile(
    r"prune(?P<ratios>[0-9.]+(?:-[0-9.]+)*)_round(?P<round>[0-9]+)_(?P<quant>[a-z0-9-]+)"
    r"(?:/(?P<calib>[a-z]+)/(?P<samples>[0-9]+))?"
)


def parse_model_compression(text: str) -> ModelCompression:
    """The spec that prints as ``text`` (``parse_model_compression(str(spec)) == spec``);
    raises ``ValueError`` saying what is wrong."""
    m = _SPEC_STRING.fullmatch(text)
    if m is None:
        raise ValueError(
            f"compression string {text!r} is not of the form prune<ratio or r1-r2-..>_round<N>_<quant>[/<method>/<images>]"
        )
    try:
        ratios = tuple(float(r) for r in m["ratios"].split("-"))
    except ValueError:
        raise ValueError(f"compression string {text!r}: prune ratios {m['ratios']!r} are not numbers") from None
    uniform, stages = (ratios[0], ()) if len(ratios) == 1 else (0.0, ratios)
    samples = int(m["samples"]) if m["samples"] else None
    return ModelCompression(uniform, stages, int(m["round"]), m["quant"], m["calib"], samples)


def sample_model_compression(
    trial: optuna.Trial,
    n_stages: int,
    quant_modes: Sequence[str],
    channel_rounds: Sequence[int],
    prune_ratios: Sequence[float],
    calib_samples: int,
) -> ModelCompression:
    """Sample how to compress a network of ``n_stages`` stages; the target decides which
    quantization modes, roundings and ratios suit it; ``calib_samples`` is the middle of
    the calibration sizes tried."""
    ratios = tuple(prune_ratios)
    mode = trial.suggest_categorical("prune_mode", PRUNE_MODES if n_stages > 1 else PRUNE_MODES[:1])
    uniform, stages = 0.0, ()
    if mode == "uniform":
        uniform = trial.suggest_categorical("prune_ratio", ratios)
    else:
        stages = tuple(trial.suggest_categorical(f"prune_ratio_stage{i}", ratios) for i in range(n_stages))
        if max(stages) == 0:
            stages = ()  # nothing pruned: the unpruned candidate has one form
    pruned = uniform > 0 or bool(stages)
    channel_round = trial.suggest_categorical("channel_round", tuple(channel_rounds)) if pruned else 1
    quant = trial.suggest_categorical("quant", tuple(quant_modes))
    method = samples = None
    if quant == "int8-static":
        method = trial.suggest_categorical("calib_method", CALIB_METHODS)
        samples = trial.suggest_categorical("calib_samples", calib_sizes(calib_samples))
    return ModelCompression(uniform, stages, channel_round, quant, method, samples)


def calib_sizes(calib_samples: int) -> tuple[int, ...]:
    return tuple(sorted({max(1, round(calib_samples * s)) for s in CALIB_SCALES}))


def model_compression_params(comp: ModelCompression) -> dict:
    """The parameters :func:`sample_model_compression` draws for ``comp`` (to enqueue it)."""
    params: dict = {"prune_mode": "per-stage" if comp.stage_ratios else "uniform"}
    if comp.stage_ratios:
        params.update({f"prune_ratio_stage{i}": r for i, r in enumerate(comp.stage_ratios)})
    else:
        params["prune_ratio"] = comp.prune_ratio
    if comp.pruned:
        params["channel_round"] = comp.channel_round
    params["quant"] = comp.quant
    if comp.calib_method is not None:
        params["calib_method"] = comp.calib_method
        params["calib_samples"] = comp.calib_samples
    return params
