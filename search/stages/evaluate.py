"""Accuracy of the deployed artifact: the final ONNX file run by ONNX Runtime."""

from __future__ import annotations

import numpy as np

from ..board.timing import make_session
from ..data import Split
from .export import INPUT_NAME


def onnx_logits(onnx_bytes: bytes, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    session = make_session(onnx_bytes, threads=None)
    return np.concatenate(
        [session.run(None, {INPUT_NAME: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    )


def onnx_accuracy(onnx_bytes: bytes, split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy of the ONNX model on ``split``."""
    logits = onnx_logits(onnx_bytes, split.x.numpy(), batch_size)
    return float((logits.argmax(1) == split.y.numpy()).mean())
