"""The architecture spec: a frozen description of a MobileNetV3-style network.

The spec is the single source of truth for a network. It prints to one canonical
string and parses back from it (``parse_arch(str(spec)) == spec``); that string is
stored on every trial and is all that is needed to rebuild the network. Other valid
spellings parse too (identical blocks written out one by one instead of ``r<N>``, as a
person writing a baseline by hand will), and ``str`` of the result is the canonical one.

Grammar (tokens joined by ``-``), in the spirit of timm's block strings::

    in3-stem16_s2_hs-ir_k3_s2_c16_se8_re-ir_k3_s2_x72_c24_re-...-conv576_hs-fc1024_hs-cls1000

    in<C>                 input channels
    stem<C>_s<S>_<act>    3x3 conv, C channels, stride S
    ir_[r<N>_]k<K>_s<S>_[x<X>_]c<C>_[se<Q>_]<act>[_noskip]
                          inverted residual: N identical repeats (only N >= 2 is
                          written), kernel K, stride S, X expanded channels (absent:
                          no expansion conv, the depthwise conv runs on the input
                          channels), C output channels, squeeze-excite with Q
                          squeeze channels (absent: no SE); ``noskip`` marks a block
                          that could have a residual connection but has none
    conv<C>_<act>         1x1 head conv
    fc<C>_<act>           hidden linear layer of the classifier (absent: none)
    cls<N>                number of classes
    <act>                 ``re`` (ReLU) or ``hs`` (hard-swish)

Expanded and squeeze widths are absolute channel counts, not ratios, so that a pruned
network (whose counts follow no ratio) has an exact spec too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

ACTIVATIONS = ("re", "hs")


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block. ``in_chs`` is carried from the previous block."""

    kernel: int
    stride: int
    out_chs: int
    act: str
    expand_chs: int | None = None  # None: no 1x1 expansion conv
    se_chs: int | None = None  # None: no squeeze-excite
    skip: bool = True  # only meaningful where stride == 1 and in_chs == out_chs

    def has_skip(self, in_chs: int) -> bool:
        return self.skip and self.stride == 1 and in_chs == self.out_chs


@dataclass(frozen=True)
class ArchSpec:
    in_chs: int
    stem_chs: int
    stem_stride: int
    stem_act: str
    blocks: tuple[BlockSpec, ...]
    head_chs: int
    head_act: str
    fc_chs: int | None  # None: the classifier is a single linear layer
    fc_act: str
    num_classes: int

    def __post_init__(self) -> None:
        # Normalise so that equal networks compare equal: ``skip`` carries meaning only
        # where a residual connection is possible.
        blocks, in_chs = [], self.stem_chs
        for b in self.blocks:
            if not b.skip and not (b.stride == 1 and in_chs == b.out_chs):
                b = replace(b, skip=True)
            blocks.append(b)
            in_chs = b.out_chs
        object.__setattr__(self, "blocks", tuple(blocks))
        _validate(self)

    def block_in_chs(self) -> list[int]:
        """Input channels of each block, in order."""
        chs, out = [], self.stem_chs
        for block in self.blocks:
            chs.append(out)
            out = block.out_chs
        return chs

    def __str__(self) -> str:
        tokens = [f"in{self.in_chs}", f"stem{self.stem_chs}_s{self.stem_stride}_{self.stem_act}"]
        in_chs = self.block_in_chs()
        i = 0
        while i < len(self.blocks):
            # Consecutive identical blocks (same input width too) print once with r<N>.
            n = 1
            while (
                i + n < len(self.blocks)
                and self.blocks[i + n] == self.blocks[i]
                and in_chs[i + n] == in_chs[i]
            ):
                n += 1
            tokens.append(_format_block(self.blocks[i], in_chs[i], n))
            i += n
        tokens.append(f"conv{self.head_chs}_{self.head_act}")
        if self.fc_chs is not None:
            tokens.append(f"fc{self.fc_chs}_{self.fc_act}")
        tokens.append(f"cls{self.num_classes}")
        return "-".join(tokens)


def _format_block(b: BlockSpec, in_chs: int, repeats: int) -> str:
    parts = ["ir"]
    if repeats > 1:
        parts.append(f"r{repeats}")
    parts += [f"k{b.kernel}", f"s{b.stride}"]
    if b.expand_chs is not None:
        parts.append(f"x{b.expand_chs}")
    parts.append(f"c{b.out_chs}")
    if b.se_chs is not None:
        parts.append(f"se{b.se_chs}")
    parts.append(b.act)
    if not b.skip and b.stride == 1 and in_chs == b.out_chs:
        parts.append("noskip")
    return "_".join(parts)


_ACT = "(re|hs)"
_N = r"([1-9][0-9]*)"  # a positive integer, no leading zeros: one spelling per number
_IN = re.compile(rf"in{_N}")
_STEM = re.compile(rf"stem{_N}_s([12])_{_ACT}")
_BLOCK = re.compile(
    rf"ir(?:_r([2-9]|[1-9][0-9]+))?_k([1-9])_s([12])(?:_x{_N})?_c{_N}(?:_se{_N})?_{_ACT}(_noskip)?"
)
_HEAD = re.compile(rf"conv{_N}_{_ACT}")
_FC = re.compile(rf"fc{_N}_{_ACT}")
_CLS = re.compile(rf"cls{_N}")


def parse_arch(text: str) -> ArchSpec:
    """Parse any valid spelling of an architecture; raise ``ValueError`` saying what is wrong."""
    if not isinstance(text, str) or not text:
        raise ValueError("architecture string is empty")
    tokens = text.strip().split("-")
    if len(tokens) < 5:
        raise ValueError(
            f"architecture string {text!r} is too short: expected in<C>-stem...-ir...-conv...-cls<N>"
        )

    def match(pattern: re.Pattern, token: str, what: str) -> re.Match:
        m = pattern.fullmatch(token)
        if m is None:
            raise ValueError(f"bad {what} token {token!r} in architecture string {text!r}")
        return m

    in_chs = int(match(_IN, tokens[0], "input").group(1))
    stem = match(_STEM, tokens[1], "stem")
    num_classes = int(match(_CLS, tokens[-1], "class-count").group(1))
    fc_chs, fc_act = None, "hs"
    rest = tokens[2:-1]
    if rest and rest[-1].startswith("fc"):
        fc = match(_FC, rest.pop(), "classifier")
        fc_chs, fc_act = int(fc.group(1)), fc.group(2)
    if not rest:
        raise ValueError(f"architecture string {text!r} has no head conv token conv<C>_<act>")
    head = match(_HEAD, rest.pop(), "head")

    blocks: list[BlockSpec] = []
    prev_chs = int(stem.group(1))
    for token in rest:
        m = match(_BLOCK, token, "block")
        repeats, kernel, stride, expand, out, se, act, noskip = m.groups()
        block = BlockSpec(
            kernel=int(kernel),
            stride=int(stride),
            out_chs=int(out),
            act=act,
            expand_chs=int(expand) if expand else None,
            se_chs=int(se) if se else None,
            skip=noskip is None,
        )
        if noskip and not (block.stride == 1 and prev_chs == block.out_chs):
            raise ValueError(
                f"block {token!r} says noskip but cannot have a residual connection "
                f"(stride {block.stride}, {prev_chs} -> {block.out_chs} channels)"
            )
        n = int(repeats) if repeats else 1
        if n > 1 and prev_chs != block.out_chs:
            raise ValueError(
                f"block {token!r} repeats {n} times but changes width {prev_chs} -> {block.out_chs}; "
                "write its first block separately"
            )
        blocks += [block] * n
        prev_chs = block.out_chs
    if not blocks:
        raise ValueError(f"architecture string {text!r} has no ir_ blocks")

    return ArchSpec(
        in_chs=in_chs,
        stem_chs=int(stem.group(1)),
        stem_stride=int(stem.group(2)),
        stem_act=stem.group(3),
        blocks=tuple(blocks),
        head_chs=int(head.group(1)),
        head_act=head.group(2),
        fc_chs=fc_chs,
        fc_act=fc_act,
        num_classes=num_classes,
    )


def _validate(spec: ArchSpec) -> None:
    for name in ("in_chs", "stem_chs", "head_chs", "num_classes"):
        if getattr(spec, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(spec, name)}")
    if spec.fc_chs is not None and spec.fc_chs < 1:
        raise ValueError(f"fc_chs must be >= 1 or None, got {spec.fc_chs}")
    if spec.stem_stride not in (1, 2):
        raise ValueError(f"stem stride must be 1 or 2, got {spec.stem_stride}")
    for act in (spec.stem_act, spec.head_act, spec.fc_act):
        if act not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {act!r}")
    if not spec.blocks:
        raise ValueError("an architecture needs at least one block")
    for i, b in enumerate(spec.blocks):
        if b.kernel < 1 or b.kernel % 2 == 0:
            raise ValueError(f"block {i}: kernel must be odd and >= 1, got {b.kernel}")
        if b.stride not in (1, 2):
            raise ValueError(f"block {i}: stride must be 1 or 2, got {b.stride}")
        if b.act not in ACTIVATIONS:
            raise ValueError(f"block {i}: activation must be one of {ACTIVATIONS}, got {b.act!r}")
        for name in ("out_chs", "expand_chs", "se_chs"):
            value = getattr(b, name)
            if value is not None and value < 1:
                raise ValueError(f"block {i}: {name} must be >= 1, got {value}")
