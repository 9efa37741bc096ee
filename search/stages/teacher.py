"""The teacher: a ResNet-18 adapted to small images, trained once per data set and cached.

Its logits on the training split are computed once, stored beside its weights, and
reused by every trial of every study on that data set.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..data import Dataset
from .train import TrainConfig, accuracy, fit, predict_logits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Teacher:
    model: nn.Module
    train_logits: torch.Tensor  # one row per training sample, un-augmented images
    val_accuracy: float
    source: str  # "trained (N epochs)" or the file it was imported from
    path: Path


def build_teacher(in_chs: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 8-64 px inputs.

    The same adaptation as the CIFAR-10 teacher in ``../shared/models``, whose
    weights therefore load into it.
    """
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_chs, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def default_teacher_epochs(data: Dataset) -> int:
    # About 12k images' worth of passes: 10 epochs on digits (~1 minute on 2 cores, 99%
    # validation accuracy); never fewer than 3 passes over a large set.
    return max(3, min(15, 12_000 // max(1, len(data.train))))


def teacher_path(data: Dataset, cache_dir: str | Path) -> Path:
    safe = data.name.replace(":", "_").replace("/", "_")[-40:]
    return Path(cache_dir) / "teachers" / f"resnet18-{safe}-{data.fingerprint()}.pt"


def load_or_train_teacher(
    data: Dataset, cache_dir: str | Path, epochs: int | None = None, seed: int = 0, on_progress=None
) -> Teacher:
    path = teacher_path(data, cache_dir)
    if path.exists():
        return _load(path, data)
    epochs = epochs or default_teacher_epochs(data)
    log.info("training the teacher: ResNet-18, %d epochs on %d images", epochs, len(data.train))
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = build_teacher(data.in_chs, data.num_classes)
    config = TrainConfig(epochs=epochs, lr=0.1, batch_size=128, weight_decay=5e-4, augment=True, hflip=data.hflip, seed=seed)
    fit(model, data.train, config, on_progress=on_progress)
    log.info("teacher trained in %.0f s", time.perf_counter() - start)
    return _save(model, data, path, f"trained ({epochs} epochs)")


def import_teacher(data: Dataset, weights: str | Path, cache_dir: str | Path) -> Teacher:
    """Install a ResNet-18 state dict (float16 allowed) as this data set's teacher."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_teacher(data.in_chs, data.num_classes)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as e:
        raise ValueError(
            f"{weights} does not fit the teacher for {data.name} "
            f"(ResNet-18, 3x3 stem, no max-pool, {data.in_chs} input channels, {data.num_classes} classes): "
            f"{_first_mismatch(e)}"
        ) from None
    return _save(model, data, teacher_path(data, cache_dir), f"imported from {weights}")


def _first_mismatch(error: RuntimeError) -> str:
    """torch's first line only says loading failed; the next ones say which tensor."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else lines[0]


def _save(model: nn.Module, data: Dataset, path: Path, source: str) -> Teacher:
    model.eval()
    train_logits = predict_logits(model, data.train.x)
    val_acc = accuracy(predict_logits(model, data.val.x), data.val.y)
    log.info("teacher validation accuracy %.4f", val_acc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"state_dict": model.state_dict(), "train_logits": train_logits, "val_accuracy": val_acc, "source": source},
        tmp,
    )
    tmp.replace(path)  # atomic: a worker never reads a half-written teacher
    return Teacher(model, train_logits, val_acc, source, path)


def _load(path: Path, data: Dataset) -> Teacher:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = build_teacher(data.in_chs, data.num_classes)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return Teacher(model, saved["train_logits"], saved["val_accuracy"], saved["source"], path)
