"""The teacher: trained once per data set and cached, or imported from a ResNet-18 state dict."""

from dataclasses import replace

import pytest
import torch

from cifar_subset import extract_cifar10_subset
from conftest import ROOT
from search.data import Split, load_dataset
from search.stages.teacher import (
    build_teacher,
    default_teacher_epochs,
    import_teacher,
    load_or_train_teacher,
    teacher_logits,
    teacher_path,
)
from search.stages.train import accuracy, predict_logits

CIFAR10_RESNET = ROOT.parent / "shared" / "models" / "resnet18-cifar10.pt"  # 83.9% on CIFAR-10's test split


def first(split: Split, n: int) -> Split:
    return split.take(torch.arange(n))


@pytest.fixture(scope="module")
def small_digits(digits):
    """Digits cut down so that training a teacher takes a second."""
    return replace(digits, name="digits-small", train=first(digits.train, 64), val=first(digits.val, 32))


@pytest.fixture(scope="module")
def trained(small_digits, tmp_path_factory):
    cache = tmp_path_factory.mktemp("teacher-cache")
    return load_or_train_teacher(small_digits, cache, epochs=1), cache


def test_a_trained_teacher_is_cached_with_its_accuracy(trained, small_digits):
    teacher, cache = trained
    assert teacher.source == "trained (1 epochs)"
    assert teacher.path == teacher_path(small_digits, cache) and teacher.path.is_file()
    assert teacher.val_accuracy == accuracy(predict_logits(teacher.model, small_digits.val), small_digits.val.y)


def test_logits_are_computed_for_the_images_asked_and_cached_beside_the_teacher(trained, small_digits, monkeypatch):
    teacher, _ = trained
    subset = first(small_digits.train, 20)
    logits = teacher_logits(teacher, subset)
    assert logits.shape == (20, 10)
    assert torch.allclose(logits, predict_logits(teacher.model, subset))
    cached = list(teacher.path.parent.glob(f"{teacher.path.stem}.logits-20-*.pt"))
    assert len(cached) == 1
    import search.stages.teacher as module

    monkeypatch.setattr(module, "predict_logits", lambda *a, **k: pytest.fail("recomputed cached logits"))
    assert torch.equal(teacher_logits(teacher, subset), logits)
    # Other images are other logits, not the cached ones.
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        teacher_logits(teacher, first(small_digits.train, 21))


def test_a_second_call_loads_the_cached_teacher_instead_of_training(trained, small_digits):
    teacher, cache = trained
    written = teacher.path.stat().st_mtime_ns
    again = load_or_train_teacher(small_digits, cache, epochs=2)
    assert (again.source, again.val_accuracy, again.path) == (teacher.source, teacher.val_accuracy, teacher.path)
    assert teacher.path.stat().st_mtime_ns == written
    assert not again.model.training
    for a, b in zip(again.model.state_dict().values(), teacher.model.state_dict().values()):
        assert torch.equal(a, b)


def test_each_data_set_has_its_own_cached_teacher(small_digits, digits, tmp_path):
    other = replace(small_digits, train=first(digits.train, 65))
    assert teacher_path(other, tmp_path) != teacher_path(small_digits, tmp_path)
    folder = replace(small_digits, name="imagefolder:/data/photos.zip")
    path = teacher_path(folder, tmp_path)
    assert path.parent == tmp_path / "teachers" and path.name.startswith("resnet18-imagefolder__data_photos.zip-")


def test_default_teacher_epochs_grow_as_the_data_set_shrinks(digits, small_digits):
    huge = replace(digits, train=Split(digits.train.pixels.repeat(50, 1, 1, 1), digits.train.y.repeat(50)))
    assert [default_teacher_epochs(d) for d in (small_digits, digits, huge)] == [15, 10, 3]


def test_the_cifar10_resnet18_imports_as_the_teacher_and_scores_well_above_chance(tmp_path):
    data = load_dataset(f"imagefolder:{extract_cifar10_subset(tmp_path / 'cifar10', 40, 5)}")
    teacher = import_teacher(data, CIFAR10_RESNET, tmp_path / "cache")
    assert teacher.source == f"imported from {CIFAR10_RESNET}"
    assert teacher.val_accuracy > 0.6  # 80 validation photos; chance is 0.1
    assert all(p.dtype == torch.float32 for p in teacher.model.parameters())  # the file holds float16
    installed = load_or_train_teacher(data, tmp_path / "cache")
    assert (installed.source, installed.val_accuracy) == (teacher.source, teacher.val_accuracy)


def test_a_state_dict_that_does_not_fit_is_refused_saying_what_the_teacher_needs(digits, tmp_path):
    with pytest.raises(ValueError) as e:
        import_teacher(digits, CIFAR10_RESNET, tmp_path)  # 3 input channels; digits has 1
    message = str(e.value)
    assert message.startswith(f"{CIFAR10_RESNET} does not fit the teacher for digits")
    assert "ResNet-18 (3x3 stride-1 stem, no max-pool, 1 input channels, 10 classes)" in message
    assert "size mismatch for conv1.weight" in message and "\n" not in message  # which tensor, on one line
    assert not teacher_path(digits, tmp_path).exists()


def test_a_state_dict_of_another_network_is_refused(digits, tmp_path):
    weights = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(64, 10).state_dict(), weights)
    with pytest.raises(ValueError, match=f"{weights} does not fit the teacher for digits"):
        import_teacher(digits, weights, tmp_path)


def test_the_teacher_strides_in_its_stem_for_photos_only():
    small, photos = build_teacher(3, 10, photos=False), build_teacher(3, 10, photos=True)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    assert photos.conv1.stride == (2, 2) and photos.conv1.kernel_size == (7, 7)
    assert isinstance(photos.maxpool, torch.nn.MaxPool2d)
    # At 96 px the photo stem leaves a quarter of the side to the residual stages: 1/16 of the compute.
    with torch.no_grad():
        assert photos.layer1(photos.maxpool(photos.relu(photos.bn1(photos.conv1(torch.zeros(1, 3, 96, 96)))))).shape[-1] == 24
    assert build_teacher(1, 10, photos=True).conv1.in_channels == 1
