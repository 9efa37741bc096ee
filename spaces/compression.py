"""How a trial compresses its network: structured prune ratio and quantization mode."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import optuna

QUANT_MODES = ("fp32", "fp16", "int8-dynamic", "int8-static")
CALIB_METHODS = ("minmax", "entropy", "percentile")
MAX_PRUNE_RATIO = 0.7


@dataclass(frozen=True)
class CompressionSpec:
    prune_ratio: float = 0.0  # fraction of channels removed from each prunable layer
    channel_round: int = 1  # pruned channel counts are multiples of this
    quant: str = "fp32"
    calib_method: str | None = None  # int8-static only

    def __post_init__(self) -> None:
        if not 0.0 <= self.prune_ratio <= MAX_PRUNE_RATIO:
            raise ValueError(f"prune ratio must be in [0, {MAX_PRUNE_RATIO}], got {self.prune_ratio}")
        if self.channel_round < 1:
            raise ValueError(f"channel rounding must be >= 1, got {self.channel_round}")
        if self.quant not in QUANT_MODES:
            raise ValueError(f"quantization must be one of {QUANT_MODES}, got {self.quant!r}")
        if (self.quant == "int8-static") != (self.calib_method is not None):
            raise ValueError("a calibration method is given exactly when quantization is int8-static")
        if self.calib_method is not None and self.calib_method not in CALIB_METHODS:
            raise ValueError(f"calibration method must be one of {CALIB_METHODS}, got {self.calib_method!r}")

    def __str__(self) -> str:
        quant = self.quant + (f"/{self.calib_method}" if self.calib_method else "")
        return f"prune{self.prune_ratio:g}_round{self.channel_round}_{quant}"


_SPEC_STRING = re.compile(r"prune(?P<ratio>[0-9.e+-]+)_round(?P<round>[0-9]+)_(?P<quant>[a-z0-9-]+)(?:/(?P<calib>[a-z]+))?")


def parse_compression(text: str) -> CompressionSpec:
    """The spec that prints as ``text`` (``parse_compression(str(spec)) == spec``); raises
    ``ValueError`` saying what is wrong."""
    m = _SPEC_STRING.fullmatch(text)
    if m is None:
        raise ValueError(f"compression string {text!r} is not of the form prune<ratio>_round<N>_<quant>[/<calibration>]")
    try:
        ratio = float(m["ratio"])
    except ValueError:
        raise ValueError(f"compression string {text!r}: prune ratio {m['ratio']!r} is not a number") from None
    return CompressionSpec(ratio, int(m["round"]), m["quant"], m["calib"])


def sample_compression(
    trial: optuna.Trial,
    quant_modes: Sequence[str],
    channel_rounds: Sequence[int],
    prune_ratios: Sequence[float],
) -> CompressionSpec:
    """Sample how to compress; the target decides which quantization modes and roundings suit it."""
    prune_ratio = trial.suggest_categorical("prune_ratio", tuple(prune_ratios))
    channel_round = trial.suggest_categorical("channel_round", tuple(channel_rounds))
    quant = trial.suggest_categorical("quant", tuple(quant_modes))
    calib = trial.suggest_categorical("calib_method", CALIB_METHODS) if quant == "int8-static" else None
    return CompressionSpec(prune_ratio=prune_ratio, channel_round=channel_round, quant=quant, calib_method=calib)


def compression_params(comp: CompressionSpec) -> dict:
    """The parameters :func:`sample_compression` draws for ``comp`` (to enqueue it)."""
    params = {"prune_ratio": comp.prune_ratio, "channel_round": comp.channel_round, "quant": comp.quant}
    if comp.calib_method is not None:
        params["calib_method"] = comp.calib_method
    return params
