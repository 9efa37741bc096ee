"""A study's configuration: defaults, storage as JSON, where each setting comes from, names."""

import json
from dataclasses import fields

import pytest

from search.study.config import (
    SAMPLERS,
    ConfigError,
    StudyConfig,
    check_study_name,
    config_keys,
    default_study_name,
    option_name,
    resolve,
)


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    """Run from an empty folder: ``studies/<study>.toml`` is read relative to it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    return tmp_path


def write_toml(root, study: str, text: str) -> None:
    (root / "studies" / f"{study}.toml").write_text(text)


def test_defaults_are_the_documented_recipe():
    c = StudyConfig()
    assert (c.dataset, c.space, c.target, c.sampler) == ("digits", "auto", "host", "tpe")
    assert (c.alpha, c.temperature, c.epochs, c.finetune_epochs) == (0.3, 4.0, 8.0, 4.0)
    assert c.max_latency_ms is None and c.max_size_kb is None


def test_json_round_trip_gives_back_an_equal_config():
    c = StudyConfig(dataset="imagefolder:photos/", space="tiny", epochs=0.5, seed=3, max_size_kb=12.5)
    text = c.to_json()
    assert set(json.loads(text)) == config_keys() | {"weights_sha256"}  # the settings, and what they record
    assert StudyConfig.from_json(text) == c


def test_from_json_of_another_version_ignores_unknown_keys_and_defaults_missing_ones():
    stored = json.dumps({"dataset": "mnist", "epochs": 2.0, "setting_of_a_later_version": 1})
    c = StudyConfig.from_json(stored)
    assert (c.dataset, c.epochs) == ("mnist", 2.0)
    assert c.batch_size == StudyConfig().batch_size


@pytest.mark.parametrize(
    "setting, value, option",
    [
        ("epochs", 0, "--epochs"),
        ("batch_size", 1, "--batch-size"),
        ("alpha", 1.5, "--alpha"),
        ("calib_samples", 0, "--calib-samples"),
        ("sampler", "grid", "--sampler"),
        ("population", 1, "--population"),
        ("max_latency_ms", 0, "--max-latency-ms"),
        ("max_size_kb", -1, "--max-size-kb"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_option_and_value(setting, value, option):
    with pytest.raises(ConfigError) as e:
        StudyConfig(**{setting: value})
    assert str(e.value).startswith(f"{option} must be ")
    assert str(e.value).endswith(f"got {value}")


def test_joining_a_stored_study_refuses_a_contradicting_setting_and_names_its_option():
    stored = StudyConfig(epochs=2.0, batch_size=64)
    with pytest.raises(ConfigError) as e:
        resolve("s1", {"epochs": 2.0, "batch_size": 32}, stored)
    message = str(e.value)
    assert "'s1'" in message and "batch_size = 64" in message and "not 32" in message
    assert "drop --batch-size" in message


def test_joining_a_stored_study_with_agreeing_settings_gives_the_stored_config(in_tmp):
    stored = StudyConfig(epochs=2.0, space="compact")
    write_toml(in_tmp, "s1", "epochs = 5\n")  # the stored configuration wins over the file
    assert resolve("s1", {"epochs": 2.0, "dataset": "digits"}, stored) == stored
    assert resolve("s1", {}, stored) == stored


def test_a_new_study_takes_its_toml_file_and_the_command_line_overrides_it(in_tmp):
    write_toml(in_tmp, "s1", "epochs = 5\nmax-latency-ms = 0.5\nbatch_size = 64\n")
    c = resolve("s1", {"epochs": 3.0}, None)
    assert (c.epochs, c.max_latency_ms, c.batch_size) == (3.0, 0.5, 64)
    assert resolve("other", {}, None) == StudyConfig()  # another study's file does not apply


def test_a_toml_file_with_an_unknown_setting_is_refused_naming_it(in_tmp):
    write_toml(in_tmp, "s1", "epoch = 5\n")
    with pytest.raises(ConfigError, match=r"studies/s1\.toml: unknown settings \['epoch'\]"):
        resolve("s1", {}, None)


def test_a_toml_file_that_is_not_toml_is_refused_naming_it(in_tmp):
    write_toml(in_tmp, "s1", "epochs = = 5\n")
    with pytest.raises(ConfigError, match=r"studies/s1\.toml is not valid TOML"):
        resolve("s1", {}, None)


def test_a_new_study_refuses_a_setting_that_does_not_exist(in_tmp):
    with pytest.raises(ConfigError, match="no_such_setting"):
        resolve("s1", {"no_such_setting": 1}, None)


@pytest.mark.parametrize("name", ["digits-host", "a", "my_study.v2", "X" * 100])
def test_a_good_study_name_is_accepted(name):
    check_study_name(name)


@pytest.mark.parametrize("name", ["", "-x", ".hidden", "../up", "a/b", "a b", "X" * 101])
def test_a_bad_study_name_is_refused(name):
    with pytest.raises(ConfigError, match="--study .*letters, digits"):
        check_study_name(name)


@pytest.mark.parametrize(
    "dataset, target, name",
    [
        ("digits", "host", "digits-host"),
        ("imagefolder:photos/", "arm", "imagefolder-photos-arm"),
        ("imagefolder:/data/cifar10-jpeg.zip", "x86", "imagefolder-cifar10-jpeg-x86"),
        ("imagefolder:my photos/", "host", "imagefolder-my-photos-host"),
        ("digits", "my board!", "digits-my-board"),
    ],
)
def test_default_study_name_is_dataset_and_target_made_safe(dataset, target, name):
    assert default_study_name(dataset, target) == name
    check_study_name(name)


def test_config_keys_are_the_settings_each_with_the_help_its_option_shows():
    # What the study records beside its settings (the weights' hash) is no setting.
    assert config_keys() == {f.name for f in fields(StudyConfig)} - {"weights_sha256"}
    assert {"dataset", "epochs", "max_latency_ms", "max_size_kb"} <= config_keys()
    for f in (f for f in fields(StudyConfig) if f.name in config_keys()):
        assert len(f.metadata["help"]) > 10, f.name
        assert f.metadata["metavar"] or isinstance(f.default, bool), f.name  # a flag pair has no value
    assert StudyConfig.__dataclass_fields__["sampler"].metadata["choices"] == SAMPLERS


def test_option_name_is_the_long_option_of_a_setting():
    assert option_name("max_latency_ms") == "--max-latency-ms"
    assert option_name("epochs") == "--epochs"
