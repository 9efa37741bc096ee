"""What a network costs, from its shapes alone: known before any training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int  # multiply-accumulates of one batch-1 forward pass


def count_cost(model: nn.Module, in_chs: int, resolution: int) -> Cost:
    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, in_chs, resolution, resolution))
    model.train(was_training)
    # The counter reports 2 FLOPs per multiply-accumulate of convs and matmuls.
    return Cost(params=params, macs=counter.get_total_flops() // 2)
