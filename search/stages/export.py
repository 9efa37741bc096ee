"""Export a trained network to one self-contained ONNX file, checked against PyTorch.

The TorchScript-based exporter (``dynamo=False``) is used on purpose: on this project's
2-core CPUs the dynamo exporter took ~10 s per MobileNetV3 against ~0.3 s, and a
search exports every trial. Its graphs are plain Conv/Gemm/HardSwish nets that ONNX
Runtime and its quantization tools handle fully.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from torch import nn

from ..board.timing import make_session

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ParityError(RuntimeError):
    """ONNX Runtime's outputs differ from PyTorch's beyond tolerance."""


def export_onnx(model: nn.Module, example_input: torch.Tensor, metadata: dict[str, str] | None = None) -> bytes:
    """Serialized ONNX of ``model`` (eval mode, batch dimension dynamic), checked by onnx.checker."""
    model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice about dynamo
        torch.onnx.export(
            model,
            (example_input,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,  # folds batch norm into the convs
        )
    proto = compact(onnx.load_from_string(buffer.getvalue()))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shorten internal names and drop recorded intermediate shapes, in place.

    Neither changes what the model computes, but exporter names such as
    ``/blocks/blocks.2/conv_pw/conv_pw.0/Conv_output_0_QuantizeLinear`` made up a
    fifth of a small quantized file, and the file's size is one of the objectives.
    The graph's input and output names are kept. Nodes are also put in topological
    order, which the ONNX checker requires and ORT's fp16 converter does not keep.
    """
    graph = model.graph
    _sort_nodes(graph)
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            # The trailing "_" matters: ORT's optimizer derives new names by appending
            # digits ("t3" -> "t30"), which must not hit another of ours.
            names[name] = f"t{len(names):x}_"
        return names[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for i, node in enumerate(graph.node):
        node.name = f"n{i:x}"  # unique: ORT's quantizer derives tensor names from node names
        node.doc_string = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]
    graph.doc_string = ""
    return model


def _sort_nodes(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    placed = [False] * len(nodes)
    order: list[int] = []
    while len(order) < len(nodes):
        before = len(order)
        for i, node in enumerate(nodes):
            if not placed[i] and all(name in available for name in node.input):
                placed[i] = True
                order.append(i)
                available.update(node.output)
        if len(order) == before:
            raise ValueError("the graph has a cycle, or an input that no node produces")
    if order != sorted(order):
        copies = [onnx.NodeProto.FromString(nodes[i].SerializeToString()) for i in order]
        del graph.node[:]
        graph.node.extend(copies)


def check_parity(onnx_bytes: bytes, model: nn.Module, x: torch.Tensor, tolerance: float = 1e-3) -> float:
    """Largest absolute difference between ORT's and PyTorch's logits on ``x``.

    Raises :class:`ParityError` when it exceeds ``tolerance`` times the logits' scale.
    """
    model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    session = make_session(onnx_bytes, threads=None)
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    if not np.isfinite(diff) or diff > tolerance * scale:
        raise ParityError(f"ONNX Runtime and PyTorch disagree: max |diff| {diff:.3g} on logits up to {scale:.3g}")
    return diff
