"""Baselines: torchvision's MobileNetV3-Small at four widths, enqueued once into a new
study, marked, filed under a point of the space, and run by the real search."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torchvision
from optuna.trial import TrialState

import spaces
from search.runner import SearchRequest, run_search
from search.study import attrs
from search.study.baselines import WIDTHS, enqueue_baselines, study_baselines
from search.study.storage import open_storage
from search.targets import get_target
from spaces import build_model, get_space, mobilenet_v3_small, nearest_params


@pytest.mark.parametrize("width", WIDTHS)
def test_the_baseline_is_torchvisions_network_at_that_width(width):
    ours = build_model(mobilenet_v3_small(width, 3, 224, 1000))
    theirs = torchvision.models.mobilenet_v3_small(width_mult=width)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]


def test_small_images_get_the_studys_stride_schedule():
    arch = mobilenet_v3_small(0.5, 1, 8, 10)
    stem, strides = spaces.stride_schedule(8, 4)
    assert arch.stem_stride == stem == 1
    assert [b.stride for b in arch.blocks if b.stride == 2] == [2] * strides.count(2) == [2]
    assert arch.in_chs == 1 and arch.num_classes == 10


@pytest.mark.parametrize("space", sorted(spaces.SPACES))
def test_every_baseline_is_filed_under_a_point_of_the_space(space):
    """The enqueued parameters are valid choices of the space: sampling them builds a network."""
    for width in WIDTHS:
        params = nearest_params(get_space(space), mobilenet_v3_small(width, 3, 32, 10))
        trial = optuna.trial.FixedTrial(params)
        spaces.sample_arch(trial, get_space(space), 3, 32, 10)  # raises on a value outside the choices
        assert set(trial.params) == set(params)


def test_a_target_without_int8_static_skips_those_baselines_and_says_why():
    host = get_target("host")
    chosen, skipped = study_baselines(get_space("compact"), host, 1, 8, 10)
    assert [b.name for b in chosen] == [f"mnv3-small-{w:g}-{q}" for w in WIDTHS for q in ("fp32", "int8-static")]
    assert skipped == {}
    no_int8 = dataclasses.replace(host, quant_modes=("fp32", "fp16"))
    chosen, skipped = study_baselines(get_space("compact"), no_int8, 1, 8, 10)
    assert [b.compression.quant for b in chosen] == ["fp32"] * len(WIDTHS)
    assert set(skipped) == {f"mnv3-small-{w:g}-int8-static" for w in WIDTHS}
    assert all("offers no int8-static" in why for why in skipped.values())


def test_baselines_are_enqueued_once_and_only_into_a_new_study(tmp_path):
    url = f"sqlite:///{tmp_path}/b.db"
    study = optuna.create_study(study_name="b", storage=open_storage(url), directions=list(attrs.DIRECTIONS))
    chosen, skipped = study_baselines(get_space("tiny"), get_target("host"), 1, 8, 10)
    assert enqueue_baselines(study, get_space("tiny"), chosen, skipped)
    assert not enqueue_baselines(study, get_space("tiny"), chosen, skipped)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[attrs.BASELINE] for t in waiting] == [b.name for b in chosen]
    assert study.user_attrs[attrs.STUDY_BASELINES]["enqueued"] == [b.name for b in chosen]
    # A study that already has trials (created before baselines existed) gets none.
    old = optuna.create_study(study_name="old", storage=open_storage(url), directions=list(attrs.DIRECTIONS))
    old.enqueue_trial({})
    assert not enqueue_baselines(old, get_space("tiny"), chosen, skipped)


def test_a_search_starts_with_the_baselines_and_a_resumed_one_does_not_repeat_them(tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)
    explicit = {"space": "tiny", "epochs": 1.0, "finetune_epochs": 0.5, "calib_samples": 32}
    run_search(SearchRequest(budget=2, explicit=explicit, study="base", cache_dir=str(cache_dir)))
    run_search(SearchRequest(budget=3, explicit=explicit, study="base", cache_dir=str(cache_dir)))
    study = optuna.load_study(study_name="base", storage="sqlite:///studies/base/study.db")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    names = [t.user_attrs.get(attrs.BASELINE) for t in complete]
    assert names == ["mnv3-small-0.35-fp32", "mnv3-small-0.35-int8-static", "mnv3-small-0.5-fp32"]
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2 * len(WIDTHS) - 3
    first, twin, _ = complete
    # The exact torchvision network was trained, filed under the space's nearest point.
    assert first.user_attrs[attrs.ARCH_SAMPLED] == str(mobilenet_v3_small(0.35, 1, 8, 10))
    assert first.params["quant"] == "fp32" and first.params["prune_ratio"] == 0.0
    # The int8 twin is the same trained network, quantized: trained once.
    assert twin.user_attrs[attrs.TRAINED_BY] == first.number
    assert twin.user_attrs[attrs.LEARNING_CURVE] == first.user_attrs[attrs.LEARNING_CURVE]
    assert attrs.SECONDS_PREFIX + "train" in twin.user_attrs and attrs.TRAIN_LOSS not in twin.user_attrs
    assert twin.user_attrs[attrs.ACCURACY_BEFORE_QUANT] == pytest.approx(first.user_attrs[attrs.ACCURACY], abs=1e-9)
