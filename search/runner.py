"""The whole job: check the request, open the study, run trials, leave the outputs.

Everything that can be wrong with the request (data set, storage URL, target, budget)
is checked before anything is written, so a bad command leaves no trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from spaces import get_space

from .data import Dataset, balanced_subset, check_dataset_name, load_dataset
from .progress import SearchProgress
from .report.draw import write_outputs
from .report.front import Report, build_report, finalized_points
from .stages.evaluate import onnx_accuracy
from .stages.measure import CachedMeasurer, Measurer, make_measurer
from .stages.teacher import Teacher, load_or_train_teacher, teacher_logits
from .stages.train import train_device
from .study import attrs
from .study.baselines import enqueue_baselines, study_baselines
from .study.config import ConfigError, StudyConfig, study_dir
from .study.loop import count_complete, run_trials
from .study.objective import StudyObjective, TrialContext
from .study.storage import SearchError, Store, StudyPlan, TrialStartLock, existing_study, open_study, plan_study, study_config
from .targets import Target, get_target


CHANCE_MULTIPLE = 1.5  # a teacher below 1.5x chance accuracy has learned nothing to distil
# Validation images each point of a learning curve is taken on: the split is a random
# draw, so its first 2,000 are too; on CIFAR-10 all 5,000 would cost 4 points x 2 s a trial.
CURVE_IMAGES = 2000


@dataclass(frozen=True)
class SearchRequest:
    """What the command line asks for; settings not given are absent from ``explicit``."""

    budget: int
    explicit: dict
    study: str | None = None
    storage: str | None = None
    data_dir: str | None = None
    cache_dir: str = "studies/.cache"
    device: str | None = None
    token: str | None = None
    train_device: str = "auto"
    skip_bad_images: bool = False


@dataclass(frozen=True)
class Prepared:
    plan: StudyPlan
    target: Target
    measurer: Measurer


def prepare(request: SearchRequest) -> Prepared:
    """Check the whole request, the board agent included, before anything is written."""
    if request.budget < 1:
        raise ConfigError(f"--budget must be >= 1 complete trials, got {request.budget}")
    plan = plan_study(request.study, request.storage, request.explicit)
    return check_plan(plan, request.data_dir, request.device, request.token, request.train_device)


def check_plan(plan: StudyPlan, data_dir: str | None, device: str | None, token: str | None, training_on: str) -> Prepared:
    """Check what a planned study needs of this machine: its data set, search space,
    target (the board agent included) and training device. Writes nothing."""
    check_dataset_name(plan.config.dataset, data_dir)
    if plan.config.space != "auto":
        try:
            get_space(plan.config.space)
        except ValueError as e:
            raise ConfigError(f"--space: {e}") from None
    target = get_target(plan.config.target, device)
    try:
        train_device(training_on)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return Prepared(plan, target, make_measurer(target, token))


def run_search(request: SearchRequest, progress: SearchProgress = SearchProgress()) -> Report:
    p = prepare(request)
    config = p.plan.config
    data = load_dataset(config.dataset, request.data_dir, request.cache_dir, config.resolution, request.skip_bad_images)
    announce_data(data, progress)
    study, store = open_study(p.plan, data.resolution)
    config = study_config(study)
    progress.message(f"study {p.plan.name}: {count_complete(study)} of {request.budget} trials complete; storage {p.plan.url}")
    progress.message(f"target {p.target.describe()}")

    teacher = study_teacher(data, request.cache_dir, config, progress)
    device = train_device(request.train_device)
    proxy = data.train.take(balanced_subset(data.train.y, config.train_subset, config.seed))
    if len(proxy) < len(data.train):
        progress.message(f"proxy training on {len(proxy)} of {len(data.train)} training images (class-balanced, --train-subset)")
    progress.stage(None, "teacher logits")
    logits = teacher_logits(teacher, proxy, on_progress=progress.steps)
    announce_device(device, progress)
    measurer = CachedMeasurer(p.measurer, store)
    curve_images = data.val.take(torch.arange(min(CURVE_IMAGES, len(data.val))))
    ctx = TrialContext(
        config, get_space(config.space), data, proxy.to(device), curve_images.to(device), logits, p.target,
        measurer, store, progress,
    )
    start_lock = TrialStartLock(p.plan.url, p.plan.name)
    try:
        if config.baselines:
            with start_lock():
                start_with_baselines(study, ctx, request.budget)
        run_trials(study, config, request.budget, StudyObjective(ctx), start_lock, progress)
    finally:
        start_lock.close()
    return finish(study, data, store, study_dir(p.plan.name), p.target.name)


def start_with_baselines(study: optuna.Study, ctx: TrialContext, budget: int) -> None:
    """Enqueue the baselines into a new study, and say which (see ``study.baselines``)."""
    data = ctx.data
    chosen, skipped = study_baselines(ctx.space, ctx.target, data.in_chs, data.resolution, data.num_classes)
    if not enqueue_baselines(study, ctx.space, chosen, skipped):
        return
    ctx.progress.message(f"baselines: {len(chosen)} enqueued first ({', '.join(b.name for b in chosen)})")
    for name, why in skipped.items():
        ctx.progress.message(f"baseline {name} skipped: {why}")
    if budget <= len(chosen):
        ctx.progress.message(
            f"--budget {budget} is within the {len(chosen)} baselines: this run trains baselines only "
            "(a later run with a larger --budget searches; --no-baselines for a study without them)"
        )


def announce_data(data: Dataset, progress: SearchProgress) -> None:
    progress.message(
        f"data {data.name}: {len(data.train)} training, {len(data.val)} validation, {len(data.test)} test images "
        f"of {data.num_classes} classes; {data.resolution_note}"
    )
    if data.skipped:
        shown = ", ".join(data.skipped[:5]) + (f" and {len(data.skipped) - 5} more" if len(data.skipped) > 5 else "")
        progress.message(f"skipped {len(data.skipped)} unreadable images (--skip-bad-images): {shown}")


def announce_device(device, progress: SearchProgress) -> None:
    if device.type != "cpu":
        progress.message(f"training on {device} (mixed precision); latency is still measured on the target")


def study_teacher(data: Dataset, cache_dir: str, config: StudyConfig, progress: SearchProgress) -> Teacher:
    """The data set's teacher, trained first if it is not cached, and checked to know more than chance."""
    progress.stage(None, "teacher")
    teacher = load_or_train_teacher(data, cache_dir, config.teacher_epochs or None, config.seed, on_progress=progress.steps)
    progress.message(f"teacher: ResNet-18 {teacher.source}, validation accuracy {teacher.val_accuracy:.4f}")
    check_teacher(teacher, data)
    return teacher


def check_teacher(teacher: Teacher, data: Dataset) -> None:
    chance = 1 / data.num_classes
    if teacher.val_accuracy < CHANCE_MULTIPLE * chance:
        raise SearchError(
            f"the teacher at {teacher.path} is near chance ({teacher.val_accuracy:.3f}, chance {chance:.3f}): "
            "distilling from it would mislead every trial; delete it and train longer (--teacher-epochs), "
            "or install a trained one with: python nas.py teacher --weights W"
        )


def finish(study: optuna.Study, data: Dataset, store: Store, out_dir: Path, target_name: str) -> Report:
    """Test accuracy of the front members (the search's only use of the test split), then the outputs."""
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
    report = build_report(study.study_name, data.name, target_name, trials, tested, finalized_points(study.user_attrs))
    write_outputs(report, out_dir, store.get_model)
    return report


def report_study(
    study: str, storage: str | None, data_dir: str | None, cache_dir: str, skip_bad_images: bool = False
) -> Report:
    """Rebuild the outputs of an existing study (``nas.py report``)."""
    plan = existing_study(study, storage)
    check_dataset_name(plan.config.dataset, data_dir)
    data = load_dataset(plan.config.dataset, data_dir, cache_dir, plan.config.resolution, skip_bad_images)
    opened, store = open_study(plan, data.resolution)
    return finish(opened, data, store, study_dir(study), plan.config.target)
