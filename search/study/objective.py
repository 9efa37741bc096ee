"""One trial: sample, cost, train, prune, export, quantize, evaluate, measure.

This is the only module that reads a trial's parameters and records its results (the
loop only starts, tells and labels trials); each stage (``search.stages``) is a plain
function of plain values, chained here. A stage that fails raises
``StageFailed``, which the loop records as a failed trial (with the stage and the
reason) before going on.

The steps that turn a candidate into a deployed file (:func:`train_config`,
:func:`prune_and_finetune`, :func:`export_fp32`, :func:`quantize_for`, ...) are public:
``search.finalize`` takes a chosen candidate through the same ones at full budget.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import optuna
import torch

import spaces
from spaces import Candidate, CompressionSpec, MobileNetV3Space, ModelCompression, build_model

from ..data import Dataset, Split
from ..progress import SearchProgress
from ..stages import StageFailed
from ..stages.cost import count_cost
from ..stages.evaluate import onnx_accuracy
from ..stages.export import check_parity, export_onnx
from ..board.timing import TimingPlan
from ..stages.measure import Measurer
from ..stages.prune import prune
from ..stages.quantize import quantize
from ..stages.train import Checkpoint, TrainConfig, accuracy, fit, predict_logits
from ..targets import Target
from . import attrs, early_stop
from .config import StudyConfig
from .storage import Store

log = logging.getLogger(__name__)

STAGES = ("cost", "train", "prune", "export", "quantize", "evaluate", "measure")
BN_SAMPLES = 1024  # training images that re-estimate batch-norm statistics after pruning


@dataclass
class TrialContext:
    """What every trial of a study shares."""

    config: StudyConfig
    space: MobileNetV3Space
    data: Dataset
    train: Split  # the images trials train on (the proxy's subset), where training runs
    curve_images: Split  # validation images the learning curve is taken on, where training runs
    train_logits: torch.Tensor  # the teacher's, one row per image of ``train``
    target: Target
    measurer: Measurer  # usually a CachedMeasurer around the local or the board's
    store: Store
    progress: SearchProgress
    teacher_sha256: str  # of the study's teacher (``search.shared_teacher``), which train_logits are from


class StudyObjective:
    """The trial loop's view of one study's trials (``loop.Objective``)."""

    def __init__(self, ctx: TrialContext):
        self.ctx = ctx

    def sample(self, trial: optuna.Trial) -> Candidate:
        return sample_trial(trial, self.ctx)

    def run(self, trial: optuna.Trial, candidate: Candidate) -> tuple[float, float, float]:
        return run_trial(trial, self.ctx, candidate)

    def repeat(self, trial: optuna.Trial, original: optuna.trial.FrozenTrial) -> tuple[float, float, float] | None:
        return repeat_trial(trial, self.ctx.config, original)


def repeat_trial(trial: optuna.Trial, cfg: StudyConfig, original: optuna.trial.FrozenTrial) -> tuple[float, float, float] | None:
    """Record ``trial`` as a repeat of ``original``: the original's values, once it has them."""
    trial.set_user_attr(attrs.REPEAT_OF, original.number)
    if original.values is None:  # still running elsewhere: nothing to reuse yet
        return None
    accuracy, latency_ms, size_kb = original.values
    _record_constraints(trial, cfg, latency_ms, size_kb)
    return accuracy, latency_ms, size_kb


def sample_trial(trial: optuna.Trial, ctx: TrialContext) -> Candidate:
    """The trial's candidate, recorded as sampled (``arch_sampled`` and ``compression``
    say which candidate it is: the loop finds repeats by them)."""
    data, target = ctx.data, ctx.target
    arch = spaces.sample_arch(trial, ctx.space, data.in_chs, data.resolution, data.num_classes)
    if attrs.BASELINE in trial.user_attrs:  # enqueued: the exact network, filed under the space's nearest point
        arch = spaces.parse_arch(trial.user_attrs[attrs.ARCH_SAMPLED])
    comp = spaces.sample_compression(trial, target.quant_modes, target.channel_rounds, target.prune_ratios)
    trial.set_user_attr(attrs.ARCH_SAMPLED, str(arch))
    record_compression(trial, comp, target)
    trial.set_user_attr(attrs.TEACHER_SHA256, ctx.teacher_sha256)
    return Candidate(arch, comp)


def record_compression(trial: optuna.Trial, comp, target: Target) -> None:
    """The trial's compression as sampled (a CompressionSpec, or a ModelCompression for one's
    own network): ``compression`` is its string, the loop finds repeats by it."""
    trial.set_user_attr(attrs.COMPRESSION, str(comp))
    stage_ratios = getattr(comp, "stage_ratios", ())
    if stage_ratios:  # the report's one number of a per-stage pruning: the mean share
        trial.set_user_attr(attrs.STAGE_RATIOS, list(stage_ratios))
    trial.set_user_attr(attrs.PRUNE_RATIO, round(sum(stage_ratios) / len(stage_ratios), 4) if stage_ratios else comp.prune_ratio)
    trial.set_user_attr(attrs.CHANNEL_ROUND, comp.channel_round)
    trial.set_user_attr(attrs.QUANT, comp.quant)
    trial.set_user_attr(attrs.CALIB_METHOD, comp.calib_method)
    if comp.quant == "int8-static":
        # The types come from the target, not the trial: record them, so that trials of
        # studies run with other profiles or versions can be told apart.
        trial.set_user_attr(attrs.INT8_TYPES, {
            "activations": target.activation_type,
            "weights": target.weight_type,
            "weight_bits": 7 if target.reduce_range else 8,
        })
    trial.set_user_attr(attrs.TARGET, target.name)


def run_trial(trial: optuna.Trial, ctx: TrialContext, candidate: Candidate) -> tuple[float, float, float]:
    """Cost, train and prune the candidate, then deploy it (export, quantize, evaluate, measure)."""
    cfg, data, comp = ctx.config, ctx.data, candidate.compression
    torch.manual_seed(trial_seed(cfg, trial.number))
    example = data.val.batch(slice(0, 1))
    calibration = calibration_samples(ctx.train, cfg.calib_samples, cfg.seed)
    metadata = file_metadata(data)
    # Baselines are reference points for the report: they run to the end, whatever the rule says.
    may_stop = cfg.early_stop and attrs.BASELINE not in trial.user_attrs

    with trial_stage(trial, ctx, "cost"):
        model = build_model(candidate.arch)
        trial.set_user_attr(attrs.PARAMS_BEFORE_PRUNE, count_cost(model, data.in_chs, data.resolution).params)
        probe = Probe(trial, ctx, candidate, example, calibration, metadata)
        if cfg.max_latency_ms is not None or cfg.max_size_kb is not None:
            probe.cost()  # refuses the candidate before training if it breaks a limit

    with trial_stage(trial, ctx, "train"):
        shared = _trained_twin(trial, ctx.store) if attrs.BASELINE in trial.user_attrs else None
        if shared is not None:  # the same network, quantized another way: an engineer trains it once
            number, weights, curve = shared
            model.load_state_dict(weights)
            trial.set_user_attr(attrs.LEARNING_CURVE, curve)
            trial.set_user_attr(attrs.TRAINED_BY, number)
        else:
            train_cfg = train_config(cfg, cfg.epochs, trial.number)
            loss = fit(
                model, ctx.train, train_cfg, ctx.train_logits, on_progress=ctx.progress.steps,
                evaluate_at=early_stop.curve_fractions(cfg.epochs),
                on_evaluate=_learning_curve(trial, ctx, model, probe if may_stop else None),
            )
            trial.set_user_attr(attrs.TRAIN_LOSS, loss)
            if attrs.BASELINE in trial.user_attrs and comp.prune_ratio == 0:
                trial.set_user_attr(attrs.TRAINED_WEIGHTS, ctx.store.put_model(_state_bytes(model)))

    with trial_stage(trial, ctx, "prune"):
        finetune_seconds = prune_and_finetune(
            model, comp, cfg, ctx.train, ctx.train_logits, cfg.finetune_epochs, trial.number, example, ctx.progress.steps
        )
        trial.set_user_attr(attrs.FINETUNE_SECONDS, round(finetune_seconds, 4))
        cost = count_cost(model, data.in_chs, data.resolution)
        trial.set_user_attr(attrs.ARCH, str(model.spec))
        trial.set_user_attr(attrs.PARAMS, cost.params)
        trial.set_user_attr(attrs.MACS, cost.macs)

    return deploy(trial, ctx, model, comp, calibration, {**metadata, "arch": str(model.spec)})


class DeployContext(Protocol):
    """What :func:`deploy` needs of a study's trials (a TrialContext, or an own network's context)."""

    config: StudyConfig
    data: Dataset
    target: Target
    measurer: Measurer
    store: Store
    progress: SearchProgress


def deploy(
    trial: optuna.Trial, ctx: DeployContext, model: torch.nn.Module, comp, calibration: np.ndarray, metadata: dict
) -> tuple[float, float, float]:
    """Export the trained, pruned ``model`` (its file says ``metadata``), quantize it as
    ``comp`` says, evaluate the deployed file and measure it on the target: the trial's
    values (accuracy, latency, size). A file that breaks a hard limit is rejected."""
    cfg, data = ctx.config, ctx.data
    with trial_stage(trial, ctx, "export"):
        fp32 = export_onnx(model, data.val.batch(slice(0, 1)), metadata)
        trial.set_user_attr(attrs.PARITY_MAX_DIFF, check_parity(fp32, model, data.val.batch(slice(0, 64))))
        trial.set_user_attr(attrs.SIZE_BYTES_FP32, len(fp32))

    with trial_stage(trial, ctx, "quantize"):
        deployed = quantize_for(fp32, comp, calibration, ctx.target)

    with trial_stage(trial, ctx, "evaluate"):
        acc = onnx_accuracy(deployed, data.val)
        acc_fp32 = acc if comp.quant == "fp32" else onnx_accuracy(fp32, data.val)
        trial.set_user_attr(attrs.ACCURACY, acc)
        trial.set_user_attr(attrs.ACCURACY_BEFORE_QUANT, acc_fp32)
        trial.set_user_attr(attrs.SIZE_BYTES, len(deployed))
        trial.set_user_attr(attrs.ONNX_SHA256, ctx.store.put_model(deployed))

    with trial_stage(trial, ctx, "measure"):
        m = ctx.measurer.measure(deployed)
        trial.set_user_attr(attrs.LATENCY_P50, m.stats.p50_ms)
        trial.set_user_attr(attrs.LATENCY_P90, m.stats.p90_ms)
        trial.set_user_attr(attrs.LATENCY, m.stats.as_dict())
        trial.set_user_attr(attrs.LATENCY_CACHED, m.cached)
        trial.set_user_attr(attrs.MEASURED_ON, m.measured_on)
        if ctx.measurer.runs_elsewhere:
            trial.set_user_attr(attrs.ACCURACY_ON_TARGET, accuracy_on_target(ctx.measurer, deployed, data.val))

    size_kb = len(deployed) / 1024.0
    broken = _broken_limits(cfg, size_kb, m.stats.p50_ms)
    if broken:  # no complete trial breaks a hard limit, whatever the probe said
        _reject(trial, cfg, "after training", broken, m.stats.p50_ms, size_kb)
    _record_constraints(trial, cfg, m.stats.p50_ms, size_kb)
    return acc, m.stats.p50_ms, size_kb


def trial_seed(cfg: StudyConfig, trial_number: int) -> int:
    """Seeds a trial's initial weights and its training: distinct for every trial of a study."""
    return cfg.seed * 100_003 + trial_number


def train_config(cfg: StudyConfig, epochs: float, trial_number: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        alpha=cfg.alpha,
        temperature=cfg.temperature,
        seed=trial_seed(cfg, trial_number),
    )


def prune_and_finetune(
    model: torch.nn.Module,
    comp: CompressionSpec | ModelCompression,
    cfg: StudyConfig,
    images: Split,
    logits: torch.Tensor,
    finetune_epochs: float,
    trial_number: int,
    example: torch.Tensor,
    on_progress=None,
    checkpoint_of: Callable[[int], Checkpoint] | None = None,
    held_out: Split | None = None,
    on_judged: Callable[[float, float], None] | None = None,
) -> float:
    """The candidate's own pruning, in ``cfg.prune_steps`` steps, each followed by its share
    of ``finetune_epochs`` of distillation on ``images``; ``checkpoint_of(step)``, if given,
    keeps each fine-tune's state (see ``fit``). With ``held_out`` images (none of
    ``images``), a fine-tune that lowers the accuracy on them is undone, and
    ``on_judged(before, after)`` told: a trained network pruned lightly can lose more to a
    short fine-tune on a few images than the pruning cost it. Returns the seconds spent
    fine-tuning."""
    stage_ratios = getattr(comp, "stage_ratios", ())  # a ModelCompression may prune each stage its own share
    if max(stage_ratios, default=comp.prune_ratio) <= 0:
        return 0.0
    per_step = finetune_epochs / cfg.prune_steps
    seconds = 0.0

    def finetune(m, step):
        nonlocal seconds
        if per_step > 0:
            checkpoint = checkpoint_of(step) if checkpoint_of is not None else None
            if held_out is not None:
                before, weights = held_out_accuracy(m, held_out), copy.deepcopy(m.state_dict())
            start = time.perf_counter()
            fit(m, images, train_config(cfg, per_step, trial_number), logits, on_progress, checkpoint)
            seconds += time.perf_counter() - start  # training alone: judging it is the trial's overhead
            if held_out is not None:
                after = held_out_accuracy(m, held_out)
                if after < before:
                    m.load_state_dict(weights)
                if on_judged is not None:
                    on_judged(before, after)

    bn_data = images.batch(slice(0, BN_SAMPLES)).cpu()
    prune(model, comp.prune_ratio, comp.channel_round, example, cfg.prune_steps, bn_data, finetune, stage_ratios)
    return seconds


def held_out_accuracy(model: torch.nn.Module, images: Split) -> float:
    return accuracy(predict_logits(model, images), images.y.cpu())


def file_metadata(data: Dataset) -> dict:
    """What a deployed file says of the data it expects."""
    return {"dataset": data.name, "classes": ",".join(data.classes), "mean": _csv(data.mean), "std": _csv(data.std)}


def export_fp32(model: torch.nn.Module, example: torch.Tensor, metadata: dict) -> bytes:
    """The fp32 file, naming the network it holds: the size probe and the trial export alike,
    so that a size limit checked on the probe holds for the file that ships."""
    return export_onnx(model, example, {**metadata, "arch": str(model.spec)})


def quantize_for(fp32: bytes, comp: CompressionSpec, calibration: np.ndarray, target: Target) -> bytes:
    """The file in the candidate's format, with the target's int8 types."""
    return quantize(
        fp32,
        comp.quant,
        calibration=calibration if comp.quant == "int8-static" else None,
        calib_method=comp.calib_method,
        activation_type=target.activation_type,
        weight_type=target.weight_type,
        reduce_range=target.reduce_range,
    )


def calibration_samples(images: Split, n: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[: min(n, len(images))]
    return images.batch(idx.to(images.pixels.device)).cpu().numpy()


def accuracy_on_target(measurer: Measurer, deployed: bytes, split: Split) -> float:
    """Accuracy on the board's own kernels: int8 kernels differ between machines."""
    logits = measurer.run(deployed, split.x.numpy())
    return float((logits.argmax(1) == split.y.numpy()).mean())


def _record_constraints(trial: optuna.Trial, cfg: StudyConfig, latency_ms: float | None, size_kb: float) -> None:
    """How far over each hard limit the candidate is (> 0: broken), for the samplers and the report.
    An unmeasured latency of a rejected candidate counts as broken."""
    violations = []
    if cfg.max_latency_ms is not None:
        over = 1.0 if latency_ms is None else latency_ms - cfg.max_latency_ms
        trial.set_constraint("latency_ms", over)
        violations.append(over)
    if cfg.max_size_kb is not None:
        trial.set_constraint("size_kb", size_kb - cfg.max_size_kb)
        violations.append(size_kb - cfg.max_size_kb)
    trial.set_user_attr(attrs.CONSTRAINT_VIOLATION, violations)


def _complete(trial: optuna.Trial) -> list[optuna.trial.FrozenTrial]:
    """The study's complete trials; none for a trial outside a study (a FixedTrial)."""
    study = getattr(trial, "study", None)
    return [] if study is None else study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _learning_curve(
    trial: optuna.Trial, ctx: TrialContext, model: torch.nn.Module, probe: Probe | None
) -> Callable[[float], None]:
    """What training calls at each point of the learning curve: record the point, and,
    given the candidate's probe, stop it (pruned, with the rule's numbers) once the
    study's complete trials say it cannot reach the front."""
    curve: list[float] = []
    seconds = 0.0

    def on_evaluate(fraction: float) -> None:
        nonlocal seconds
        start = time.perf_counter()
        curve.append(accuracy(predict_logits(model, ctx.curve_images), ctx.curve_images.y))
        trial.set_user_attr(attrs.LEARNING_CURVE, curve)
        stop = None
        if probe is not None:
            finished = early_stop.finished_trials(_complete(trial))
            # Latency and size are needed only if some complete trial is more accurate than
            # this candidate can become: most promising candidates never pay for the probe.
            if early_stop.check(len(curve) - 1, fraction, curve[-1], math.inf, math.inf, finished) is not None:
                cost = probe.cost()
                stop = early_stop.check(len(curve) - 1, fraction, curve[-1], cost.latency_ms, cost.size_kb, finished)
        seconds += time.perf_counter() - start
        trial.set_user_attr(attrs.CURVE_SECONDS, round(seconds, 4))
        if stop is not None:
            reason = stop.reason(ctx.config.epochs)
            trial.set_user_attr(attrs.EARLY_STOPPED, {**stop.as_dict(), "reason": reason})
            raise optuna.TrialPruned(reason)

    return on_evaluate


def _trained_twin(trial: optuna.Trial, store: Store) -> tuple[int, dict, list[float]] | None:
    """The trained weights (and learning curve) of a complete baseline trial of the same
    unpruned network, if the study has one: (its number, state dict, curve)."""
    arch = trial.user_attrs[attrs.ARCH_SAMPLED]
    for t in _complete(trial):
        key = t.user_attrs.get(attrs.TRAINED_WEIGHTS)
        if key and t.user_attrs.get(attrs.ARCH_SAMPLED) == arch and (data := store.get_model(key)) is not None:
            weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            return t.number, weights, t.user_attrs.get(attrs.LEARNING_CURVE, [])
    return None


def _state_bytes(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class ProbeCost:
    size_kb: float
    latency_ms: float


# The early-stop rule needs the candidate's latency only to compare it with complete
# trials': one load and a short run suffice (a hard latency limit gets the full plan).
PROBE_PLAN = TimingPlan(sessions=1, warmup_runs=5, warmup_seconds=0.05, min_runs=20, min_seconds=0.1)


class Probe:
    """Latency and size depend on shapes, not on trained weights: the untrained network,
    pruned, exported and quantized as the trial will be, tells them before training.
    Its file differs from the trained one by a few bytes at most (quantized scales and
    zero points), so hard limits are checked again on the file that ships. Made once,
    when first asked for."""

    def __init__(self, trial, ctx: TrialContext, candidate: Candidate, example, calibration, metadata):
        self.trial, self.ctx, self.candidate = trial, ctx, candidate
        self.example, self.calibration, self.metadata = example, calibration, metadata
        self._cost: ProbeCost | None = None

    def cost(self) -> ProbeCost:
        """The probe's size and latency; rejects the candidate (TrialPruned) if it breaks a hard limit."""
        if self._cost is None:
            self._cost = self._measure()
        return self._cost

    def _measure(self) -> ProbeCost:
        trial, ctx, cfg, comp = self.trial, self.ctx, self.ctx.config, self.candidate.compression
        with torch.random.fork_rng():  # the trial trains as it would without the probe
            probe = build_model(self.candidate.arch)
            prune(probe, comp.prune_ratio, comp.channel_round, self.example, cfg.prune_steps)
            _like_trained_weights(probe)
        deployed = quantize_for(export_fp32(probe, self.example, self.metadata), comp, self.calibration, ctx.target)
        size_kb = len(deployed) / 1024.0
        reasons = _broken_limits(cfg, size_kb, None)
        if reasons:  # timing costs more than counting bytes
            _reject(trial, cfg, "before training", reasons, None, size_kb)
        limit = cfg.max_latency_ms is not None
        latency = ctx.measurer.measure(deployed, None if limit else PROBE_PLAN).stats.p50_ms
        reasons = _broken_limits(cfg, size_kb, latency)
        if reasons:
            _reject(trial, cfg, "before training", reasons, latency, size_kb)
        trial.set_user_attr(attrs.PROBE, {"latency_ms": latency, "size_kb": round(size_kb, 3)})
        return ProbeCost(size_kb, latency)


@torch.no_grad()
def _like_trained_weights(model: torch.nn.Module) -> None:
    """Give every tensor distinct values, as training does. The exporter stores equal
    constant tensors once, and a fresh network is full of them (zero biases, unit
    batch-norm scales): its file would be smaller than the trained network's."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():  # signed, as trained weights are: it sets the zero points
            tensor.copy_(torch.randn_like(tensor).abs() + 0.5 if "running_var" in name else torch.randn_like(tensor))


def _broken_limits(cfg: StudyConfig, size_kb: float, latency_ms: float | None) -> list[str]:
    reasons = []
    if cfg.max_size_kb is not None and size_kb > cfg.max_size_kb:
        reasons.append(f"size {size_kb * 1024:.0f} B > {cfg.max_size_kb * 1024:.0f} B ({cfg.max_size_kb:g} KB)")
    if cfg.max_latency_ms is not None and latency_ms is not None and latency_ms > cfg.max_latency_ms:
        reasons.append(f"latency {latency_ms:.4f} ms > {cfg.max_latency_ms:g} ms")
    return reasons


def _reject(trial, cfg: StudyConfig, when: str, reasons: list[str], latency_ms: float | None, size_kb: float):
    reason = f"{when}: {'; '.join(reasons)}"
    trial.set_user_attr(attrs.REJECTED, reason)
    _record_constraints(trial, cfg, latency_ms, size_kb)
    raise optuna.TrialPruned(f"rejected {reason}")


@contextmanager
def trial_stage(trial: optuna.Trial, ctx: DeployContext, name: str):
    """One stage of a trial: announced, timed (``seconds_<name>``), and a failure in it
    recorded (``failed_stage``, ``fail_reason``) and raised as StageFailed."""
    ctx.progress.stage(trial.number, name)
    start = time.perf_counter()
    try:
        yield
    except (optuna.TrialPruned, KeyboardInterrupt):
        raise
    except Exception as e:
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        trial.set_user_attr(attrs.FAILED_STAGE, name)
        trial.set_user_attr(attrs.FAIL_REASON, reason)
        log.debug("trial %d failed in %s", trial.number, name, exc_info=True)
        raise StageFailed(name, reason) from e
    finally:
        trial.set_user_attr(attrs.SECONDS_PREFIX + name, round(time.perf_counter() - start, 4))


def _csv(values) -> str:
    return ",".join(f"{v:.6g}" for v in values)
