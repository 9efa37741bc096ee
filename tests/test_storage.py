"""Where a study lives: our tables beside Optuna's, the study's plan, and a database
written by an earlier version of the code, which this one must read, report and resume."""

import csv
import shutil

import onnx
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from conftest import ROOT, run_nas
from search.study import attrs
from search.study.config import ConfigError, StudyConfig
from search.study.storage import (
    SearchError,
    Store,
    check_storage_url,
    deployed_model,
    existing_study,
    open_study,
    plan_study,
    sha256,
    study_config,
    study_summaries,
)

# Written by the code of commit cb392b3: study "legacy", two complete digits trials.
LEGACY_DB = ROOT / "tests" / "fixtures" / "study-cb392b3.db"
LEGACY = "legacy"


@pytest.fixture()
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture()
def legacy_url(tmp_path):
    """A copy of the earlier version's database (the tests write to it)."""
    shutil.copy(LEGACY_DB, tmp_path / "legacy.db")
    return f"sqlite:///{tmp_path / 'legacy.db'}"


def new_study(url: str, name: str = "s1", **settings) -> tuple[optuna.Study, Store]:
    return open_study(plan_study(name, url, settings), resolution=8)


def complete(values=(0.9, 1.0, 10.0), **user_attrs):
    return create_trial(state=TrialState.COMPLETE, values=list(values), user_attrs=user_attrs)


def test_a_model_is_stored_once_under_its_hash_and_read_back(url):
    store = Store(url)
    key = store.put_model(b"onnx bytes")
    assert key == sha256(b"onnx bytes") and store.put_model(b"onnx bytes") == key
    assert store.get_model(key) == b"onnx bytes"
    assert store.get_model(sha256(b"another file")) is None
    store.close()
    assert Store(url).get_model(key) == b"onnx bytes"  # in the file, for every worker


def test_a_latency_is_kept_per_file_and_setup_and_the_first_one_stays(url):
    store = Store(url)
    store.put_latency("f1", "setup-a", {"p50": 1.0})
    store.put_latency("f1", "setup-a", {"p50": 2.0})  # another worker measured it meanwhile
    store.put_latency("f1", "setup-b", {"p50": 3.0})
    assert store.get_latency("f1", "setup-a") == {"p50": 1.0}
    assert store.get_latency("f1", "setup-b") == {"p50": 3.0}
    assert store.get_latency("f2", "setup-a") is None


@pytest.mark.parametrize(
    "storage, message",
    [
        ("not a url", "is not a usable database URL"),
        ("nosuchdb://host/db", "is not a usable database URL"),
        ("sqlite://", "a study needs a file"),
        ("sqlite:///:memory:", "a study needs a file"),
        ("sqlite:///{tmp}/missing/study.db", "folder {tmp}/missing does not exist"),
    ],
)
def test_a_storage_url_that_cannot_work_is_refused(tmp_path, storage, message):
    with pytest.raises(ConfigError, match="--storage .*" + message.format(tmp=tmp_path)):
        check_storage_url(storage.format(tmp=tmp_path), user_given=True)


def test_a_missing_folder_of_the_default_storage_is_made_later(tmp_path, url):
    check_storage_url(f"sqlite:///{tmp_path}/missing/study.db", user_given=False)
    check_storage_url(url, user_given=True)


def test_planning_a_new_study_writes_nothing(tmp_path, url, monkeypatch):
    plan = plan_study("s1", url, {"epochs": 2.0})
    assert (plan.name, plan.url, plan.exists, plan.config) == ("s1", url, False, StudyConfig(epochs=2.0))
    monkeypatch.chdir(tmp_path)
    default = plan_study(None, None, {"target": "x86"})
    assert (default.name, default.url) == ("digits-x86", "sqlite:///studies/digits-x86/study.db")
    assert list(tmp_path.iterdir()) == []


def test_a_created_study_stores_its_config_and_a_second_plan_joins_it(url):
    study, _ = new_study(url, epochs=2.0)
    stored = study_config(study)
    assert stored == StudyConfig(epochs=2.0, space="compact", resolution=8)  # auto resolved for 8 px images
    assert study.metric_names == list(attrs.METRIC_NAMES)
    joined = plan_study("s1", url, {"epochs": 2.0})
    assert joined.exists and joined.config == stored
    with pytest.raises(ConfigError, match="drop --epochs"):
        plan_study("s1", url, {"epochs": 3.0})


def test_the_space_auto_resolves_to_mbv3_above_16_px(url):
    study, _ = open_study(plan_study("s1", url, {}), resolution=32)
    assert study_config(study).space == "mbv3"


def test_existing_study_refuses_a_study_that_is_not_there(url):
    new_study(url)
    assert existing_study("s1", url).exists
    with pytest.raises(ConfigError, match=r"no study 'nope' in .*nas.py status"):
        existing_study("nope", url)


def test_a_study_not_made_by_this_tool_is_refused(url):
    optuna.create_study(study_name="foreign", storage=url)
    with pytest.raises(SearchError, match="'foreign' .* not made by this tool"):
        plan_study("foreign", url, {})


def test_study_summaries_count_the_trials_of_each_study_by_state(tmp_path):
    """Studies ``a`` in ``a/study.db``, ``b`` and ``c`` together in ``b/study.db``."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    urls = {name: f"sqlite:///{tmp_path / folder / 'study.db'}" for name, folder in zip("abc", "abb")}
    for n, (name, url) in enumerate(urls.items()):
        study, _ = new_study(url, name, seed=n)
        study.add_trials([complete(), complete(), create_trial(state=TrialState.FAIL)][: 3 - n])
    by_name = {s.name: s for s in study_summaries(None, None, tmp_path)}
    assert sorted(by_name) == ["a", "b", "c"]
    assert [by_name["a"].counts[state] for state in ("COMPLETE", "FAIL", "PRUNED")] == [2, 1, 0]
    assert [by_name["c"].counts[state] for state in ("COMPLETE", "FAIL")] == [1, 0]
    assert StudyConfig.from_json(by_name["b"].config) == StudyConfig(seed=1, space="compact", resolution=8)
    only = study_summaries(urls["c"], "c", tmp_path)
    assert [(s.name, s.url, s.counts["COMPLETE"]) for s in only] == [("c", urls["c"], 1)]


def test_deployed_model_gives_a_trial_s_file_from_the_database(url):
    study, store = new_study(url)
    key = store.put_model(b"the deployed file")
    study.add_trial(complete(**{attrs.ONNX_SHA256: key, attrs.ARCH: "spec"}))
    study.add_trial(complete())  # no deployed file
    study.add_trial(complete(**{attrs.ONNX_SHA256: sha256(b"never stored")}))
    study.set_user_attr(attrs.STUDY_DATA, {"name": "digits"})
    deployed = deployed_model("s1", url, 0)
    assert deployed.onnx == b"the deployed file" and deployed.record[attrs.ARCH] == "spec"
    assert deployed.study_attrs[attrs.STUDY_DATA] == {"name": "digits"}
    for number in (1, 7):
        with pytest.raises(ConfigError, match=f"no deployed model for trial {number}"):
            deployed_model("s1", url, number)
    with pytest.raises(SearchError, match="trial 2 is missing from the study's database"):
        deployed_model("s1", url, 2)


def test_the_previous_version_s_study_loads_with_its_config_trials_and_files(legacy_url):
    plan = existing_study(LEGACY, legacy_url)
    assert (plan.config.dataset, plan.config.space, plan.config.epochs) == ("digits", "tiny", 0.3)
    with pytest.raises(ConfigError, match="drop --epochs"):
        plan_study(LEGACY, legacy_url, {"space": "tiny", "epochs": 1.0})  # the fast settings are not its
    study, _ = open_study(plan, resolution=8)
    assert study_config(study) == plan.config
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.number for t in trials] == [0, 1] and all(len(t.values) == 3 for t in trials)
    deployed = deployed_model(LEGACY, legacy_url, 1)
    assert sha256(deployed.onnx) == deployed.record[attrs.ONNX_SHA256]
    model = onnx.load_from_string(deployed.onnx)
    onnx.checker.check_model(model)
    assert deployed.record[attrs.SIZE_BYTES] == len(deployed.onnx)


def test_report_rebuilds_the_outputs_of_the_previous_version_s_study(tmp_path, legacy_url, cache_dir):
    result = run_nas(["report", "--study", LEGACY, "--storage", legacy_url, "--cache-dir", str(cache_dir)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"Pareto front of study {LEGACY}: 1 of 2 complete trials" in result.stdout
    out = tmp_path / "studies" / LEGACY
    assert (out / "report" / "pareto.png").stat().st_size > 0
    rows = list(csv.DictReader((out / "report" / "pareto.csv").open()))
    on_front = {r["number"]: r["on_front"] for r in rows}
    assert on_front == {"0": "False", "1": "True"}
    assert [r["test_accuracy"] != "" for r in rows if r["number"] == "1"] == [True]
    assert [p.name for p in (out / "pareto").iterdir()] == ["trial-0001.onnx"]


def test_the_previous_version_s_study_resumes_to_one_more_complete_trial(tmp_path, legacy_url, cache_dir):
    (before,) = study_summaries(legacy_url, LEGACY, tmp_path)
    budget = before.counts["COMPLETE"] + 1
    args = ["--study", LEGACY, "--storage", legacy_url, "--budget", str(budget), "--cache-dir", str(cache_dir)]
    result = run_nas(args, tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    # Its trials were timed with two threads (an AMD EPYC): resumed, with a warning.
    assert "warning: study legacy's earlier trials were timed otherwise (" in result.stderr + result.stdout
    assert "threads 1 here, 2 in its first trial" in result.stderr + result.stdout
    (after,) = study_summaries(legacy_url, LEGACY, tmp_path)
    assert after.counts["COMPLETE"] == budget
    assert after.config == before.config  # the stored settings ran the new trial
    study = optuna.load_study(study_name=LEGACY, storage=legacy_url)
    new = [t for t in study.get_trials() if t.number >= 2]
    assert len(new) == 1 and new[0].state == TrialState.COMPLETE
    assert new[0].user_attrs[attrs.ARCH] and new[0].user_attrs[attrs.ONNX_SHA256]
