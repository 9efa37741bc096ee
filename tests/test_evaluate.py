"""The evaluate stage (search/stages/evaluate.py): accuracy of the exported file under ONNX Runtime."""

import numpy as np
import pytest
import torch

from search.stages.evaluate import onnx_accuracy, onnx_logits
from search.stages.export import export_onnx


@pytest.fixture(scope="module")
def trained(digits):
    """A small network trained on digits for a moment, and its exported file: (model, ONNX bytes)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: two threads on a busy 2-core machine made this 40x slower
    try:
        for _ in range(100):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(digits.train.x), digits.train.y).backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), export_onnx(model, torch.zeros(1, 1, 8, 8))


def test_onnx_accuracy_is_the_torch_model_s_on_the_same_split(digits, trained):
    model, onnx_bytes = trained
    with torch.no_grad():
        correct = int((model(digits.val.x).argmax(1) == digits.val.y).sum())
    n = len(digits.val)
    assert correct > 0.9 * n  # a trained model: agreeing on it is agreeing on real predictions
    assert onnx_accuracy(onnx_bytes, digits.val) * n == pytest.approx(correct)
    # In batches that do not divide the split, every sample still counts once.
    assert onnx_accuracy(onnx_bytes, digits.val, batch_size=7) * n == pytest.approx(correct)


def test_onnx_logits_cover_every_input_in_order(digits, trained):
    model, onnx_bytes = trained
    x = digits.val.x[:100]
    with torch.no_grad():
        expected = model(x).numpy()
    for batch_size in (1, 32, 256):
        logits = onnx_logits(onnx_bytes, x.numpy(), batch_size=batch_size)
        assert logits.shape == (100, 10)
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
