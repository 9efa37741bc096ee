"""The user's own network: named, built, given its weights, and checked before any study.

``--model`` names the architecture: ``torchvision:NAME`` is torchvision's classification
builder with ``weights=None`` (nothing is downloaded) and the data set's class count;
``module.path:callable`` is the user's factory, called with ``num_classes=`` where it
takes it. ``--weights`` is a state dict (float16 tensors allowed: they are copied into float32 ones)
or a TorchScript file (its tensors are taken, by name, into the named architecture,
which Torch-Pruning can then rewrite; a scripted module it cannot).

Everything that can be wrong is found here, before a study is created: a file that does
not fit the architecture (the first mismatching key and both shapes), a network that
Torch-Pruning cannot prune (it does not run once pruned, or nothing could be removed),
one that does not export to ONNX or whose file disagrees with PyTorch. Each is a
:class:`ModelError`, one line, exit status 2.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import inspect
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from .stages.export import check_parity, export_onnx
from .stages.prune import count_stages, prune
from .study.config import ConfigError

TORCHVISION = "torchvision:"
CHECK_RATIO = 0.5  # the check prunes a copy this far; the search goes up to MAX_PRUNE_RATIO with the same graph


class ModelError(ConfigError):
    """The user's network or weights cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class OwnModel:
    """The user's network with its weights, checked: what a study of it starts from."""

    name: str  # as given to --model
    network: nn.Module  # eval mode, float32, on the CPU
    weights_sha256: str
    n_stages: int  # feature-map resolutions, for per-stage prune ratios

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.network.parameters())


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_model_name(name: str) -> None:
    """Refuse a --model that is not of either form, before anything is loaded."""
    if name.startswith(TORCHVISION):
        arch = name[len(TORCHVISION):]
        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ModelError(
                f"--model {name}: torchvision has no classification model {arch!r} "
                "(e.g. resnet18, mobilenet_v2, mobilenet_v3_small, efficientnet_b0)"
            )
        return
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ModelError(f"--model {name!r}: use torchvision:NAME or module.path:callable")


def build_network(name: str, num_classes: int) -> nn.Module:
    """The architecture ``name`` (see the module's note) with fresh weights."""
    check_model_name(name)
    if name.startswith(TORCHVISION):
        return torchvision.models.get_model(name[len(TORCHVISION):], weights=None, num_classes=num_classes)
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"--model {name}: cannot import it ({type(e).__name__}: {e})") from None
    if not callable(factory):
        raise ModelError(f"--model {name}: {attr} is a {type(factory).__name__}, which is not callable")
    takes_classes = "num_classes" in inspect.signature(factory).parameters
    try:
        network = factory(num_classes=num_classes) if takes_classes else factory()
    except Exception as e:
        raise ModelError(f"--model {name}: calling it failed ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(network, nn.Module):
        raise ModelError(f"--model {name}: returned a {type(network).__name__}, not a torch.nn.Module")
    return network


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict or TorchScript file, by name."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"--weights {path}: no such file")
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():  # torch's notice that TorchScript is deprecated: not the user's to act on
                warnings.simplefilter("ignore", FutureWarning)
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:  # read without running any pickled code
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"--weights {path}: neither a state dict nor a TorchScript file ({_first_line(e)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a training checkpoint
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"--weights {path}: holds a {type(state).__name__}, not a state dict of tensors")
    return state  # float16 tensors are fine: load_state_dict copies them into the float32 network


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive holds its code and constants beside the tensors; torch.save's has data.pkl alone."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def first_mismatch(network: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """The first key, in the network's order, where ``state`` does not fit it, with both
    shapes; then the first key the network does not have. None if it fits exactly."""
    own = network.state_dict()
    for key, tensor in own.items():
        if key not in state and not key.endswith("num_batches_tracked"):  # torch fills it in, as for old files
            return f"{key!r} {list(tensor.shape)} is not in the file"
        if key in state and state[key].shape != tensor.shape:
            return f"{key!r} is {list(state[key].shape)} in the file, {list(tensor.shape)} in the network"
    extra = next((k for k in state if k not in own), None)
    return None if extra is None else f"{extra!r} {list(state[extra].shape)} is in the file but not in the network"


def load_own_model(name: str, weights: str | Path, num_classes: int, example: torch.Tensor) -> OwnModel:
    """The network ``name`` with the file ``weights``, checked on ``example`` (one input
    of the study's shape, normalised as the study normalises): see :func:`check_network`."""
    network = build_network(name, num_classes)
    state = read_weights(weights)
    mismatch = first_mismatch(network, state)
    if mismatch is not None:
        raise ModelError(f"--weights {weights} does not fit --model {name}: {mismatch}")
    network.load_state_dict(state, strict=False)  # strict but for num_batches_tracked: first_mismatch checked the rest
    network.eval()
    check_network(name, network, example, num_classes)
    return OwnModel(name, network, file_sha256(weights), count_stages(network, example))


def check_network(name: str, network: nn.Module, example: torch.Tensor, num_classes: int) -> None:
    """Refuse a network the study could not compress or deploy, saying why: it must take
    ``example`` and give one logit per class, still run once Torch-Pruning has removed
    channels from a copy, and export to an ONNX file that agrees with PyTorch."""
    try:
        with torch.no_grad():
            out = network(example)
    except Exception as e:
        raise ModelError(f"--model {name} does not run on a {_shape(example)} input: {_first_line(e)}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(example), num_classes):
        got = _shape(out) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"--model {name} gives {got} for a {_shape(example)} input, not [1, {num_classes}] class logits")
    pruned = copy.deepcopy(network)
    before = sum(p.numel() for p in pruned.parameters())
    try:
        prune(pruned, CHECK_RATIO, 1, example)
        with torch.no_grad():
            out = pruned(example)
        if tuple(out.shape) != (len(example), num_classes):
            raise RuntimeError(f"it gives {_shape(out)} once pruned")
    except Exception as e:
        raise ModelError(
            f"Torch-Pruning cannot prune --model {name}: once pruned it does not run ({_first_line(e)})"
        ) from None
    if sum(p.numel() for p in pruned.parameters()) == before:
        raise ModelError(
            f"Torch-Pruning cannot prune --model {name}: its dependency graph found no channel to remove "
            "(does the forward pass leave torch, e.g. through numpy?)"
        )
    try:
        with _quiet_stderr():  # the exporter prints its whole graph before raising
            onnx = export_onnx(copy.deepcopy(network), example)
        check_parity(onnx, network, example)
    except Exception as e:
        raise ModelError(f"--model {name} does not export to ONNX: {type(e).__name__}: {_first_line(e)}") from None


@contextlib.contextmanager
def _quiet_stderr():
    """Standard error of this process and its C++ code, kept aside and dropped."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
