"""Search spaces: what a trial may sample, and how a sample becomes a network."""

from __future__ import annotations

from dataclasses import dataclass

from .arch import ArchSpec, BlockSpec, parse_arch
from .build import MobileNetV3Like, arch_of, build_model
from .compression import (
    CALIB_METHODS,
    QUANT_MODES,
    CompressionSpec,
    compression_params,
    parse_compression,
    sample_compression,
)
from .compression_only import (
    PRUNE_MODES,
    ModelCompression,
    model_compression_params,
    parse_model_compression,
    sample_model_compression,
)
from .mobilenetv3 import (
    MOBILENET_V3_LARGE,
    MOBILENET_V3_SMALL,
    SPACES,
    MobileNetV3Space,
    mobilenet_v3_small,
    nearest_params,
    sample_arch,
    stride_schedule,
)


@dataclass(frozen=True)
class Candidate:
    """What one trial evaluates: a network and how to compress it."""

    arch: ArchSpec
    compression: CompressionSpec


def get_space(name: str) -> MobileNetV3Space:
    try:
        return SPACES[name]
    except KeyError:
        raise ValueError(f"unknown search space {name!r}; choose one of: {', '.join(SPACES)}") from None


__all__ = [
    "ArchSpec",
    "BlockSpec",
    "CALIB_METHODS",
    "Candidate",
    "CompressionSpec",
    "MOBILENET_V3_LARGE",
    "MOBILENET_V3_SMALL",
    "MobileNetV3Like",
    "MobileNetV3Space",
    "ModelCompression",
    "PRUNE_MODES",
    "QUANT_MODES",
    "SPACES",
    "arch_of",
    "build_model",
    "compression_params",
    "get_space",
    "mobilenet_v3_small",
    "model_compression_params",
    "nearest_params",
    "parse_arch",
    "parse_compression",
    "parse_model_compression",
    "sample_arch",
    "sample_compression",
    "sample_model_compression",
    "stride_schedule",
]
