"""Finalize: chosen candidates of a study trained at full budget, shipped, and the proxy judged.

A study's trials are proxies: each candidate is trained briefly (with --train-subset, on
part of the training split) so that many can be ranked. Finalize trains the chosen ones
(the front, or trials named) again from their trials' first weights, on the whole
training split, for at least five times the proxy's compute, and takes them through the
steps their trials took (``search.study.objective``): distillation from the study's
teacher, their own pruning and fine-tune, export, quantization for the target, accuracy
of the deployed file under ONNX Runtime (validation and test), latency on the target.
Kendall's tau between the proxy's accuracy and the final one, over every finalized trial,
says how far the search's ranking holds (DESIGN.md, "A proxy is not the product").

Each result is a study attribute of its own (``finalized:<trial>``), so that runs
finalizing other trials, on other machines, never overwrite each other's. Training saves
a checkpoint at the end of every epoch under ``studies/<study>/finalize/``: a run killed
midway continues where it stopped, and a trial finalized already with the same epochs is
not trained again.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from spaces import build_model, parse_arch, parse_compression

from .data import Dataset, Split, balanced_subset, load_dataset
from .progress import SearchProgress
from .report.front import FinalizedPoint, build_report, finalized_points, rank_agreement
from .runner import announce_data, announce_device, check_plan, check_same_data
from .shared_teacher import shared_logits, study_teacher
from .stages.cost import count_cost
from .stages.evaluate import onnx_accuracy
from .stages.export import check_parity
from .stages.measure import CachedMeasurer, Measurer
from .stages.teacher import Teacher
from .stages.train import fit, train_device
from .study import attrs
from .study.config import ConfigError, StudyConfig, study_dir
from .study.objective import (
    accuracy_on_target,
    calibration_samples,
    export_fp32,
    file_metadata,
    prune_and_finetune,
    quantize_for,
    train_config,
    trial_seed,
)
from .study.storage import Store, existing_study, open_study, study_config
from .study.teacher_store import TeacherStore
from .targets import Target

log = logging.getLogger(__name__)

COMPUTE_MULTIPLE = 5  # the default budget: at least this many times the proxy's epochs x images


@dataclass(frozen=True)
class FinalizeRequest:
    study: str
    trials: tuple[int, ...] | None  # None: the study's Pareto front
    epochs: int | None = None  # None: see default_epochs
    storage: str | None = None
    data_dir: str | None = None
    cache_dir: str = "studies/.cache"
    device: str | None = None
    token: str | None = None
    train_device: str = "auto"
    skip_bad_images: bool = False


@dataclass(frozen=True)
class Finalized:
    """What a run leaves: every finalized trial of the study, earlier runs' too."""

    study: str
    points: tuple[FinalizedPoint, ...]
    failed: dict[int, str]  # trial number: why this run could not finalize it


def default_epochs(proxy_epochs: float, proxy_images: int, images: int) -> int:
    """The fewest whole epochs over ``images`` that give at least COMPUTE_MULTIPLE times the
    proxy's epochs x images."""
    # Rounded first, so that float error (5 x 0.23 epochs x 1000 images / 1150 = 1.0000000000000002) does
    # not cost a whole epoch more.
    return math.ceil(round(COMPUTE_MULTIPLE * proxy_epochs * proxy_images / images, 9))


def run_finalize(request: FinalizeRequest, progress: SearchProgress = SearchProgress()) -> Finalized:
    if request.epochs is not None and request.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {request.epochs}")
    plan = existing_study(request.study, request.storage)
    if plan.config.model:  # its trials start from a trained network: there is no proxy training to redo
        raise ConfigError(
            f"study {request.study} compresses your own network ({plan.config.model}): finalize trains searched "
            "architectures at full budget; export a front member with 'nas.py export', or fine-tune longer with a "
            "new study and a larger --finetune-epochs"
        )
    p = check_plan(plan, request.data_dir, request.device, request.token, request.train_device)
    study, store = open_study(plan, plan.config.resolution)
    config = study_config(study)
    chosen = choose_trials(study, request.trials)

    data = load_dataset(config.dataset, request.data_dir, request.cache_dir, config.resolution, request.skip_bad_images)
    check_same_data(plan.name, plan.data, data)
    announce_data(data, progress)
    proxy_images = len(balanced_subset(data.train.y, config.train_subset, config.seed))
    epochs = request.epochs or default_epochs(config.epochs, proxy_images, len(data.train))
    progress.message(_epochs_note(epochs, request.epochs is None, len(data.train), config.epochs, proxy_images))

    todo, earlier = [], study.user_attrs
    for trial in chosen:
        done = earlier.get(attrs.FINALIZED_PREFIX + str(trial.number))
        if done is None:
            todo.append(trial)
        elif done[attrs.FINAL_EPOCHS] == epochs:
            progress.message(f"trial {trial.number}: finalized already with {epochs} epochs")
        else:
            progress.message(f"trial {trial.number}: finalized before with {done[attrs.FINAL_EPOCHS]} epochs; again with {epochs}")
            todo.append(trial)
    failed = {}
    if todo:
        teachers = TeacherStore(store)
        teacher = study_teacher(
            teachers, plan.name, data, request.cache_dir, config.teacher_epochs or None, config.seed, progress, data.train
        )
        progress.stage(None, "teacher logits")
        logits = shared_logits(teachers, teacher, data.train, on_progress=progress.steps)
        device = train_device(request.train_device)
        announce_device(device, progress)
        train = data.train.to(device)
        ctx = FinalizeContext(
            study=study,
            config=config,
            data=data,
            train=train,
            train_logits=logits,
            teacher=teacher,
            epochs=epochs,
            calibration=calibration_samples(train, config.calib_samples, config.seed),
            target=p.target,
            measurer=CachedMeasurer(p.measurer, store),
            store=store,
            checkpoint_dir=study_dir(plan.name) / "finalize",
            progress=progress,
        )
        done = len(chosen) - len(todo)
        progress.start(done, len(chosen), label="finalize")
        try:
            for trial in todo:
                try:
                    finalize_trial(trial, ctx)
                    done += 1
                    progress.advance(done)
                except Exception as e:  # one candidate's failure (a diverged training) leaves the others to do
                    failed[trial.number] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
                    log.debug("finalizing trial %d failed", trial.number, exc_info=True)
                    progress.message(f"trial {trial.number} could not be finalized: {failed[trial.number]}")
        finally:
            progress.close()

    points = tuple(finalized_points(study.user_attrs))
    agreement = rank_agreement(points)
    study.set_user_attr(
        attrs.FINALIZE_KENDALL_TAU, {"tau": agreement.tau, "p_value": agreement.p_value, "trials": list(agreement.trials)}
    )
    return Finalized(plan.name, points, failed)


def _epochs_note(epochs: int, by_default: bool, images: int, proxy_epochs: float, proxy_images: int) -> str:
    multiple = epochs * images / (proxy_epochs * proxy_images)
    why = (
        f"the fewest whole epochs giving {COMPUTE_MULTIPLE}x the proxy's training; set --epochs"
        if by_default
        else "--epochs"
    )
    return (
        f"finalize: {epochs} epochs on all {images} training images ({why}): {multiple:.1f}x the proxy's "
        f"{proxy_epochs:g} epochs on {proxy_images} images"
    )


_NOT_COMPLETE = {
    TrialState.FAIL: "failed",
    TrialState.PRUNED: "was rejected by a constraint",
    TrialState.RUNNING: "is still running",
    TrialState.WAITING: "is waiting to run",
}


def choose_trials(study: optuna.Study, numbers: tuple[int, ...] | None) -> list[FrozenTrial]:
    """The trials numbered, each checked to have a candidate to finalize, or the study's
    Pareto front (as the report draws it: repeats excluded). Raises ``ConfigError``."""
    trials = study.get_trials(deepcopy=False)
    if numbers is None:
        front = {p.number for p in build_report(study.study_name, "", "", trials, {}).front}
        if not front:
            raise ConfigError(f"study {study.study_name} has no complete trials yet: nothing to finalize")
        return [t for t in trials if t.number in front]
    by_number = {t.number: t for t in trials}
    chosen = []
    for number in dict.fromkeys(numbers):  # each once, in the order given
        trial = by_number.get(number)
        if trial is None:
            why = f"study {study.study_name} has no trial {number}"
        elif trial.state != TrialState.COMPLETE:
            why = f"trial {number} {_NOT_COMPLETE[trial.state]}"
        elif attrs.REPEAT_OF in trial.user_attrs:
            why = f"trial {number} repeats trial {trial.user_attrs[attrs.REPEAT_OF]}: finalize that one"
        elif attrs.ARCH_SAMPLED not in trial.user_attrs or attrs.COMPRESSION not in trial.user_attrs:
            why = f"trial {number} records no candidate ({attrs.ARCH_SAMPLED} and {attrs.COMPRESSION})"
        else:
            chosen.append(trial)
            continue
        raise ConfigError(
            f"--trials: {why}; finalize takes complete trials that are not repeats "
            f"(see them with: python nas.py report --study {study.study_name})"
        )
    return chosen


@dataclass
class FinalizeContext:
    """What every trial of a finalize run shares."""

    study: optuna.Study
    config: StudyConfig
    data: Dataset
    train: Split  # the whole training split, where training runs
    train_logits: torch.Tensor  # the teacher's, one row per image of ``train``
    teacher: Teacher
    epochs: int
    calibration: np.ndarray
    target: Target
    measurer: Measurer
    store: Store
    checkpoint_dir: Path
    progress: SearchProgress


def finalize_trial(trial: FrozenTrial, ctx: FinalizeContext) -> dict:
    """Train the trial's candidate at full budget, prune, export, quantize, evaluate and
    measure it; store the record (``finalized:<trial>``) and return it."""
    cfg, data, n, progress = ctx.config, ctx.data, trial.number, ctx.progress
    comp = parse_compression(trial.user_attrs[attrs.COMPRESSION])
    example = data.val.batch(slice(0, 1))
    checkpoints = TrialCheckpoints(ctx.checkpoint_dir, n, ctx.epochs)

    progress.stage(n, "train")
    torch.manual_seed(trial_seed(cfg, n))  # the trial's first weights
    model = build_model(parse_arch(trial.user_attrs[attrs.ARCH_SAMPLED]))
    training = checkpoints.run("train")
    fit(model, ctx.train, train_config(cfg, ctx.epochs, n), ctx.train_logits, progress.steps, training)
    if training.resumed_from_step:
        progress.message(f"trial {n}: training resumed at step {training.resumed_from_step} from {training.path}")

    progress.stage(n, "prune")
    # The fine-tune grows with the training: the study's share of its epochs.
    finetune_epochs = cfg.finetune_epochs * ctx.epochs / cfg.epochs
    prune_and_finetune(
        model, comp, cfg, ctx.train, ctx.train_logits, finetune_epochs, n, example, progress.steps,
        lambda step: checkpoints.run(f"finetune{step}"),
    )
    cost = count_cost(model, data.in_chs, data.resolution)

    progress.stage(n, "export")
    fp32 = export_fp32(model, example, file_metadata(data))
    check_parity(fp32, model, data.val.batch(slice(0, 64)))

    progress.stage(n, "quantize")
    deployed = quantize_for(fp32, comp, ctx.calibration, ctx.target)

    progress.stage(n, "evaluate")
    acc = onnx_accuracy(deployed, data.val)
    record = {
        attrs.FINAL_EPOCHS: ctx.epochs,
        attrs.FINAL_IMAGES: len(ctx.train),
        attrs.COMPRESSION: str(comp),
        attrs.ARCH: str(model.spec),
        attrs.PARAMS: cost.params,
        attrs.MACS: cost.macs,
        attrs.SIZE_BYTES: len(deployed),
        attrs.PROXY_ACCURACY: trial.values[0],
        attrs.ACCURACY: acc,
        attrs.ACCURACY_TEST: onnx_accuracy(deployed, data.test),
        attrs.ACCURACY_BEFORE_QUANT: acc if comp.quant == "fp32" else onnx_accuracy(fp32, data.val),
        attrs.ONNX_SHA256: ctx.store.put_model(deployed),
        attrs.TRAIN_SECONDS: round(checkpoints.seconds, 2),
        attrs.RESUMED_FROM_STEP: training.resumed_from_step,
        attrs.TEACHER: {"sha256": ctx.teacher.sha256, "source": ctx.teacher.source},
    }

    progress.stage(n, "measure")
    m = ctx.measurer.measure(deployed)
    record[attrs.LATENCY_P50] = m.stats.p50_ms
    record[attrs.LATENCY_P90] = m.stats.p90_ms
    record[attrs.MEASURED_ON] = m.measured_on
    if ctx.measurer.runs_elsewhere:
        record[attrs.ACCURACY_ON_TARGET] = accuracy_on_target(ctx.measurer, deployed, data.val)

    ctx.study.set_user_attr(attrs.FINALIZED_PREFIX + str(n), record)
    checkpoints.remove()
    progress.message(
        f"trial {n} finalized: validation accuracy {acc:.4f} (proxy {trial.values[0]:.4f}), "
        f"test {record[attrs.ACCURACY_TEST]:.4f}, p50 {m.stats.p50_ms:.3f} ms, {len(deployed) / 1024:.1f} KB"
    )
    return record


class FileCheckpoint:
    """``fit``'s checkpoint (``stages.train.Checkpoint``) in a file, replaced atomically at
    each save; it also keeps the seconds trained, so that a resumed run's count those of
    the runs before it."""

    def __init__(self, path: Path):
        self.path = path
        self.resumed_from_step = 0  # where the state fit loaded had got to
        self.seconds = 0.0
        self._earlier_seconds = 0.0
        self._started = time.perf_counter()

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        self.resumed_from_step = saved["step"]
        self.seconds = self._earlier_seconds = saved["seconds"]
        return saved

    def save(self, state: dict) -> None:
        self.seconds = self._earlier_seconds + time.perf_counter() - self._started
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({**state, "seconds": self.seconds}, tmp)
        tmp.replace(self.path)  # a kill while writing leaves the previous epoch's


class TrialCheckpoints:
    """The checkpoints of one trial finalized with some number of epochs: its training's,
    then one for the fine-tune after each prune step."""

    def __init__(self, folder: Path, trial_number: int, epochs: int):
        self.folder = folder
        self.prefix = f"trial-{trial_number}-{epochs}ep-"
        self.runs: list[FileCheckpoint] = []

    def run(self, name: str) -> FileCheckpoint:
        checkpoint = FileCheckpoint(self.folder / f"{self.prefix}{name}.pt")
        self.runs.append(checkpoint)
        return checkpoint

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.runs)

    def remove(self) -> None:
        for path in self.folder.glob(f"{self.prefix}*"):
            path.unlink()
