"""The teacher: a ResNet-18, its stem fitted to the image size, trained once per data set and cached.

Its logits on the images a study trains on (the proxy's subset, or the whole training
split for finalize) are computed once, stored beside its weights, and reused by every
trial of every study that trains on those images.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from ..data import Dataset, Split
from .train import TrainConfig, accuracy, fit, predict_logits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Teacher:
    model: nn.Module
    val_accuracy: float
    source: str  # "trained (N epochs)" or the file it was imported from
    path: Path


def build_teacher(in_chs: int, num_classes: int, photos: bool = False) -> nn.Module:
    """torchvision's ResNet-18; for small images (up to 64 px) with a 3x3 stride-1 stem and
    no max-pool, for photos with torchvision's own stem (7x7 stride 2 and a max-pool):
    a stride-1 stem at 96 px and more would cost 16x the compute for little gain.

    The small-image form is that of the CIFAR-10 teacher in ``../shared/models``, whose
    weights therefore load into it.
    """
    model = torchvision.models.resnet18(num_classes=num_classes)
    if photos:
        if in_chs != 3:
            model.conv1 = nn.Conv2d(in_chs, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return model
    model.conv1 = nn.Conv2d(in_chs, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def describe_teacher(data: Dataset) -> str:
    stem = "7x7 stride-2 stem and max-pool" if data.photos else "3x3 stride-1 stem, no max-pool"
    return f"ResNet-18 ({stem}, {data.in_chs} input channels, {data.num_classes} classes)"


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
    model = build_teacher(data.in_chs, data.num_classes, data.photos)
    config = TrainConfig(
        epochs=epochs, lr=0.1, batch_size=128, weight_decay=5e-4, augment=True, hflip=data.hflip,
        resized_crops=data.photos, seed=seed,
    )
    fit(model, data.train, config, on_progress=on_progress)
    log.info("teacher trained in %.0f s", time.perf_counter() - start)
    return _save(model, data, path, f"trained ({epochs} epochs)", on_progress)


def import_teacher(data: Dataset, weights: str | Path, cache_dir: str | Path, on_progress=None) -> Teacher:
    """Install a ResNet-18 state dict (float16 allowed) as this data set's teacher."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_teacher(data.in_chs, data.num_classes, data.photos)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as e:
        raise ValueError(
            f"{weights} does not fit the teacher for {data.name} ({describe_teacher(data)}): {_first_mismatch(e)}"
        ) from None
    return _save(model, data, teacher_path(data, cache_dir), f"imported from {weights}", on_progress)


def _first_mismatch(error: RuntimeError) -> str:
    """torch's first line only says loading failed; the next ones say which tensor."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else lines[0]


def teacher_logits(teacher: Teacher, images: Split, on_progress=None) -> torch.Tensor:
    """The teacher's logits for ``images`` (one row per image, in order), computed once
    and cached beside the teacher."""
    h = hashlib.sha256(np.ascontiguousarray(images.pixels.cpu().numpy()))
    cache = teacher.path.with_name(f"{teacher.path.stem}.logits-{len(images)}-{h.hexdigest()[:16]}.pt")
    if cache.exists():
        return torch.load(cache, map_location="cpu", weights_only=True)
    log.info("teacher logits for %d images", len(images))
    logits = predict_logits(teacher.model, images, on_progress=on_progress)
    tmp = cache.with_suffix(".tmp")
    torch.save(logits, tmp)
    tmp.replace(cache)
    return logits


def _save(model: nn.Module, data: Dataset, path: Path, source: str, on_progress=None) -> Teacher:
    model.eval()
    val_acc = accuracy(predict_logits(model, data.val, on_progress=on_progress), data.val.y)
    log.info("teacher validation accuracy %.4f", val_acc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "val_accuracy": val_acc, "source": source}, tmp)
    tmp.replace(path)  # atomic: a worker never reads a half-written teacher
    return Teacher(model, val_acc, source, path)


def _load(path: Path, data: Dataset) -> Teacher:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = build_teacher(data.in_chs, data.num_classes, data.photos)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return Teacher(model, saved["val_accuracy"], saved["source"], path)
