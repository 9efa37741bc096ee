"""Data sets, held in memory as normalised tensors with fixed train / validation / test splits.

The search ranks candidates on the validation split, carved (seeded, stratified) from
the training data; the test split is only touched to report the final front. The carve
uses a fixed seed, not the study's, so that every study on a data set sees the same
splits and the cached teacher stays valid.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

SPLIT_SEED = 0
TORCHVISION_DATASETS = {"cifar10": "CIFAR10", "mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
DATASET_HELP = "digits (embedded, default), cifar10, mnist, fashion-mnist (need --data-dir), imagefolder:PATH"
# Above this many pixels a side images are photographs: evaluated as torchvision evaluates
# ImageNet (shorter side to R/0.875, centre crop R), and the teacher strides in its stem.
SMALL_IMAGE_MAX = 64
PHOTO_CROP = 0.875
# A default training resolution above this costs more than proxy training on a CPU affords;
# --resolution chooses any other.
MAX_DEFAULT_RESOLUTION = 96
RESOLUTION_PROBE = 256  # images whose size sets the default resolution


class DatasetError(ValueError):
    """The data set named cannot be loaded; the message says how to fix it."""


@dataclass(frozen=True)
class Split:
    """Images and their labels.

    Images are kept as bytes (uint8, N x C x H x W) and normalised a batch at a time, so a
    data set costs a quarter of its float size in memory; ``mean`` and ``std`` (0..1 units)
    say how. A split built from floats (``mean`` empty) holds them already normalised.
    """

    pixels: torch.Tensor
    y: torch.Tensor  # int64 class indices
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx) -> torch.Tensor:
        """Normalised float images ``pixels[idx]`` (an index tensor, a slice or a list)."""
        pixels = self.pixels[idx]
        if not self.mean:
            return pixels
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, device=pixels.device).view(shape) * 255.0
        std = torch.tensor(self.std, device=pixels.device).view(shape) * 255.0
        return (pixels.float() - mean) / std

    @property
    def x(self) -> torch.Tensor:
        """The whole split as normalised floats: for validation and test sized splits;
        training passes go a batch at a time."""
        return self.batch(slice(None))

    def take(self, idx: torch.Tensor) -> "Split":
        return Split(self.pixels[idx], self.y[idx], self.mean, self.std)

    def to(self, device: str | torch.device) -> "Split":
        return Split(self.pixels.to(device), self.y.to(device), self.mean, self.std)


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
    resolution_note: str = ""  # how the training resolution was chosen, for the user
    skipped: tuple[str, ...] = ()  # unreadable images left out (--skip-bad-images)

    @property
    def in_chs(self) -> int:
        return self.train.pixels.shape[1]

    @property
    def resolution(self) -> int:
        return self.train.pixels.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def photos(self) -> bool:
        """Large images: random-resized crops to train a teacher, a strided teacher stem."""
        return self.resolution > SMALL_IMAGE_MAX

    def record(self) -> dict:
        """What a study records of its data (``attrs.STUDY_DATA``): how training turned an
        image into a network input, which a model card repeats, and what identifies this copy."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "channels": "grey" if self.in_chs == 1 else "RGB",
            "resolution": self.resolution,
            # Shorter side resized to this (bilinear), then a centre crop of resolution x resolution.
            "resize_to": _scaled_size((self.resolution, self.resolution), self.resolution)[0],
            "mean": list(self.mean),
            "std": list(self.std),
            "images": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "fingerprint": self.fingerprint(),
            # Apart from the fingerprint, which keys teachers cached before the test split was
            # part of the identity: a study's test accuracies are as much its data as its training.
            "test_fingerprint": self.identity().partition(":")[2],
        }

    def fingerprint(self) -> str:
        """Identifies the exact training data: keys the teacher cache."""
        return _content_hash(self.name, self.train, self.val)

    def identity(self) -> str:
        """Identifies this whole copy, test split included, as ``<training and validation
        fingerprint>:<test fingerprint>``: what a study's teacher records of the data it was
        made for, which may be the study's first record of its data (``identity_difference``)."""
        return f"{self.fingerprint()}:{_content_hash(self.name, self.test)}"


def _content_hash(name: str, *splits: Split) -> str:
    h = hashlib.sha256(name.encode())
    for split in splits:
        h.update(np.ascontiguousarray(split.pixels.numpy()))
        h.update(split.y.numpy().tobytes())
    return h.hexdigest()[:16]


def data_difference(study: dict, here: dict) -> str | None:
    """What differs between the record of a study's data and this copy's (``Dataset.record``),
    the plainest difference first, in a few words; None when they are the same data. Only
    what both records hold is compared: a study recorded by an earlier version holds less."""
    def both(key):
        return key in study and key in here

    if both("name") and study["name"] != here["name"]:
        return f"data set: {here['name']} here, {study['name']} in the study"
    if both("classes") and study["classes"] != here["classes"]:
        ours, theirs = here["classes"], study["classes"]
        if len(ours) != len(theirs):
            return f"classes: {len(ours)} here, {len(theirs)} in the study"
        i = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        return f"classes: class {i} is {ours[i]!r} here, {theirs[i]!r} in the study"
    if both("images") and study["images"] != here["images"]:
        counts = [
            f"{split} {here['images'].get(split)} here, {study['images'].get(split)} in the study"
            for split in ("train", "val", "test") if here["images"].get(split) != study["images"].get(split)
        ]
        return "images: " + "; ".join(counts)
    for key, unit in (("channels", ""), ("resolution", " px")):
        if both(key) and study[key] != here[key]:
            return f"{key}: {here[key]}{unit} here, {study[key]}{unit} in the study"
    for key, what in (("fingerprint", "training and validation"), ("test_fingerprint", "test")):
        if both(key) and study[key] != here[key]:
            return (
                f"content differs: the {what} images or labels are not the study's, though as many "
                f"(fingerprint {here[key]} here, {study[key]} in the study)"
            )
    return None


def identity_difference(recorded: str, data: Dataset) -> str | None:
    """Which of ``data``'s splits are not those of the ``recorded`` ``Dataset.identity()``,
    in a few words; None when they are the same. A record made before the test split was
    part of the identity holds the training and validation fingerprint alone."""
    train_val, _, test = recorded.partition(":")
    here_train_val, _, here_test = data.identity().partition(":")
    if train_val != here_train_val:
        return f"the training or validation images or labels differ (fingerprint {here_train_val} here, {train_val} recorded)"
    if test and test != here_test:
        return f"the test images or labels differ (fingerprint {here_test} here, {test} recorded)"
    return None


def balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of ``n`` samples with the classes as equally represented as they can be,
    drawn by ``seed`` (sorted, so the subset keeps the split's order)."""
    if n <= 0 or n >= len(labels):
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(labels == c).flatten() for c in range(int(labels.max()) + 1)]
    by_class = [members[torch.randperm(len(members), generator=g)] for members in by_class]
    quota = [0] * len(by_class)
    left = n
    while left > 0:  # round-robin: a class with no images left gives its turn to the others
        for c, members in enumerate(by_class):
            if left > 0 and quota[c] < len(members):
                quota[c] += 1
                left -= 1
    return torch.sort(torch.cat([members[:q] for members, q in zip(by_class, quota)])).values


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


def load_dataset(
    name: str,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    resolution: int = 0,
    skip_bad_images: bool = False,
) -> Dataset:
    """Load a data set at ``resolution`` pixels a side (0: chosen from the data, see
    :func:`default_resolution`); images are resized on the shorter side and centre-cropped."""
    check_dataset_name(name, data_dir)
    if resolution < 0:
        raise DatasetError(f"--resolution must be >= 0 (0: from the data), got {resolution}")
    skipped: list[str] = []
    if name.startswith("imagefolder:"):
        path = name.split(":", 1)[1]
        if resolution == 0:
            resolution, note = default_resolution(path)
        else:
            note = f"training resolution {resolution} px (--resolution)"
        images, labels, test_images, test_labels, classes, skipped = _load_imagefolder(
            path, cache_dir, resolution, skip_bad_images
        )
        hflip = True
    else:
        if name == "digits":
            images, labels, test_images, test_labels, classes, hflip = _load_digits()
        else:
            images, labels, test_images, test_labels, classes, hflip = _load_torchvision(name, data_dir)
        native = images.shape[-1]
        if resolution in (0, native):
            resolution, note = native, f"training resolution {native} px (the images' own)"
        else:
            note = f"training resolution {resolution} px (--resolution; the images are {native} px)"
            images, test_images = _resize_all(images, resolution), _resize_all(test_images, resolution)
    data = _make_dataset(name, images, labels, test_images, test_labels, classes, hflip)
    return replace(data, resolution_note=note, skipped=tuple(skipped))


def normalised_as(data: Dataset, mean: tuple[float, ...], std: tuple[float, ...]) -> Dataset:
    """``data`` normalised with ``mean`` and ``std`` (0..1 units, one per channel) instead of
    its own statistics: those a network trained elsewhere expects."""
    if len(mean) != data.in_chs or len(std) != data.in_chs:
        raise DatasetError(
            f"--mean and --std need {data.in_chs} values (one per channel of {data.name}), got {len(mean)} and {len(std)}"
        )
    mean, std = tuple(mean), tuple(std)
    splits = {k: replace(getattr(data, k), mean=mean, std=std) for k in ("train", "val", "test")}
    return replace(data, mean=mean, std=std, **splits)


def default_resolution(path: str) -> tuple[int, str]:
    """The median shorter side of (up to 256 of) the training images, at most 96 px,
    and a line that says so."""
    root, train_prefix, _ = _imagefolder_root(path)
    entries = [e for e in _list_images(root) if e[0] == train_prefix]
    if not entries:
        raise DatasetError(f"imagefolder {path}: no class folders with images under {train_prefix}/")
    step = max(1, len(entries) // RESOLUTION_PROBE)
    sides = []
    with _opener(root) as read:
        for _, _, member in entries[::step][:RESOLUTION_PROBE]:
            try:
                sides.append(min(read(member).size))  # the header only: nothing is decoded
            except Exception:  # an unreadable image is reported where it is decoded
                continue
    if not sides:
        raise DatasetError(f"imagefolder {path}: none of the first images could be read")
    median = int(np.median(sides))
    if median <= MAX_DEFAULT_RESOLUTION:
        return median, f"training resolution {median} px (the median shorter side of the training images; set --resolution)"
    return MAX_DEFAULT_RESOLUTION, (
        f"training resolution {MAX_DEFAULT_RESOLUTION} px (the training images' median shorter side is {median} px; "
        f"the default stops at {MAX_DEFAULT_RESOLUTION} to keep training affordable on a CPU; set --resolution)"
    )


def _make_dataset(name, images, labels, test_images, test_labels, classes, hflip) -> Dataset:
    """uint8 N x C x H x W arrays (memory-mapped or not) -> splits, the validation split
    carved out of the training images."""
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
    mean, std = _channel_stats(train_images)

    def to_split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, dtype=np.int64)), mean, std)

    return Dataset(
        name=name,
        classes=tuple(classes),
        mean=mean,
        std=std,
        train=to_split(train_images, labels[train_idx]),
        val=to_split(images[val_idx], labels[val_idx]),
        test=to_split(np.array(test_images), test_labels),
        hflip=hflip,
    )


def _channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 units) of N x C x H x W bytes, a chunk at a time:
    the float64 copy numpy's own ``std`` makes would be 8x the data set."""
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for i in range(0, len(images), chunk):
        block = images[i : i + chunk].astype(np.float64)
        total += block.sum(axis=(0, 2, 3))
        squares += np.square(block).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(float(m) / 255.0 for m in mean), tuple(float(s) / 255.0 for s in std)


def _load_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 0..16 grey levels -> uint8 0..255, N x 1 x H x W.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
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
        data = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # grey (MNIST) or N x H x W x C
        return np.ascontiguousarray(data.astype(np.uint8)), np.asarray(ds.targets, dtype=np.int64)

    images, labels = arrays(train)
    test_images, test_labels = arrays(test)
    return images, labels, test_images, test_labels, list(train.classes), name != "mnist"


def _resize_all(images: np.ndarray, resolution: int) -> np.ndarray:
    from PIL import Image

    mode = "L" if images.shape[1] == 1 else "RGB"
    out = np.empty((len(images), images.shape[1], resolution, resolution), dtype=np.uint8)
    for i, pixels in enumerate(images):
        img = Image.fromarray(pixels[0] if mode == "L" else pixels.transpose(1, 2, 0), mode)
        out[i] = _to_chw(_fit(img, resolution))
    return out


def _fit(img, resolution: int):
    """Shorter side to ``resolution`` (photos: to resolution/0.875) and a centre crop of
    ``resolution`` square: torchvision's evaluation transform, applied once, at decode."""
    from PIL import Image

    size = _scaled_size(img.size, resolution)
    if size != img.size:
        img = img.resize(size, Image.BILINEAR)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def _scaled_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    side = resolution if resolution <= SMALL_IMAGE_MAX else round(resolution / PHOTO_CROP)
    w, h = size
    scale = side / min(w, h)
    return max(side, round(w * scale)), max(side, round(h * scale))


def _to_chw(img) -> np.ndarray:
    pixels = np.asarray(img, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


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


def _load_imagefolder(path: str, cache_dir: str | None, resolution: int, skip_bad_images: bool):
    """Decode the tree once into memory-mapped uint8 arrays at ``resolution`` (cached under
    ``cache_dir``); images are read one at a time, so a folder of large photos never
    exists in memory at full size."""
    root, train_prefix, test_prefix = _imagefolder_root(path)
    stat = os.stat(root)
    key = hashlib.sha256(
        f"{Path(root).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{resolution}|{skip_bad_images}".encode()
    ).hexdigest()[:16]
    if cache_dir:
        cache = Path(cache_dir) / "data" / f"imagefolder-{key}"
        if (cache / "meta.json").exists():
            return _read_cache(cache)
        work = cache.with_name(f"{cache.name}.tmp-{os.getpid()}")
    else:
        cache = None
        work = Path(tempfile.mkdtemp(prefix="imagefolder-"))
    try:
        _decode_tree(path, root, train_prefix, test_prefix, resolution, skip_bad_images, work)
        if cache is None:
            return _read_cache(work, in_memory=True)
        try:
            work.rename(cache)  # atomic: a worker never reads a half-written cache
        except OSError:  # another worker finished first: use its copy
            pass
        return _read_cache(cache)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _decode_tree(path, root, train_prefix, test_prefix, resolution, skip_bad_images, out: Path) -> None:
    entries = _list_images(root)
    classes = sorted({c for (split, c, _) in entries if split == train_prefix})
    if not classes:
        raise DatasetError(f"imagefolder {path}: no class folders with images under {train_prefix}/")
    index = {c: i for i, c in enumerate(classes)}
    for split, cls, _ in entries:
        if split == test_prefix and cls not in index:
            raise DatasetError(f"imagefolder {path}: class {cls!r} is in {split}/ but not in {train_prefix}/")
    out.mkdir(parents=True, exist_ok=True)
    log.info("decoding %d images from %s at %d px (cached afterwards)", len(entries), path, resolution)
    skipped: list[str] = []
    counts = {}
    with _opener(root) as read:
        mode = _colour_mode(read, [e for e in entries if e[0] == train_prefix])
        for prefix, split in ((train_prefix, "train"), (test_prefix, "test")):
            members = [(cls, name) for (p, cls, name) in entries if p == prefix]
            pixels = np.lib.format.open_memmap(
                out / f"{split}_x.npy", mode="w+", dtype=np.uint8,
                shape=(len(members), 1 if mode == "L" else 3, resolution, resolution),
            )
            labels = np.empty(len(members), dtype=np.int64)
            n = 0
            for cls, name in members:
                try:
                    pixels[n] = _to_chw(_fit(_decode(read, name, mode, resolution), resolution))
                except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for a bad file
                    if not skip_bad_images:
                        raise DatasetError(
                            f"imagefolder {path}: cannot read {name} ({type(e).__name__}: {e}); "
                            "remove or replace it, or pass --skip-bad-images"
                        ) from None
                    skipped.append(name)
                    continue
                labels[n] = index[cls]
                n += 1
            pixels.flush()
            del pixels
            np.save(out / f"{split}_y.npy", labels[:n])
            counts[split] = n
    (out / "meta.json").write_text(json.dumps({"classes": classes, "counts": counts, "skipped": skipped}))


def _read_cache(folder: Path, in_memory: bool = False):
    meta = json.loads((folder / "meta.json").read_text())

    def images(split):
        x = np.load(folder / f"{split}_x.npy", mmap_mode="r")[: meta["counts"][split]]
        return np.array(x) if in_memory else x

    return (
        images("train"), np.load(folder / "train_y.npy"), images("test"), np.load(folder / "test_y.npy"),
        meta["classes"], meta["skipped"],
    )


def _colour_mode(read, train_entries) -> str:
    """Grey ("L") when the first images are all grey, else RGB."""
    for _, _, name in train_entries[:16]:
        try:
            if read(name).mode not in ("L", "1", "I;16"):
                return "RGB"
        except Exception:
            continue
    return "L"


def _decode(read, name: str, mode: str, resolution: int):
    img = read(name)
    # JPEG decodes at 1/2, 1/4 or 1/8 scale when that is still above the size wanted:
    # the full-size pixels of a large photo are never held.
    img.draft(mode, _scaled_size(img.size, resolution))
    return img.convert(mode)


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


@contextmanager
def _opener(root: Path):
    """``read(member)``: an image of the tree, opened lazily (the header is read, the pixels
    when first used)."""
    from PIL import Image

    if root.is_file():
        with zipfile.ZipFile(root) as zf:
            yield lambda name: Image.open(io.BytesIO(zf.read(name)))
    else:
        yield lambda name: Image.open(root / name)
