"""Structured pruning: channels physically removed, not zeroed.

Torch-Pruning's dependency graph finds the channels that must go together (a residual
sum's inputs, a depthwise conv and the convs around it, squeeze-excite's scale), the
L2 magnitude of each group ranks them, and every prunable layer loses the same share,
its kept width rounded to the nearest multiple of ``channel_round`` (odd widths can
make a smaller network slower). Because the share is the same everywhere, the pruned
*shapes* depend only on the ratio and the rounding, not on the weights: the cost stage
can predict them on an untrained network.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch_pruning as tp

from spaces import MobileNetV3Like, arch_of

from .train import recalibrate_batchnorm


def prune(
    model: MobileNetV3Like,
    ratio: float,
    channel_round: int,
    example_input: torch.Tensor,
    steps: int = 1,
    bn_data: torch.Tensor | None = None,
    finetune: Callable[[MobileNetV3Like, int], None] | None = None,
) -> MobileNetV3Like:
    """Remove ``ratio`` of the channels of every prunable layer, in ``steps`` steps.

    After each step the batch-norm statistics are recomputed on ``bn_data`` (training
    images) and ``finetune(model, step)`` runs (iterative pruning: prune a little,
    recover, prune again). The model is changed in place; its ``spec`` becomes the
    spec derived from its real channel counts.
    """
    if ratio <= 0:
        return model
    model.eval()
    pruner = _NearestRoundingPruner(
        model,
        example_input,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        iterative_steps=steps,
        # The class count is fixed by the data set.
        ignored_layers=[model.classifier[-1]],
        round_to=channel_round if channel_round > 1 else None,
    )
    for step in range(steps):
        pruner.step()
        model.spec = arch_of(model)
        if bn_data is not None:
            recalibrate_batchnorm(model, bn_data)
        if finetune is not None:
            finetune(model, step)
    return model


class _NearestRoundingPruner(tp.pruner.MetaPruner):
    """Torch-Pruning rounds the kept width *down* to the multiple, so at ratio 0.5 a
    24-channel layer kept 8 (and at 0.7 kept all 24, having rounded to zero). Narrow
    layers are where the network can least afford it: the kept width goes to the
    nearest multiple, and never below one multiple."""

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        kept = round_to * max(1, math.floor((current_channels - n_pruned) / round_to + 0.5))
        return max(current_channels - kept, 0)
