"""Data sets: digits, a folder (or zip) of images, real CIFAR-10 photos; splits and errors."""

import logging
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_subset import CIFAR10_CLASSES, extract_cifar10_subset
from search.data import DatasetError, check_dataset_name, load_dataset

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


def test_an_image_folder_takes_the_size_of_its_first_image_and_grey_stays_one_channel(tmp_path):
    root = tmp_path / "grey"
    for split in ("train", "val"):  # val/ stands in for test/
        for cls, level in (("dark", 30), ("light", 220)):
            (root / split / cls).mkdir(parents=True)
            for i, size in enumerate([(10, 10), (14, 9), (10, 10), (10, 10), (10, 10)]):
                Image.new("L", size, level).save(root / split / cls / f"{i}.png")
    data = load_dataset(f"imagefolder:{root}")
    assert data.train.x.shape[1:] == (1, 10, 10) and data.test.x.shape == (10, 1, 10, 10)


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
    assert len(list((tmp_path / "cache" / "data").glob("imagefolder-*.npz"))) == 1
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
