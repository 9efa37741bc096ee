"""A few hundred real CIFAR-10 photos, as an ImageFolder tree, for tests that need real images."""

from __future__ import annotations

import zipfile
from collections import defaultdict
from pathlib import Path

from conftest import ROOT

CIFAR10_ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"  # train/<class>/*.jpg, test/<class>/*.jpg
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def extract_cifar10_subset(dest: Path, train_per_class: int, test_per_class: int) -> Path:
    """The first ``train_per_class`` / ``test_per_class`` photos of each class, by file name,
    extracted under ``dest``; returns ``dest``."""
    per_split = {"train": train_per_class, "test": test_per_class}
    chosen = defaultdict(list)
    with zipfile.ZipFile(CIFAR10_ZIP) as zf:
        for name in sorted(n for n in zf.namelist() if n.endswith(".jpg")):
            split, cls, _ = name.split("/")
            if len(chosen[split, cls]) < per_split[split]:
                chosen[split, cls].append(name)
        zf.extractall(dest, members=[n for names in chosen.values() for n in names])
    return dest
