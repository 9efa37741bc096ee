"""The whole job: check the request, open the study, run trials, leave the outputs.

Everything that can be wrong with the request (data set, storage URL, target, budget)
is checked before anything is written, so a bad command leaves no trace.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import optuna

from spaces import get_space

from . import attrs
from .config import ConfigError, StudyConfig, study_dir
from .data import Dataset, check_dataset_name, load_dataset
from .evaluate import onnx_accuracy
from .progress import SearchProgress
from .report import Report, build_report, format_table, write_outputs
from .store import Store
from .study import (
    SearchError,
    SearchRequest,
    check_storage_url,
    count_complete,
    create_or_load_study,
    open_storage,
    resolve,
    run_trials,
    storage_url_for,
    stored_config,
    study_name_for,
    with_space_resolved,
)
from .targets import Target, check_measurable, get_target

log = logging.getLogger(__name__)


def make_measurer(target, token: str | None):
    """Local timing, or the board agent's once it has been reached and checked."""
    from .latency import LocalMeasurer

    if target.device is None:
        check_measurable(target)
        return LocalMeasurer(target)
    from .agent_client import AgentMeasurer

    return AgentMeasurer(target, token)


@dataclass(frozen=True)
class Prepared:
    study: str
    url: str
    config: StudyConfig
    target: Target
    measurer: object  # LocalMeasurer or AgentMeasurer


def prepare(request: SearchRequest) -> Prepared:
    """Check the whole request, the board agent included, before anything is written."""
    if request.budget < 1:
        raise ConfigError(f"--budget must be >= 1 complete trials, got {request.budget}")
    study = study_name_for(request)
    url = storage_url_for(study, request.storage)
    check_storage_url(url, user_given=request.storage is not None)
    config = resolve(study, request.explicit, stored_config(url, study))
    check_dataset_name(config.dataset, request.data_dir)
    if config.space != "auto":
        try:
            get_space(config.space)
        except ValueError as e:
            raise ConfigError(f"--space: {e}") from None
    target = get_target(config.target, request.device)
    return Prepared(study, url, config, target, make_measurer(target, request.token))


def run_search(request: SearchRequest, progress: SearchProgress = SearchProgress()) -> Report:
    from .latency import CachedMeasurer
    from .objective import TrialContext, run_trial
    from .teacher import load_or_train_teacher

    p = prepare(request)
    data = load_dataset(p.config.dataset, request.data_dir, request.cache_dir)
    config = with_space_resolved(p.config, data.resolution)
    study = create_or_load_study(p.url, p.study, config)
    store = Store(p.url)
    measurer = CachedMeasurer(p.measurer, store)
    progress.message(f"study {p.study}: {count_complete(study)} of {request.budget} trials complete; storage {p.url}")
    progress.message(f"target {p.target.describe()}")

    teacher = load_or_train_teacher(
        data, request.cache_dir, config.teacher_epochs or None, config.seed, on_progress=progress.fraction
    )
    progress.message(f"teacher: ResNet-18 {teacher.source}, validation accuracy {teacher.val_accuracy:.4f}")
    ctx = TrialContext(config, get_space(config.space), data, teacher, p.target, measurer, store, progress)
    run_trials(study, request.budget, lambda trial: run_trial(trial, ctx), progress)
    return finish(study, data, store, study_dir(p.study), p.target.name)


def finish(study: optuna.Study, data: Dataset, store: Store, out_dir: Path, target_name: str) -> Report:
    """Test accuracy of the front members (the only use of the test split), then the outputs."""
    trials = study.get_trials(deepcopy=False)
    report = build_report(study.study_name, data.name, target_name, trials, {})
    tested = {int(k): v for k, v in study.user_attrs.get(attrs.STUDY_TEST_ACCURACY, {}).items()}
    missing = [p for p in report.front if p.number not in tested]
    for p in missing:
        model = store.get_model(p.onnx_sha256)
        if model is not None:
            tested[p.number] = onnx_accuracy(model, data.test)
    if missing:
        study.set_user_attr(attrs.STUDY_TEST_ACCURACY, {str(k): v for k, v in sorted(tested.items())})
    report = build_report(study.study_name, data.name, target_name, trials, tested)
    write_outputs(report, out_dir, store.get_model)
    return report


def report_study(
    study: str, storage: str | None, data_dir: str | None, cache_dir: str
) -> Report:
    """Rebuild the outputs of an existing study (``nas.py report``)."""
    url = storage_url_for(study, storage)
    check_storage_url(url, user_given=storage is not None)
    config = stored_config(url, study)
    if config is None:
        raise ConfigError(f"no study {study!r} in {url}; list studies with: python nas.py status --storage URL")
    check_dataset_name(config.dataset, data_dir)
    data = load_dataset(config.dataset, data_dir, cache_dir)
    s = optuna.load_study(study_name=study, storage=open_storage(url))
    return finish(s, data, Store(url), study_dir(study), config.target)


__all__ = ["SearchError", "SearchRequest", "format_table", "prepare", "report_study", "run_search", "resolve"]
