"""Structured pruning: channels physically removed, not zeroed.

Torch-Pruning's dependency graph finds the channels that must go together (a residual
sum's inputs, a depthwise conv and the convs around it, squeeze-excite's scale), the
L2 magnitude of each group ranks them, and every prunable layer loses the same share,
its kept width rounded to the nearest multiple of ``channel_round`` (odd widths can
make a smaller network slower). Because the share is the same everywhere, the pruned
*shapes* depend only on the ratio and the rounding, not on the weights: the cost stage
can predict them on an untrained network.

Any torchvision-style network prunes the same way: the layer that produces the output
keeps its width (the class count is fixed by the data set), and the input conv keeps
its in-channels (the image's are not the network's to choose: Torch-Pruning has no
producer of the input to remove them from). Instead of one share everywhere, a share
per *stage* may be given: a stage is the layers working at one feature-map resolution
(:func:`layer_stages`), which is what a ResNet's ``layer1..4`` or a MobileNet's
stride groups are, found without knowing the network's names.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch_pruning as tp
from torch import nn

from spaces import MobileNetV3Like, arch_of

from .train import recalibrate_batchnorm

_LAYERS = (nn.Conv2d, nn.Linear)


def prune(
    model: nn.Module,
    ratio: float,
    channel_round: int,
    example_input: torch.Tensor,
    steps: int = 1,
    bn_data: torch.Tensor | None = None,
    finetune: Callable[[nn.Module, int], None] | None = None,
    stage_ratios: Sequence[float] = (),
) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable layer (or, given
    ``stage_ratios``, each stage's own share: one per stage of :func:`layer_stages`),
    in ``steps`` steps.

    After each step the batch-norm statistics are recomputed on ``bn_data`` (training
    images) and ``finetune(model, step)`` runs (iterative pruning: prune a little,
    recover, prune again). The model is changed in place; a MobileNetV3Like's ``spec``
    becomes the spec derived from its real channel counts.
    """
    if max(stage_ratios, default=ratio) <= 0:
        return model
    model.eval()
    per_layer = None
    if stage_ratios:
        stages = layer_stages(model, example_input)
        if len(stage_ratios) != max(stages.values()) + 1:
            raise ValueError(f"{len(stage_ratios)} stage ratios for a network of {max(stages.values()) + 1} stages")
        per_layer = {layer: stage_ratios[s] for layer, s in stages.items()}
    pruner = _NearestRoundingPruner(
        model,
        example_input,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        pruning_ratio_dict=per_layer,  # covers ``ratio`` layer by layer where given
        iterative_steps=steps,
        # The class count is fixed by the data set.
        ignored_layers=[output_layer(model, example_input)],
        round_to=channel_round if channel_round > 1 else None,
    )
    for step in range(steps):
        pruner.step()
        if isinstance(model, MobileNetV3Like):
            model.spec = arch_of(model)
        if bn_data is not None:
            recalibrate_batchnorm(model, bn_data)
        if finetune is not None:
            finetune(model, step)
    return model


def output_layer(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """The conv or linear layer that produces the network's output: the last one run."""
    order = _run_order(model, example_input)
    if not order:
        raise ValueError("the network has no Conv2d or Linear layer to prune")
    return order[-1][0]


def layer_stages(model: nn.Module, example_input: torch.Tensor) -> dict[nn.Module, int]:
    """Each conv and linear layer's stage: 0 for the first feature-map resolution a conv
    outputs, 1 for the next smaller one, and so on. A layer whose output is pooled to
    one pixel (squeeze-excite, the classifier) belongs to the stage it runs in, the one
    of the last layer before it with a larger output, so that it shares that stage's
    share with the block it sits in."""
    sizes = sorted({hw for _, hw in _run_order(model, example_input) if hw > 1}, reverse=True)
    stage_of_size = {hw: i for i, hw in enumerate(sizes)}
    stages, current = {}, 0
    for layer, hw in _run_order(model, example_input):
        if hw > 1:
            current = stage_of_size[hw]
        stages.setdefault(layer, current)  # a layer run twice stays where it first ran
    return stages


def count_stages(model: nn.Module, example_input: torch.Tensor) -> int:
    return max(layer_stages(model, example_input).values()) + 1


@torch.no_grad()
def _run_order(model: nn.Module, example_input: torch.Tensor) -> list[tuple[nn.Module, int]]:
    """The conv and linear layers in the order the forward pass runs them, each with its
    output's spatial size in pixels (1 for a linear layer)."""
    order: list[tuple[nn.Module, int]] = []

    def seen(layer, _inputs, output):
        order.append((layer, output.shape[-1] * output.shape[-2] if output.dim() == 4 else 1))

    hooks = [m.register_forward_hook(seen) for m in model.modules() if isinstance(m, _LAYERS)]
    try:
        model.eval()(example_input)
    finally:
        for h in hooks:
            h.remove()
    return order


class _NearestRoundingPruner(tp.pruner.MetaPruner):
    """Torch-Pruning rounds the kept width *down* to the multiple, so at ratio 0.5 a
    24-channel layer kept 8 (and at 0.7 kept all 24, having rounded to zero). Narrow
    layers are where the network can least afford it: the kept width goes to the
    nearest multiple, and never below one multiple."""

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        kept = round_to * max(1, math.floor((current_channels - n_pruned) / round_to + 0.5))
        return max(current_channels - kept, 0)
