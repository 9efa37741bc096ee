"""Build a ``torch.nn.Module`` from an :class:`ArchSpec`, from torchvision's MobileNetV3 parts.

torchvision's own ``InvertedResidual`` is not used because it derives the expansion
and squeeze widths from ratios and rounds every width to a multiple of 8; a pruned
network has arbitrary widths, so the block here takes them verbatim from the spec.
The layer order and parameter shapes match torchvision's, which is what lets the
tests load torchvision's ``mobilenet_v3_small``/``_large`` weights into ours.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation, SqueezeExcitation

from .arch import ArchSpec, BlockSpec

# torchvision's epsilon; its momentum (0.01) suits long ImageNet runs, but after a proxy
# training of a few hundred steps the running statistics would still be near their
# initial values, so the default 0.1 is kept.
_NORM = partial(nn.BatchNorm2d, eps=0.001)
_ACT_LAYERS = {"re": nn.ReLU, "hs": nn.Hardswish}


class InvertedResidual(nn.Module):
    """MobileNetV3 block: [1x1 expand] -> kxk depthwise -> [squeeze-excite] -> 1x1 project."""

    def __init__(self, in_chs: int, spec: BlockSpec):
        super().__init__()
        act = _ACT_LAYERS[spec.act]
        mid_chs = spec.expand_chs or in_chs
        self.has_skip = spec.has_skip(in_chs)
        self.conv_pw = (
            Conv2dNormActivation(in_chs, mid_chs, kernel_size=1, norm_layer=_NORM, activation_layer=act)
            if spec.expand_chs is not None
            else nn.Identity()
        )
        self.conv_dw = Conv2dNormActivation(
            mid_chs,
            mid_chs,
            kernel_size=spec.kernel,
            stride=spec.stride,
            groups=mid_chs,
            norm_layer=_NORM,
            activation_layer=act,
        )
        self.se = (
            SqueezeExcitation(mid_chs, spec.se_chs, scale_activation=nn.Hardsigmoid)
            if spec.se_chs is not None
            else nn.Identity()
        )
        self.conv_pwl = Conv2dNormActivation(
            mid_chs, spec.out_chs, kernel_size=1, norm_layer=_NORM, activation_layer=None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pwl(self.se(self.conv_dw(self.conv_pw(x))))
        return out + x if self.has_skip else out


class MobileNetV3Like(nn.Module):
    def __init__(self, spec: ArchSpec, dropout: float = 0.2):
        super().__init__()
        self.spec = spec
        self.stem = Conv2dNormActivation(
            spec.in_chs,
            spec.stem_chs,
            kernel_size=3,
            stride=spec.stem_stride,
            norm_layer=_NORM,
            activation_layer=_ACT_LAYERS[spec.stem_act],
        )
        self.blocks = nn.Sequential(
            *(InvertedResidual(in_chs, b) for in_chs, b in zip(spec.block_in_chs(), spec.blocks))
        )
        self.head_conv = Conv2dNormActivation(
            spec.blocks[-1].out_chs,
            spec.head_chs,
            kernel_size=1,
            norm_layer=_NORM,
            activation_layer=_ACT_LAYERS[spec.head_act],
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        if spec.fc_chs is None:
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(spec.head_chs, spec.num_classes))
        else:
            self.classifier = nn.Sequential(
                nn.Linear(spec.head_chs, spec.fc_chs),
                _ACT_LAYERS[spec.fc_act](inplace=True),
                nn.Dropout(dropout),
                nn.Linear(spec.fc_chs, spec.num_classes),
            )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head_conv(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def _init_weights(model: nn.Module) -> None:
    # torchvision's MobileNetV3 initialisation.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def build_model(spec: ArchSpec) -> MobileNetV3Like:
    """The network a spec describes, freshly initialised."""
    return MobileNetV3Like(spec)


def arch_of(model: MobileNetV3Like) -> ArchSpec:
    """The spec of a built network as its weights stand now.

    After structured pruning the channel counts no longer match the spec the network
    was built from; this reads them back so that the pruned network has a spec of its
    own, from which it can be rebuilt and its weights loaded.
    """
    old = model.spec
    blocks = []
    for block, old_block in zip(model.blocks, old.blocks):
        blocks.append(
            BlockSpec(
                kernel=old_block.kernel,
                stride=old_block.stride,
                out_chs=block.conv_pwl[0].out_channels,
                act=old_block.act,
                expand_chs=block.conv_pw[0].out_channels if old_block.expand_chs is not None else None,
                se_chs=block.se.fc1.out_channels if old_block.se_chs is not None else None,
                skip=block.has_skip,
            )
        )
    return ArchSpec(
        in_chs=old.in_chs,
        stem_chs=model.stem[0].out_channels,
        stem_stride=old.stem_stride,
        stem_act=old.stem_act,
        blocks=tuple(blocks),
        head_chs=model.head_conv[0].out_channels,
        head_act=old.head_act,
        fc_chs=model.classifier[0].out_features if old.fc_chs is not None else None,
        fc_act=old.fc_act,
        num_classes=model.classifier[-1].out_features,
    )
