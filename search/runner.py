"""The whole job: check the request, open the study, run trials, leave the outputs.

Everything that can be wrong with the request (data set, storage URL, target, budget)
is checked before anything is written, so a bad command leaves no trace.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import torch

from spaces import get_space

from .board.client import AgentError
from .board.timing import measuring_setup, setup_difference
from .data import (
    Dataset, DatasetError, Split, balanced_subset, check_dataset_name, data_difference, load_dataset, normalised_as,
)
from .own_model import ModelError, file_sha256, load_own_model
from .progress import SearchProgress
from .report.draw import write_outputs
from .report.front import (
    NOT_MEASURED_HERE, ComparedStudy, Report, TeacherPoint, TrialPoint, add_measurements, build_report, compared_study,
    finalized_points, provenance,
)
from .report.hypervolume import hypervolume_by_trial
from .report.importance import param_importances
from .report.retime import ROUNDS, retime, same_setup
from .stages.evaluate import onnx_accuracy
from .stages.measure import CachedMeasurer, Measurer, make_measurer
from .stages.export import export_onnx
from .shared_teacher import check_teacher_data, shared_logits, stored_teacher, study_teacher
from .stages.teacher import Teacher
from .stages.train import predict_logits, train_device
from .study import attrs
from .study.baselines import enqueue_baselines, enqueue_originals, original_baselines, study_baselines
from .study.config import ConfigError, StudyConfig, parse_floats, study_dir
from .study.loop import count_complete, run_trials
from .study.objective import StudyObjective, TrialContext
from .study.own_objective import OwnModelContext, OwnModelObjective
from .study.storage import (
    Store, StudyPlan, TrialStartLock, existing_study, open_storage, open_study, plan_study, study_config,
)
from .study.teacher_store import READY, TeacherStore
from .targets import Target, TargetError, get_target


# Validation images each point of a learning curve is taken on: the split is a random
# draw, so its first 2,000 are too; on CIFAR-10 all 5,000 would cost 4 points x 2 s a trial.
CURVE_IMAGES = 2000
# Training images outside the fine-tune subset that judge an own-model fine-tune: on a
# ResNet-18 at 32 px, two passes over 1,000 cost about 10 s a trial on 2 cores.
HELD_OUT_IMAGES = 1000


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
    target (the board agent included), training device, and that latencies would be
    timed here as the study's were. Writes nothing."""
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
    measurer = make_measurer(target, token)
    check_same_setup(plan.name, plan.measuring_setup, measurer)
    return Prepared(plan, target, measurer)


def run_search(request: SearchRequest, progress: SearchProgress = SearchProgress()) -> Report:
    p = prepare(request)
    config = p.plan.config
    if config.model:
        return run_own_model_search(request, p, progress)
    data = load_dataset(config.dataset, request.data_dir, request.cache_dir, config.resolution, request.skip_bad_images)
    # Before the study is opened: a refused worker writes nothing.
    check_same_data(p.plan.name, p.plan.data, data)
    check_teacher_data(p.plan.url, p.plan.name, data)
    announce_data(data, progress)
    study, store = open_study(p.plan, data.resolution)
    # Under the start lock: of two workers starting a new study on different copies (or
    # measuring setups), one records its own, the other is refused.
    with contextlib.closing(TrialStartLock(p.plan.url, p.plan.name)) as lock, lock():
        record_data(study, data)
        setup = record_measuring_setup(study, p.measurer, progress)
    config = study_config(study)
    progress.message(f"study {p.plan.name}: {count_complete(study)} of {request.budget} trials complete; storage {p.plan.url}")
    announce_target(p.target, p.measurer, setup, progress)

    device = train_device(request.train_device)
    proxy = data.train.take(balanced_subset(data.train.y, config.train_subset, config.seed))
    if len(proxy) < len(data.train):
        progress.message(f"proxy training on {len(proxy)} of {len(data.train)} training images (class-balanced, --train-subset)")
    teachers = TeacherStore(store)
    teacher = study_teacher(
        teachers, p.plan.name, data, request.cache_dir, config.teacher_epochs or None, config.seed, progress, proxy
    )
    progress.stage(None, "teacher logits")
    logits = shared_logits(teachers, teacher, proxy, on_progress=progress.steps)
    announce_device(device, progress)
    measurer = CachedMeasurer(p.measurer, store)
    curve_images = data.val.take(torch.arange(min(CURVE_IMAGES, len(data.val))))
    ctx = TrialContext(
        config, get_space(config.space), data, proxy.to(device), curve_images.to(device), logits, p.target,
        measurer, store, progress, teacher.sha256,
    )
    start_lock = TrialStartLock(p.plan.url, p.plan.name)
    try:
        if config.baselines:
            with start_lock():
                start_with_baselines(study, ctx, request.budget)
        run_trials(study, config, request.budget, StudyObjective(ctx), start_lock, progress)
    finally:
        start_lock.close()
    return finish(
        study, data, store, study_dir(p.plan.name), p.target.name, config.max_latency_ms, config.max_size_kb,
        measurer, progress, teacher=teacher,
    )


def run_own_model_search(request: SearchRequest, p: Prepared, progress: SearchProgress) -> Report:
    """A study of the user's own network (``--model``): trials compress it, the original is
    the teacher and the reference point. The network, its weights and the data are checked
    before the study is opened: a refused worker writes nothing."""
    config = p.plan.config
    weights = request.explicit.get("weights") or config.weights
    data = load_study_data(config, request.data_dir, request.cache_dir, request.skip_bad_images)
    check_same_data(p.plan.name, p.plan.data, data)
    if p.plan.exists:
        check_same_weights(p.plan.name, config.weights_sha256, weights)
    own = load_own_model(config.model, weights, data.num_classes, data.val.batch(slice(0, 1)))
    announce_data(data, progress)  # once the network is accepted: a refusal is one line
    progress.message(
        f"model {own.name}: {own.params:,} parameters, {own.n_stages} stages; weights {weights} "
        f"(sha256 {own.weights_sha256[:12]})"
    )
    plan = replace(p.plan, config=replace(config, weights=str(weights), weights_sha256=own.weights_sha256))
    study, store = open_study(plan, data.resolution)
    with contextlib.closing(TrialStartLock(plan.url, plan.name)) as lock, lock():
        record_data(study, data)
        setup = record_measuring_setup(study, p.measurer, progress)
    config = study_config(study)
    progress.message(f"study {plan.name}: {count_complete(study)} of {request.budget} trials complete; storage {plan.url}")
    announce_target(p.target, p.measurer, setup, progress)

    device = train_device(request.train_device)
    subset = balanced_subset(data.train.y, config.train_subset, config.seed)
    proxy = data.train.take(subset)
    if len(proxy) < len(data.train):
        progress.message(f"fine-tuning on {len(proxy)} of {len(data.train)} training images (class-balanced, --train-subset)")
    held_out = held_out_images(data.train, subset, config.seed)
    progress.message(
        f"a fine-tune is kept where it does not lower the accuracy on {len(held_out)} other training images"
        if held_out is not None else
        "every fine-tune is kept: no training images are left outside --train-subset to judge it on"
    )
    progress.stage(None, "teacher logits")  # the teacher is the original network
    logits = predict_logits(own.network, proxy, on_progress=progress.steps)
    announce_device(device, progress)
    measurer = CachedMeasurer(p.measurer, store)
    held_out = held_out.to(device) if held_out is not None else None
    ctx = OwnModelContext(config, own, data, proxy.to(device), logits, held_out, p.target, measurer, store, progress)
    start_lock = TrialStartLock(plan.url, plan.name)
    try:
        if config.baselines:
            with start_lock():
                start_with_originals(study, ctx)
        run_trials(study, config, request.budget, OwnModelObjective(ctx), start_lock, progress)
    finally:
        start_lock.close()
    return finish(
        study, data, store, study_dir(plan.name), p.target.name, config.max_latency_ms, config.max_size_kb,
        measurer, progress,
    )


def held_out_images(train: Split, fine_tuned: torch.Tensor, seed: int) -> Split | None:
    """Up to ``HELD_OUT_IMAGES`` training images (class-balanced) outside the fine-tune's
    subset ``fine_tuned``: they judge whether a fine-tune helped, and the validation split
    stays the objective's alone. None where the subset is the whole split."""
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[fine_tuned] = False
    rest = torch.nonzero(rest).flatten()
    if len(rest) == 0:
        return None
    return train.take(rest[balanced_subset(train.y[rest], HELD_OUT_IMAGES, seed)])


def load_study_data(config: StudyConfig, data_dir: str | None, cache_dir: str, skip_bad_images: bool) -> Dataset:
    """The study's data as its network sees it: at its resolution (or --input-size), and
    normalised with --mean and --std where the study of one's own network gave them."""
    data = load_dataset(config.dataset, data_dir, cache_dir, config.input_size or config.resolution, skip_bad_images)
    if config.mean:
        data = normalised_as(data, parse_floats(config.mean, "--mean"), parse_floats(config.std, "--std"))
    return data


def check_same_weights(study: str, recorded_sha256: str, weights: str) -> None:
    """Refuse (``ModelError``) weights other than those the study was created with: every
    trial prunes, and distils from, the same original."""
    if not Path(weights).is_file():
        raise ModelError(f"--weights {weights}: no such file")
    sha = file_sha256(weights)
    if sha != recorded_sha256:
        raise ModelError(
            f"--weights {weights} (sha256 {sha[:12]}) are not the weights study {study} was created with "
            f"(sha256 {recorded_sha256[:12]}): give the study's file, or start a new --study"
        )


def start_with_originals(study: optuna.Study, ctx: OwnModelContext) -> None:
    """Enqueue the original network, fp32 and int8, into a new study, and say so."""
    chosen, skipped = original_baselines(ctx.target, ctx.config.calib_samples)
    if not enqueue_originals(study, ctx.own.name, chosen, skipped):
        return
    ctx.progress.message(f"baselines: the original network, {len(chosen)} enqueued first ({', '.join(chosen)})")
    for name, why in skipped.items():
        ctx.progress.message(f"baseline {name} skipped: {why}")


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


def record_data(study: optuna.Study, data: Dataset) -> None:
    """Keep what the study's data is (``Dataset.record``) with the study, once: exported
    models' cards read their preprocessing and class names from it, and every later
    worker's copy must be the same data (``check_same_data``). A study made before it
    was recorded has it recorded now."""
    stored = study.user_attrs.get(attrs.STUDY_DATA)
    if stored is None:
        study.set_user_attr(attrs.STUDY_DATA, data.record())
    else:
        check_same_data(study.study_name, stored, data)


def check_same_data(study: str, stored: dict | None, data: Dataset) -> None:
    """Refuse (``DatasetError``) a copy of the data that is not the one the study recorded."""
    difference = None if stored is None else data_difference(stored, data.record())
    if difference is not None:
        raise DatasetError(
            f"this copy of {data.name} is not study {study}'s data ({difference}): run this worker on the study's "
            "copy, or start a new --study"
        )


def record_measuring_setup(study: optuna.Study, measurer: Measurer, progress: SearchProgress) -> str:
    """Keep how the study's latencies are timed (``measuring_setup``) with the study, once,
    and refuse (``ConfigError``) a worker that would time them otherwise: the samplers and
    the front rank latencies as comparable. The study's setup.

    A study made by an earlier version, which did not record it, takes this worker's and
    is resumed: refusing it would strand every such study over a default that changed
    under its user (the thread count did). Where its trials were timed otherwise, the
    worker says so."""
    recorded = study.user_attrs.get(attrs.STUDY_MEASURING_SETUP)
    if recorded is not None:
        check_same_setup(study.study_name, recorded, measurer)
        return recorded
    here = measurer.identity()
    earlier = first_measuring_setup(study)
    difference = None if earlier is None else setup_difference(earlier, here, "its first trial")
    if difference is not None:
        progress.message(
            f"warning: study {study.study_name}'s earlier trials were timed otherwise ({difference}); their "
            "latencies do not compare with this worker's. The study keeps this worker's setup from now on"
        )
    study.set_user_attr(attrs.STUDY_MEASURING_SETUP, here)
    return here


def first_measuring_setup(study: optuna.Study) -> str | None:
    measured = [t for t in study.get_trials(deepcopy=False) if attrs.MEASURED_ON in t.user_attrs]
    return measuring_setup(min(measured, key=lambda t: t.number).user_attrs[attrs.MEASURED_ON]) if measured else None


def check_same_setup(study: str, recorded: str | None, measurer: Measurer) -> None:
    difference = None if recorded is None else setup_difference(recorded, measurer.identity())
    if difference is not None:
        raise ConfigError(
            f"this worker would time latencies otherwise than study {study}'s trials were ({difference}): "
            "run it with the study's target, board and ONNX Runtime, or start a new --study"
        )


def announce_target(target: Target, measurer: Measurer, study_setup: str, progress: SearchProgress) -> None:
    progress.message(f"target {target.describe()}")
    study_host, host = json.loads(study_setup).get("host"), json.loads(measurer.identity()).get("host")
    if study_host != host:
        progress.message(
            f"latencies are timed on {host}, the study's first on {study_host}: a machine of the same kind, "
            "though nothing checks that the two time alike (a board farm does)"
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


def finish(
    study: optuna.Study, data: Dataset | None, store: Store, out_dir: Path, target_name: str,
    max_latency_ms: float | None = None, max_size_kb: float | None = None,
    measurer: Measurer | None = None, progress: SearchProgress = SearchProgress(),
    compared: tuple[ComparedStudy, ...] = (), teacher: Teacher | None = None, no_data_why: str = "",
) -> Report:
    """The study's outputs, in one pass: the front, from the trials; then what is added to it:
    its members' test accuracy (the search's only use of the test split) where ``data`` is at
    hand (else ``no_data_why`` says why not), the teacher beside it, and, where ``measurer`` times
    as the search did, the front, baselines and teacher re-timed together; then the page and
    files, with the model to ship within ``max_latency_ms`` and ``max_size_kb`` (or the knee)."""
    trials = study.get_trials(deepcopy=False)
    dataset = data.name if data is not None else recorded_dataset_name(study)
    report = build_report(study.study_name, dataset, target_name, trials, {}, finalized_points(study.user_attrs))
    tested, test_note = front_test_accuracies(study, report.front, store, data, no_data_why)
    measurer, retime_note = measurer_here(report, trials, measurer)
    teacher_onnx, point = teacher_point(study, store, measurer, progress, teacher, data)
    retimed = retime_front(report, store, measurer, progress, teacher_onnx) if measurer is not None else {}
    if retimed:
        who = "front, baselines and teacher" if "teacher" in retimed else "front and baselines"
        retime_note = f"{who} re-timed together: {ROUNDS} interleaved rounds, the median over rounds"
    if point is not None and "teacher" in retimed:
        point = replace(point, retimed_p50_ms=retimed["teacher"].p50_ms)
    report = replace(
        add_measurements(report, tested, retimed), max_latency_ms=max_latency_ms, max_size_kb=max_size_kb,
        retime_note=retime_note, test_note=test_note, hypervolume_curve=tuple(hypervolume_by_trial(trials)),
        importances=param_importances(trials), compared=compared, teacher=point,
        teacher_accuracy=study_teacher_accuracy(store, study.study_name),
    )
    write_outputs(report, out_dir, store.get_model)
    return report


def recorded_dataset_name(study: optuna.Study) -> str:
    """The study's data set as the study recorded it (``attrs.STUDY_DATA``; before that existed, its configuration)."""
    return study.user_attrs.get(attrs.STUDY_DATA, {}).get("name") or study_config(study).dataset


def front_test_accuracies(
    study: optuna.Study, front: list[TrialPoint], store: Store, data: Dataset | None, no_data_why: str
) -> tuple[dict[int, float], str]:
    """The test accuracy of each front member: as the study recorded it, else measured from its
    stored file on ``data``'s test split and recorded; and a note naming the members left
    without one, and why."""
    tested = {int(k): v for k, v in study.user_attrs.get(attrs.STUDY_TEST_ACCURACY, {}).items()}
    missing = [p for p in front if p.number not in tested]
    if data is not None and missing:
        for p in missing:
            model = store.get_model(p.onnx_sha256)
            if model is not None:
                tested[p.number] = onnx_accuracy(model, data.test)
        study.set_user_attr(attrs.STUDY_TEST_ACCURACY, {str(k): v for k, v in sorted(tested.items())})
    untested = [p.number for p in front if p.number not in tested]
    if not untested:
        return tested, ""
    why = (
        f"{no_data_why}; a report where the study's data is at hand measures and records it" if data is None
        else "their files are not in the study's database"
    )
    return tested, f"test accuracy {NOT_MEASURED_HERE} for trials {', '.join(map(str, untested))}: {why}"


def teacher_point(
    study: optuna.Study, store: Store, measurer: Measurer | None, progress: SearchProgress,
    teacher: Teacher | None = None, data: Dataset | None = None,
) -> tuple[bytes | None, TeacherPoint | None]:
    """The teacher beside the front, and its ONNX file where ``measurer`` is to re-time it.

    A ``teacher`` at hand (with its ``data``) is exported and becomes the study's teacher
    file (``attrs.STUDY_TEACHER_FILE``): the file into the model store, its validation accuracy
    under ONNX Runtime into ``attrs.STUDY_TEACHER_ACCURACY``. Otherwise the study's own teacher
    file is drawn, from the database alone. Its latency is the one recorded where it was first
    measured; ``measurer`` measures it, once, where none is recorded yet."""
    onnx = None
    if teacher is not None:
        progress.stage(None, "teacher: export")
        onnx = export_onnx(teacher.model.eval(), data.val.batch(slice(0, 1)))
        record = keep_teacher_file(study, store, onnx, data)
    else:
        record = study.user_attrs.get(attrs.STUDY_TEACHER_FILE)
        if record is None:
            return None, None  # no report has had the teacher at hand yet
    key = record["onnx_sha256"]
    if measurer is not None or record["latency"] is None:
        onnx = onnx or store.get_model(key)
        if onnx is None:
            progress.message(f"the teacher is not drawn: its file {key[:12]} is not in the study's database")
            return None, None
    if record["latency"] is None:
        if measurer is None:
            progress.message("the teacher is not drawn: it was never measured, and this machine does not time as the study did")
            return None, None
        progress.stage(None, "teacher: measure")
        try:
            measured = measurer.measure(onnx)
        except AgentError as e:  # e.g. a board agent whose upload limit is below a ResNet-18
            progress.message(f"the teacher is not drawn: {e}")
            return None, None
        stats = measured.stats
        record = {**record, "latency": {"p50_ms": stats.p50_ms, "p90_ms": stats.p90_ms, "measured_on": measured.measured_on}}
        study.set_user_attr(attrs.STUDY_TEACHER_FILE, record)
    latency = record["latency"]
    point = TeacherPoint(
        study.user_attrs[attrs.STUDY_TEACHER_ACCURACY][key], latency["p50_ms"], latency["p90_ms"],
        record["size_bytes"] / 1024, provenance(latency["measured_on"]),
    )
    return (onnx if measurer is not None else None), point


def keep_teacher_file(study: optuna.Study, store: Store, onnx: bytes, data: Dataset) -> dict:
    """Make ``onnx`` the study's teacher file: stored, its validation accuracy known (evaluated
    once per file), its latency carried over where it is the file already recorded."""
    key = store.put_model(onnx)
    known = study.user_attrs.get(attrs.STUDY_TEACHER_ACCURACY, {})
    if key not in known:
        study.set_user_attr(attrs.STUDY_TEACHER_ACCURACY, {**known, key: onnx_accuracy(onnx, data.val)})
    record = study.user_attrs.get(attrs.STUDY_TEACHER_FILE)
    if record is None or record["onnx_sha256"] != key:
        record = {"onnx_sha256": key, "size_bytes": len(onnx), "latency": None}
        study.set_user_attr(attrs.STUDY_TEACHER_FILE, record)
    return record


def measurer_here(report: Report, trials, measurer: Measurer | None) -> tuple[Measurer | None, str]:
    """``measurer`` where it times as the study's front and baselines were timed, else None
    and why: figures from another machine or setting would sit beside the search's."""
    chosen = {p.number for p in [*report.front, *report.baselines]}
    if not chosen:
        return None, ""
    if measurer is None:
        return None, "not re-timed: no measurer for the study's target here"
    if not same_setup(measurer, [t.user_attrs.get(attrs.MEASURED_ON, {}) for t in trials if t.number in chosen]):
        return None, "not re-timed: this machine or its settings are not where the study measured"
    return measurer, ""


def retime_front(
    report: Report, store: Store, measurer: Measurer, progress: SearchProgress, teacher_onnx: bytes | None = None
) -> dict:
    """The front members, baselines and teacher (key "teacher") timed again together (``report.retime``)."""
    chosen = [*report.front, *report.baselines]
    models = {p.number: m for p, m in ((p, store.get_model(p.onnx_sha256)) for p in chosen) if m is not None}
    if teacher_onnx is not None:
        models["teacher"] = teacher_onnx
    progress.stage(None, f"re-timing {len(models)} models")
    return retime(models, measurer, on_progress=progress.steps)


@dataclass(frozen=True)
class ReportRequest:
    """``nas.py report``: which study, and the budget to choose a model within (default: the study's limits)."""

    study: str
    storage: str | None = None
    data_dir: str | None = None
    cache_dir: str = "studies/.cache"
    skip_bad_images: bool = False
    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    device: str | None = None  # the board agent to re-time on, for a board target
    token: str | None = None
    compare: tuple[str, ...] = ()  # other studies in the same storage whose fronts go beside this one's


def report_study(request: ReportRequest, progress: SearchProgress = SearchProgress()) -> Report:
    """Rebuild the outputs of an existing study (``nas.py report``), from its database alone
    where this machine has neither its data set nor its teacher."""
    plan = existing_study(request.study, request.storage)
    others = [existing_study(name, request.storage) for name in request.compare]
    measurer = None
    try:
        measurer = make_measurer(get_target(plan.config.target, request.device), request.token)
    except TargetError:
        if request.device is not None:  # asked for that board, which cannot be reached: say so
            raise
    opened, store = open_study(plan, plan.config.resolution)
    data, no_data_why = study_data_here(opened, request)
    if data is None:
        progress.message(f"reporting from the database alone: {no_data_why}")
    else:
        record_data(opened, data)
    config = study_config(opened)
    # The study's own teacher, loaded only until a report has stored its file (the page
    # draws that from the database) and only where the data is at hand: a report never makes one.
    teacher = None
    if data is not None and attrs.STUDY_TEACHER_FILE not in opened.user_attrs:
        teacher = stored_teacher(TeacherStore(store), request.study, data, request.cache_dir)
    return finish(
        opened, data, store, study_dir(request.study), plan.config.target,
        config.max_latency_ms if request.max_latency_ms is None else request.max_latency_ms,
        config.max_size_kb if request.max_size_kb is None else request.max_size_kb,
        measurer, progress, tuple(compared_front(other) for other in others), teacher, no_data_why,
    )


def study_data_here(study: optuna.Study, request: ReportRequest) -> tuple[Dataset | None, str]:
    """The study's data set as this machine has it, else None and why: absent, unreadable, or
    another copy than the one the study recorded (its test split would score other images)."""
    config = study_config(study)
    try:
        data = load_study_data(config, request.data_dir, request.cache_dir, request.skip_bad_images)
    except DatasetError as e:
        return None, f"the data set is not at hand here ({e})"
    recorded = study.user_attrs.get(attrs.STUDY_DATA)
    difference = None if recorded is None else data_difference(recorded, data.record())
    if difference is not None:
        return None, f"the data set here is another copy than the study's ({difference})"
    return data, ""


def study_teacher_accuracy(store: Store, study: str) -> float | None:
    """The validation accuracy of the study's teacher, as recorded when it was made: shown
    beside the front whether or not its file is drawn."""
    record = TeacherStore(store).get(study)
    return None if record is None or record.state != READY else record.val_accuracy


def compared_front(plan: StudyPlan) -> ComparedStudy:
    """The front of another existing study, as its own database has it."""
    study = optuna.load_study(study_name=plan.name, storage=open_storage(plan.url))
    tested = {int(k): v for k, v in study.user_attrs.get(attrs.STUDY_TEST_ACCURACY, {}).items()}
    data = study.user_attrs.get(attrs.STUDY_DATA, {}).get("name", plan.config.dataset)
    return compared_study(build_report(plan.name, data, plan.config.target, study.get_trials(deepcopy=False), tested))
