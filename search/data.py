"""Data sets, held in memory as normalised tensors with fixed train / validation / test splits.

The search ranks candidates on the validation split, carved (seeded, stratified) from
the training data; the test split is only touched to report the final front. The carve
uses a fixed seed, not the study's, so that every study on a data set sees the same
splits and the cached teacher stays valid.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

SPLIT_SEED = 0
TORCHVISION_DATASETS = {"cifar10": "CIFAR10", "mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
DATASET_HELP = "digits (embedded, default), cifar10, mnist, fashion-mnist (need --data-dir), imagefolder:PATH"


class DatasetError(ValueError):
    """The data set named cannot be loaded; the message says how to fix it."""


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # float32, normalised, N x C x H x W
    y: torch.Tensor  # int64 class indices

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    val: Split
    test: Split
    hflip: bool  # whether a mirrored image is still an image of its class (not for digits)

    @property
    def in_chs(self) -> int:
        return self.train.x.shape[1]

    @property
    def resolution(self) -> int:
        return self.train.x.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """Identifies the exact training data: keys the teacher cache."""
        h = hashlib.sha256(self.name.encode())
        for split in (self.train, self.val):
            h.update(split.x.numpy().tobytes())
            h.update(split.y.numpy().tobytes())
        return h.hexdigest()[:16]


def check_dataset_name(name: str, data_dir: str | None) -> None:
    """Validate a data set argument without loading it (for the command line)."""
    if name == "digits":
        return
    if name in TORCHVISION_DATASETS:
        if data_dir is None:
            raise DatasetError(f"--dataset {name} needs --data-dir DIR (a folder where torchvision finds it)")
        if not Path(data_dir).is_dir():
            raise DatasetError(f"--data-dir {data_dir} is not a folder")
        return
    if name.startswith("imagefolder:"):
        _imagefolder_root(name.split(":", 1)[1])
        return
    raise DatasetError(f"unknown data set {name!r}; choose {DATASET_HELP}")


def load_dataset(name: str, data_dir: str | None = None, cache_dir: str | None = None) -> Dataset:
    check_dataset_name(name, data_dir)
    if name == "digits":
        images, labels, test_images, test_labels, classes, hflip = _load_digits()
    elif name in TORCHVISION_DATASETS:
        images, labels, test_images, test_labels, classes, hflip = _load_torchvision(name, data_dir)
    else:
        images, labels, test_images, test_labels, classes, hflip = _load_imagefolder(
            name.split(":", 1)[1], cache_dir
        )
    return _make_dataset(name, images, labels, test_images, test_labels, classes, hflip)


def _make_dataset(name, images, labels, test_images, test_labels, classes, hflip) -> Dataset:
    """uint8 N x H x W x C arrays -> normalised tensors, with the validation split carved out."""
    from sklearn.model_selection import train_test_split

    n_val = min(int(0.2 * len(labels)), 5000)
    per_class = np.bincount(labels, minlength=len(classes))
    if n_val < len(classes) or per_class.min() < 2:
        raise DatasetError(
            f"{name}: {len(labels)} training images for {len(classes)} classes (fewest in one class: "
            f"{per_class.min()}) cannot give a validation split (a fifth) with every class in it; "
            "give at least 5 training images per class"
        )
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=n_val, stratify=labels, random_state=SPLIT_SEED
    )
    train_images = images[train_idx]
    mean = train_images.mean(axis=(0, 1, 2)) / 255.0
    std = train_images.std(axis=(0, 1, 2)) / 255.0

    def to_split(x: np.ndarray, y: np.ndarray) -> Split:
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0)
        t = (t - torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)) / torch.tensor(
            std, dtype=torch.float32
        ).view(1, -1, 1, 1)
        return Split(x=t.contiguous(), y=torch.from_numpy(np.asarray(y, dtype=np.int64)))

    return Dataset(
        name=name,
        classes=tuple(classes),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        train=to_split(train_images, labels[train_idx]),
        val=to_split(images[val_idx], labels[val_idx]),
        test=to_split(test_images, test_labels),
        hflip=hflip,
    )


def _load_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 0..16 grey levels -> uint8 0..255, H x W x 1.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    # digits has no official test split: hold out a fixed, stratified 20%.
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=SPLIT_SEED
    )
    classes = [str(i) for i in range(10)]
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], classes, False


def _load_torchvision(name: str, data_dir: str):
    import torchvision.datasets

    cls = getattr(torchvision.datasets, TORCHVISION_DATASETS[name])
    try:
        train = cls(data_dir, train=True, download=False)
        test = cls(data_dir, train=False, download=False)
    except RuntimeError as e:
        raise DatasetError(
            f"{name} not found under --data-dir {data_dir} ({e}); put torchvision's copy there, "
            "or use imagefolder:PATH for a folder of images"
        ) from None

    def arrays(ds):
        data = np.asarray(ds.data)
        if data.ndim == 3:  # MNIST-style grey images
            data = data[..., None]
        return data.astype(np.uint8), np.asarray(ds.targets, dtype=np.int64)

    images, labels = arrays(train)
    test_images, test_labels = arrays(test)
    return images, labels, test_images, test_labels, list(train.classes), name != "mnist"


def _imagefolder_root(path: str) -> tuple[object, str, str]:
    """Where the train and test trees are: (zip file or folder, train prefix, test prefix)."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"imagefolder path {path} does not exist")
    if p.is_file() and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            tops = {n.split("/")[0] for n in zf.namelist() if "/" in n}
        prefix = ""
        if "train" not in tops and len(tops) == 1:  # a zip of one folder
            prefix = next(iter(tops)) + "/"
            with zipfile.ZipFile(p) as zf:
                tops = {n[len(prefix) :].split("/")[0] for n in zf.namelist() if n.startswith(prefix)}
    elif p.is_dir():
        prefix = ""
        tops = {c.name for c in p.iterdir() if c.is_dir()}
    else:
        raise DatasetError(f"imagefolder path {path} is neither a folder nor a zip file")
    held_out = "test" if "test" in tops else "val" if "val" in tops else None
    if "train" not in tops or held_out is None:
        raise DatasetError(f"imagefolder {path} needs train/ and test/ (or val/) folders of class folders inside")
    return p, prefix + "train", prefix + held_out


def _load_imagefolder(path: str, cache_dir: str | None):
    root, train_prefix, test_prefix = _imagefolder_root(path)
    stat = os.stat(root)
    key = hashlib.sha256(f"{Path(root).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(cache_dir) / "data" / f"imagefolder-{key}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=False)
        return (z["train_x"], z["train_y"], z["test_x"], z["test_y"], list(z["classes"]), True)

    entries = _list_images(root)
    classes = sorted({c for (split, c, _) in entries if split == train_prefix})
    if not classes:
        raise DatasetError(f"imagefolder {path}: no class folders with images under {train_prefix}/")
    index = {c: i for i, c in enumerate(classes)}
    log.info("decoding %d images from %s (cached afterwards)", len(entries), path)
    decoded = {train_prefix: ([], []), test_prefix: ([], [])}
    size = mode = None
    zf = zipfile.ZipFile(root) if root.is_file() else None
    try:
        for split, cls, name in entries:
            if split not in decoded:
                continue
            if cls not in index:
                raise DatasetError(f"imagefolder {path}: class {cls!r} is in {split}/ but not in {train_prefix}/")
            img = _read_image(root, zf, name)
            if size is None:  # every image takes the size and colour mode of the first
                size = img.size
                mode = img.mode if img.mode in ("L", "RGB") else "RGB"
            if img.size != size:
                img = img.resize(size)
            decoded[split][0].append(np.asarray(img.convert(mode), dtype=np.uint8))
            decoded[split][1].append(index[cls])
    finally:
        if zf is not None:
            zf.close()

    def stack(split):
        x = np.stack(decoded[split][0])
        return (x[..., None] if x.ndim == 3 else x), np.asarray(decoded[split][1], dtype=np.int64)

    train_x, train_y = stack(train_prefix)
    test_x, test_y = stack(test_prefix)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=np.array(classes))
        tmp.replace(cache)
    return train_x, train_y, test_x, test_y, classes, True


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _list_images(root: Path) -> list[tuple[str, str, str]]:
    """(split prefix, class, member name) of every image, in a stable order."""
    if root.is_file():
        with zipfile.ZipFile(root) as zf:
            names = sorted(n for n in zf.namelist() if n.lower().endswith(_IMAGE_SUFFIXES))
    else:
        names = sorted(
            str(p.relative_to(root)).replace(os.sep, "/")
            for p in root.rglob("*")
            if p.suffix.lower() in _IMAGE_SUFFIXES
        )
    out = []
    for n in names:
        parts = n.split("/")
        if len(parts) >= 3:
            out.append(("/".join(parts[:-2]), parts[-2], n))
    return out


def _read_image(root: Path, zf: zipfile.ZipFile | None, name: str):
    from PIL import Image

    if zf is not None:
        return Image.open(io.BytesIO(zf.read(name))).copy()
    return Image.open(root / name).copy()
