"""The teacher: a ResNet-18, its stem fitted to the image size, trained or installed, and
checked to know more than chance.

A study keeps its own teacher (``search.shared_teacher``) as the bytes of
:func:`teacher_blob`, named by their SHA-256; this module makes and reads those bytes and
keeps them in a local cache under that name. Besides, a machine keeps one teacher per
data set (:func:`teacher_path`), made by ``nas.py teacher`` or by the first study on that
data, which a new study on the same data takes as its own instead of training one.

Its logits on the images a study trains on (the proxy's subset, or the whole training
split for finalize) are computed once, stored beside its weights, and reused by every
trial of every study that trains on those images.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
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

CHANCE_MULTIPLE = 1.5  # a teacher below 1.5x chance accuracy has learned nothing to distil


class NearChance(ValueError):
    """A teacher no better than chance on the validation split: distilling from it would
    mislead every trial. The message says which teacher and why; callers add how to fix it."""


@dataclass(frozen=True)
class Teacher:
    model: nn.Module
    val_accuracy: float
    source: str  # "trained (N epochs)" or the file it was imported from
    path: Path  # where this machine keeps it; its logits are cached beside it
    # Of its weights as a study stores them (teacher_blob); None for a data set's local
    # teacher, which no study has taken yet.
    sha256: str | None = None


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


def small_resnet18(num_classes: int = 10) -> nn.Module:
    """The small-image ResNet-18 for RGB images as a ``--model`` factory
    (``search.stages.teacher:small_resnet18``): the architecture of the shared CIFAR-10
    ResNet-18, which torchvision's own ``resnet18`` (a 7x7 stride-2 stem) is not."""
    return build_teacher(3, num_classes)


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
    """The data set's local teacher, trained first if this machine has none; one near
    chance is refused (:class:`NearChance`) and not kept."""
    path = teacher_path(data, cache_dir)
    if path.exists():
        return _load(path, data)
    model, source = train_teacher(data, epochs, seed, on_progress)
    return _save(model, data, cache_dir, source, on_progress)


def train_teacher(data: Dataset, epochs: int | None = None, seed: int = 0, on_progress=None) -> tuple[nn.Module, str]:
    """A ResNet-18 trained on the training split, and how it was made ("trained (N epochs)")."""
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
    return model.eval(), f"trained ({epochs} epochs)"


def import_teacher(data: Dataset, weights: str | Path, cache_dir: str | Path, on_progress=None) -> Teacher:
    """Install a ResNet-18 state dict (float16 allowed) as this data set's local teacher."""
    return _save(read_weights(data, weights), data, cache_dir, f"imported from {weights}", on_progress)


def read_weights(data: Dataset, weights: str | Path) -> nn.Module:
    """The teacher for ``data`` with the ResNet-18 state dict in the file ``weights``
    (float16 allowed); ``ValueError`` naming the first tensor that does not fit."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        return _with_state(data, state)
    except RuntimeError as e:
        raise ValueError(
            f"{weights} does not fit the teacher for {data.name} ({describe_teacher(data)}): {_first_mismatch(e)}"
        ) from None


def _with_state(data: Dataset, state: dict) -> nn.Module:
    model = build_teacher(data.in_chs, data.num_classes, data.photos)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


def validation_accuracy(model: nn.Module, data: Dataset, on_progress=None) -> float:
    return accuracy(predict_logits(model, data.val, on_progress=on_progress), data.val.y)


def check_teacher(val_accuracy: float, data: Dataset, what: str) -> None:
    """Refuse (:class:`NearChance`) ``what`` (a teacher, named for the message) when its
    validation accuracy is below CHANCE_MULTIPLE x chance."""
    chance = 1 / data.num_classes
    if val_accuracy < CHANCE_MULTIPLE * chance:
        raise NearChance(
            f"{what} is near chance on the validation split ({val_accuracy:.3f}, chance {chance:.3f}): "
            "distilling from it would mislead every trial"
        )


def teacher_blob(model: nn.Module) -> bytes:
    """The weights as a study stores them: the state dict in float16, half a ResNet-18's
    44 MB (a tensor float16 cannot hold stays float32). Every worker loads these bytes,
    so all distil from the same network whatever machine made it."""
    halved = {}
    for name, tensor in model.state_dict().items():
        half = tensor.half() if tensor.is_floating_point() else None
        halved[name] = half if half is not None and torch.isfinite(half).all() else tensor
    buffer = io.BytesIO()
    torch.save(halved, buffer)
    return buffer.getvalue()


def model_from_blob(blob: bytes, data: Dataset) -> nn.Module:
    return _with_state(data, torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True))


def blob_path(cache_dir: str | Path, sha256: str) -> Path:
    """Where this machine caches a study's teacher: named by the SHA-256 of its blob."""
    return Path(cache_dir) / "teachers" / f"{sha256}.pt"


def cached_blob(cache_dir: str | Path, sha256: str) -> bytes | None:
    """The cached blob of that SHA-256, or None (none, or a damaged file)."""
    path = blob_path(cache_dir, sha256)
    if not path.exists():
        return None
    blob = path.read_bytes()
    return blob if hashlib.sha256(blob).hexdigest() == sha256 else None


def cache_blob(cache_dir: str | Path, blob: bytes) -> Path:
    path = blob_path(cache_dir, hashlib.sha256(blob).hexdigest())
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(blob)
        tmp.replace(path)  # atomic: a worker never reads a half-written teacher
    return path


def _first_mismatch(error: RuntimeError) -> str:
    """torch's first line only says loading failed; the next ones say which tensor."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else lines[0]


def images_sha256(images: Split) -> str:
    """Names a set of images (and their order): the teacher's logits are per image set."""
    return hashlib.sha256(np.ascontiguousarray(images.pixels.cpu().numpy())).hexdigest()


def logits_path(teacher: Teacher, images: Split) -> Path:
    return teacher.path.with_name(f"{teacher.path.stem}.logits-{len(images)}-{images_sha256(images)[:16]}.pt")


def teacher_logits(teacher: Teacher, images: Split, on_progress=None) -> torch.Tensor:
    """The teacher's logits for ``images`` (one row per image, in order), computed once
    and cached beside the teacher."""
    cache = logits_path(teacher, images)
    if cache.exists():
        return torch.load(cache, map_location="cpu", weights_only=True)
    log.info("teacher logits for %d images", len(images))
    logits = predict_logits(teacher.model, images, on_progress=on_progress)
    cache_logits(cache, logits)
    return logits


def cache_logits(path: Path, logits: torch.Tensor) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(logits, tmp)
    tmp.replace(path)


def _save(model: nn.Module, data: Dataset, cache_dir: str | Path, source: str, on_progress=None) -> Teacher:
    """Check ``model`` and keep it as this machine's teacher for ``data``."""
    val_acc = validation_accuracy(model, data, on_progress)
    log.info("teacher validation accuracy %.4f", val_acc)
    check_teacher(val_acc, data, f"the teacher for {data.name} ({source})")
    return Teacher(model, val_acc, source, keep_data_teacher(model, data, cache_dir, source, val_acc))


def keep_data_teacher(model: nn.Module, data: Dataset, cache_dir: str | Path, source: str, val_accuracy: float) -> Path:
    """Keep ``model`` (checked already) as this machine's teacher for ``data``."""
    path = teacher_path(data, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save({"state_dict": model.state_dict(), "val_accuracy": val_accuracy, "source": source}, tmp)
    tmp.replace(path)  # atomic: a worker never reads a half-written teacher
    return path


def _load(path: Path, data: Dataset) -> Teacher:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return Teacher(_with_state(data, saved["state_dict"]), saved["val_accuracy"], saved["source"], path)
