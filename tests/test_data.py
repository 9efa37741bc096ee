"""Data sets: digits, a folder (or zip) of images, real CIFAR-10 photos; splits and errors."""

import io
import logging
import subprocess
import sys
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_subset import CIFAR10_CLASSES, extract_cifar10_subset
from conftest import ROOT
from search.data import (
    DatasetError, Split, balanced_subset, check_dataset_name, data_difference, identity_difference, load_dataset,
)

# Class -> its dominant colour channel: a class is recognisable from its pixels after loading.
CHANNELS = {"blue": 2, "green": 1, "red": 0}


def write_image_tree(root, train_per_class=5, test_per_class=2, size=12):
    """``root/train/<class>/*`` and ``root/test/<class>/*``: noisy PNG and JPEG images, one
    dominant colour per class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for cls, channel in CHANNELS.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                pixels[..., channel] += 170
                Image.fromarray(pixels).save(root / split / cls / f"{i}{'.png' if i % 2 else '.jpg'}")
    return root


def class_of_colour(data, split) -> list[str]:
    """The class each image's dominant channel says, in the split's order."""
    raw = split.x * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)
    by_channel = {channel: cls for cls, channel in CHANNELS.items()}
    return [by_channel[int(c)] for c in raw.mean(dim=(2, 3)).argmax(dim=1)]


def test_digits_has_train_val_and_test_splits_of_8x8_grey_images(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1150, 287, 360)  # 1,797 images in all
    assert digits.train.x.shape[1:] == (1, 8, 8) and digits.train.x.dtype == torch.float32
    assert digits.val.y.dtype == torch.int64
    assert (digits.in_chs, digits.resolution, digits.num_classes) == (1, 8, 10)
    assert digits.classes == tuple("0123456789") and digits.hflip is False


def test_digits_training_split_is_normalised(digits):
    assert abs(float(digits.train.x.mean())) < 1e-4
    assert abs(float(digits.train.x.std()) - 1.0) < 1e-3


def test_validation_split_is_carved_stratified_from_the_training_data(digits):
    train_counts = np.bincount(digits.train.y.numpy(), minlength=10)
    val_counts = np.bincount(digits.val.y.numpy(), minlength=10)
    expected = (train_counts + val_counts) * len(digits.val) / (len(digits.train) + len(digits.val))
    assert np.abs(val_counts - expected).max() <= 1
    train_rows = {row.numpy().tobytes() for row in digits.train.x}
    test_rows = {row.numpy().tobytes() for row in digits.test.x}
    # digits holds a few exact duplicates: nearly every validation image is absent from train and test.
    assert sum(row.numpy().tobytes() in train_rows | test_rows for row in digits.val.x) < 5


def test_the_same_seed_carves_the_same_split_every_time(digits):
    again = load_dataset("digits")
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert again.fingerprint() == digits.fingerprint()


@pytest.mark.parametrize(
    "name, data_dir, message",
    [
        ("imagenet", None, "unknown data set 'imagenet'; choose digits"),
        ("cifar10", None, "--dataset cifar10 needs --data-dir DIR"),
        ("mnist", "{tmp}/missing", "--data-dir {tmp}/missing is not a folder"),
        ("imagefolder:{tmp}/missing", None, "imagefolder path {tmp}/missing does not exist"),
        ("imagefolder:{tmp}/only-train", None, "imagefolder {tmp}/only-train needs train/ and test/ \\(or val/\\)"),
        ("imagefolder:{tmp}/notes.txt", None, "is neither a folder nor a zip file"),
    ],
)
def test_a_data_set_that_cannot_load_is_refused_saying_why(tmp_path, name, data_dir, message):
    (tmp_path / "only-train" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("not images")
    fill = {"tmp": tmp_path}
    with pytest.raises(DatasetError, match=message.format(**fill)):
        check_dataset_name(name.format(**fill), data_dir and data_dir.format(**fill))


def test_known_data_sets_with_a_folder_pass_the_check(tmp_path):
    check_dataset_name("digits", None)
    check_dataset_name("fashion-mnist", str(tmp_path))
    check_dataset_name(f"imagefolder:{write_image_tree(tmp_path / 'tree')}", None)


def test_an_image_folder_of_png_and_jpeg_files_loads_with_its_classes(tmp_path):
    data = load_dataset(f"imagefolder:{write_image_tree(tmp_path / 'tree')}")
    assert data.classes == ("blue", "green", "red") and data.hflip is True
    assert (len(data.train), len(data.val), len(data.test)) == (12, 3, 6)
    assert data.train.x.shape[1:] == (3, 12, 12)
    assert class_of_colour(data, data.test) == [data.classes[int(y)] for y in data.test.y]
    assert class_of_colour(data, data.train) == [data.classes[int(y)] for y in data.train.y]


def test_an_image_folder_of_small_images_trains_at_their_median_shorter_side_and_grey_stays_one_channel(tmp_path):
    root = tmp_path / "grey"
    for split in ("train", "val"):  # val/ stands in for test/
        for cls, level in (("dark", 30), ("light", 220)):
            (root / split / cls).mkdir(parents=True)
            for i, size in enumerate([(10, 10), (14, 9), (10, 10), (10, 10), (10, 10)]):
                Image.new("L", size, level).save(root / split / cls / f"{i}.png")
    data = load_dataset(f"imagefolder:{root}")
    assert data.train.x.shape[1:] == (1, 10, 10) and data.test.x.shape == (10, 1, 10, 10)
    assert data.resolution_note.startswith("training resolution 10 px (the median shorter side")


def test_a_zip_of_an_image_folder_loads_like_the_folder(tmp_path):
    root = write_image_tree(tmp_path / "photos")
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as zf:
        for path in sorted(root.rglob("*.*")):
            zf.write(path, f"photos/{path.relative_to(root)}")  # a zip of one folder
    from_folder = load_dataset(f"imagefolder:{root}")
    from_zip = load_dataset(f"imagefolder:{tmp_path / 'photos.zip'}")
    assert from_zip.classes == from_folder.classes
    assert torch.equal(from_zip.train.x, from_folder.train.x) and torch.equal(from_zip.test.y, from_folder.test.y)


def test_decoded_images_are_cached_and_read_back_unchanged(tmp_path, caplog):
    name = f"imagefolder:{write_image_tree(tmp_path / 'tree')}"
    with caplog.at_level(logging.INFO, logger="search.data"):
        first = load_dataset(name, cache_dir=str(tmp_path / "cache"))
        decoded_first = [r.message for r in caplog.records if r.message.startswith("decoding")]
        caplog.clear()
        second = load_dataset(name, cache_dir=str(tmp_path / "cache"))
    assert len(decoded_first) == 1 and not [r for r in caplog.records if r.message.startswith("decoding")]
    assert [p.name.startswith("imagefolder-") for p in (tmp_path / "cache" / "data").iterdir()] == [True]
    assert second.classes == first.classes
    assert torch.equal(second.train.x, first.train.x) and torch.equal(second.test.y, first.test.y)


def test_a_class_only_in_the_test_split_is_refused(tmp_path):
    root = write_image_tree(tmp_path / "tree")
    (root / "test" / "purple").mkdir()
    Image.new("RGB", (12, 12), (128, 0, 128)).save(root / "test" / "purple" / "0.png")
    with pytest.raises(DatasetError, match="class 'purple' is in test/ but not in train/"):
        load_dataset(f"imagefolder:{root}")


def test_real_cifar10_photos_load_as_an_image_folder(tmp_path):
    root = extract_cifar10_subset(tmp_path / "cifar10", train_per_class=20, test_per_class=3)
    data = load_dataset(f"imagefolder:{root}")
    assert data.classes == CIFAR10_CLASSES
    assert data.train.x.shape[1:] == (3, 32, 32) and (data.in_chs, data.resolution) == (3, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (160, 40, 30)
    assert np.bincount(data.test.y.numpy()).tolist() == [3] * 10
    # CIFAR-10's per-channel means (as in ../shared/models/resnet18-cifar10.json), to a few per cent.
    assert np.allclose(data.mean, (0.491, 0.482, 0.447), atol=0.05)


def test_too_few_images_for_a_validation_split_are_refused_saying_how_many(tmp_path):
    for split, n in (("train", 4), ("test", 1)):
        for cls in ("a", "b", "c"):
            folder = tmp_path / "few" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (80 * i, 0, 0)).save(folder / f"{i}.png")
    with pytest.raises(DatasetError, match="12 training images for 3 classes.*at least 5 training images per class"):
        load_dataset(f"imagefolder:{tmp_path / 'few'}", cache_dir=str(tmp_path / "cache"))


def write_photo_tree(root, sizes, per_class=6, test_per_class=2):
    """Photos as a phone or a web scrape leaves them: JPEGs of mixed sizes and orientations.
    Each class is a colour; a frame of the opposite colour, 1/20 of the shorter side wide,
    is what an evaluation centre crop cuts away."""
    rng = np.random.default_rng(1)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    for split, n in (("train", per_class), ("test", test_per_class)):
        for cls, colour in colours.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                pixels = np.empty((h, w, 3), np.uint8)
                pixels[:] = colour[::-1]
                border = max(1, min(w, h) // 20)
                pixels[border:-border, border:-border] = colour
                pixels = np.clip(pixels.astype(int) + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.jpg", quality=90)
    return root


MIXED_SIZES = [(500, 375), (375, 500), (640, 480), (333, 500), (500, 333), (300, 300)]


def test_photos_of_mixed_sizes_train_at_a_default_resolution_stated_and_capped(tmp_path):
    data = load_dataset(f"imagefolder:{write_photo_tree(tmp_path / 'photos', MIXED_SIZES)}")
    assert data.resolution == 96 and data.train.pixels.shape[1:] == (3, 96, 96)
    assert data.train.pixels.dtype == torch.uint8 and data.photos
    assert data.resolution_note == (
        "training resolution 96 px (the training images' median shorter side is 354 px; "
        "the default stops at 96 to keep training affordable on a CPU; set --resolution)"
    )
    # Evaluation view: shorter side to 96/0.875, centre crop 96: the frame is cut away.
    raw = data.test.pixels.float()
    red = data.test.y == data.classes.index("red")
    assert (raw[red, 0] > raw[red, 2] + 100).all() and (raw[~red, 2] > raw[~red, 0] + 100).all()


def test_resolution_can_be_chosen_and_small_images_are_resized_not_cropped_by_the_photo_rule(tmp_path):
    root = write_photo_tree(tmp_path / "photos", MIXED_SIZES)
    data = load_dataset(f"imagefolder:{root}", resolution=32)
    assert data.train.pixels.shape[1:] == (3, 32, 32) and not data.photos
    assert data.resolution_note == "training resolution 32 px (--resolution)"
    # Shorter side to 32 and a centre crop: the frame is still there at the top and bottom.
    landscape = data.test.pixels[0].float()
    assert abs(float(landscape[0, 0, 16] - landscape[0, 16, 16])) > 100
    digits16 = load_dataset("digits", resolution=16)
    assert digits16.train.pixels.shape[1:] == (1, 16, 16)
    assert "the images are 8 px" in digits16.resolution_note


def test_split_bytes_are_normalised_a_batch_at_a_time(digits):
    pixels = digits.train.pixels[:5].float() / 255.0
    expected = (pixels - digits.mean[0]) / digits.std[0]
    assert torch.allclose(digits.train.batch(slice(0, 5)), expected, atol=1e-6)
    assert torch.allclose(digits.train.batch(torch.tensor([3, 1])), expected[[3, 1]], atol=1e-6)
    floats = Split(expected, digits.train.y[:5])  # already normalised: given back as it is
    assert torch.equal(floats.batch(slice(None)), expected)


MEMORY_PROBE = """
import resource, sys
from search.data import load_dataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = load_dataset(sys.argv[1], cache_dir=sys.argv[2], resolution=32)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(data.train) + len(data.val) + len(data.test), (after - before) // 1024)
"""


@pytest.mark.slow  # 32 s: decodes large photos under a memory cap; CI runs it
def test_large_photos_decode_in_bounded_memory(tmp_path):
    """120 photos of 2000 x 1500 are 1.1 GB of pixels at full size; decoded at a reduced
    JPEG scale, one at a time, into a memory-mapped cache, loading them costs a few MB."""
    root = write_photo_tree(tmp_path / "big", [(2000, 1500), (1500, 2000)], per_class=50, test_per_class=10)
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, f"imagefolder:{root}", str(tmp_path / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    n_images, grown_mb = map(int, result.stdout.split())
    assert n_images == 120
    assert grown_mb < 100, f"loading grew the peak memory by {grown_mb} MB"


def write_corrupt_jpeg(path):
    good = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 10)).save(good, format="JPEG")
    path.write_bytes(good.getvalue()[: len(good.getvalue()) // 3])  # a download cut short


def test_an_unreadable_image_stops_the_load_naming_it_unless_skipped(tmp_path, caplog):
    root = write_image_tree(tmp_path / "tree")
    write_corrupt_jpeg(root / "train" / "red" / "broken.jpg")
    (root / "train" / "blue" / "notes.jpg").write_text("not an image at all")
    with pytest.raises(DatasetError, match=r"cannot read train/blue/notes.jpg .*pass --skip-bad-images"):
        load_dataset(f"imagefolder:{root}", cache_dir=str(tmp_path / "cache"))
    assert not list((tmp_path / "cache" / "data").glob("imagefolder-*"))  # nothing half-written
    data = load_dataset(f"imagefolder:{root}", cache_dir=str(tmp_path / "cache"), skip_bad_images=True)
    assert data.skipped == ("train/blue/notes.jpg", "train/red/broken.jpg")
    assert len(data.train) + len(data.val) == 15  # the good ones


def test_the_proxy_subset_is_class_balanced_and_fixed_by_the_seed():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 4)
    subset = balanced_subset(labels, 30, seed=0)
    assert torch.bincount(labels[subset]).tolist() == [13, 13, 4]  # class 2 has only 4: the others share its turns
    assert torch.equal(subset, balanced_subset(labels, 30, seed=0))
    assert not torch.equal(subset, balanced_subset(labels, 30, seed=1))
    assert torch.equal(subset, torch.sort(subset).values) and len(set(subset.tolist())) == 30
    assert torch.equal(balanced_subset(labels, 0, seed=0), torch.arange(84))
    even = balanced_subset(torch.arange(1000) % 10, 100, seed=3)
    assert torch.bincount((torch.arange(1000) % 10)[even]).tolist() == [10] * 10


def test_the_difference_between_two_copies_of_a_data_set_is_named_plainest_first(digits):
    study = digits.record()
    assert data_difference(study, digits.record()) is None
    one_less = replace(digits, train=digits.train.take(torch.arange(1, len(digits.train))))
    assert data_difference(study, one_less.record()) == "images: train 1149 here, 1150 in the study"
    renamed = replace(digits, classes=("zero",) + digits.classes[1:])
    assert data_difference(study, renamed.record()) == "classes: class 0 is 'zero' here, '0' in the study"
    assert data_difference(study, replace(digits, classes=digits.classes[:9]).record()) == "classes: 9 here, 10 in the study"
    pixels = digits.train.pixels.clone()
    pixels[0, 0, 0, 0] += 1  # one pixel of one image
    changed = replace(digits, train=replace(digits.train, pixels=pixels))
    assert data_difference(study, changed.record()) == (
        "content differs: the training and validation images or labels are not the study's, though as many "
        f"(fingerprint {changed.fingerprint()} here, {digits.fingerprint()} in the study)"
    )
    labels = digits.test.y.clone()
    labels[0] = (labels[0] + 1) % 10  # one test label
    relabelled = replace(digits, test=replace(digits.test, y=labels))
    assert data_difference(study, relabelled.record()).startswith("content differs: the test images or labels")


def test_a_teacher_s_record_of_its_data_names_the_split_that_differs(digits):
    """What a study's teacher records of its data (``Dataset.identity``), which may be the
    study's only record when it was installed before any worker ran."""
    assert identity_difference(digits.identity(), digits) is None
    pixels = digits.val.pixels.clone()
    pixels[0, 0, 0, 0] += 1
    other_val = replace(digits, val=replace(digits.val, pixels=pixels))
    assert identity_difference(digits.identity(), other_val).startswith("the training or validation images")
    labels = digits.test.y.clone()
    labels[0] = (labels[0] + 1) % 10
    other_test = replace(digits, test=replace(digits.test, y=labels))
    test_here, test_recorded = other_test.identity().partition(":")[2], digits.identity().partition(":")[2]
    assert identity_difference(digits.identity(), other_test) == \
        f"the test images or labels differ (fingerprint {test_here} here, {test_recorded} recorded)"
    # A teacher published before the test split was part of the identity recorded the first part alone.
    assert identity_difference(digits.fingerprint(), other_test) is None
    assert identity_difference(digits.fingerprint(), other_val) is not None


def test_a_study_recorded_by_an_earlier_version_is_compared_on_what_it_recorded(digits):
    earlier = {k: v for k, v in digits.record().items() if k != "test_fingerprint"}
    labels = digits.test.y.clone()
    labels[0] = (labels[0] + 1) % 10
    assert data_difference(earlier, replace(digits, test=replace(digits.test, y=labels)).record()) is None
    assert data_difference({"name": "digits"}, digits.record()) is None
    assert data_difference({"name": "mnist"}, digits.record()) == "data set: digits here, mnist in the study"
