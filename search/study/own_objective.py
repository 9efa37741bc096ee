"""One trial of a study of one's own network: how to compress it, never which network.

The network is trained already, so a trial has no training stage: it samples a
compression (``spaces.compression_only``), prunes a copy of the original and fine-tunes
it with distillation from the original itself (its logits, computed once per worker,
are the teacher's), keeping the fine-tune only where it did not lower the accuracy on
held-out training images (on CIFAR-10, a short fine-tune cost a ResNet-18 pruned by a
tenth in its last stage more than the pruning had), then deploys it as an architecture-search trial does
(``objective.deploy``: export, quantize, evaluate, measure). An unpruned candidate is
the original, only quantized: the study's baselines (``baselines.original_baselines``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import optuna
import torch

from spaces import ModelCompression, sample_model_compression

from ..data import Dataset, Split
from ..own_model import OwnModel
from ..progress import SearchProgress
from ..stages.cost import count_cost
from ..stages.measure import Measurer
from ..targets import Target
from . import attrs
from .config import StudyConfig
from .objective import (
    calibration_samples, deploy, file_metadata, prune_and_finetune, record_compression, repeat_trial, trial_seed,
    trial_stage,
)
from .storage import Store


@dataclass
class OwnModelContext:
    """What every trial of a study of one's own network shares."""

    config: StudyConfig
    own: OwnModel  # the original, trained network: never changed, each trial prunes a copy
    data: Dataset
    train: Split  # the images the fine-tunes train on (the proxy's subset), where training runs
    train_logits: torch.Tensor  # the original network's, one row per image of ``train``: the teacher
    held_out: Split | None  # training images outside ``train`` that judge each fine-tune; None: none left
    target: Target
    measurer: Measurer
    store: Store
    progress: SearchProgress


class OwnModelObjective:
    """The trial loop's view of a study of one's own network (``loop.Objective``)."""

    def __init__(self, ctx: OwnModelContext):
        self.ctx = ctx

    def sample(self, trial: optuna.Trial) -> ModelCompression:
        ctx, target = self.ctx, self.ctx.target
        comp = sample_model_compression(
            trial, ctx.own.n_stages, target.quant_modes, target.channel_rounds, target.prune_ratios,
            ctx.config.calib_samples,
        )
        trial.set_user_attr(attrs.ARCH_SAMPLED, ctx.own.name)
        record_compression(trial, comp, target)
        trial.set_user_attr(attrs.TEACHER_SHA256, ctx.own.weights_sha256)  # the teacher is the original
        return comp

    def run(self, trial: optuna.Trial, comp: ModelCompression) -> tuple[float, float, float]:
        return run_own_trial(trial, self.ctx, comp)

    def repeat(self, trial: optuna.Trial, original: optuna.trial.FrozenTrial) -> tuple[float, float, float] | None:
        return repeat_trial(trial, self.ctx.config, original)


def run_own_trial(trial: optuna.Trial, ctx: OwnModelContext, comp: ModelCompression) -> tuple[float, float, float]:
    """Prune a copy of the original and fine-tune it from the original, then deploy it."""
    cfg, data = ctx.config, ctx.data
    torch.manual_seed(trial_seed(cfg, trial.number))
    example = data.val.batch(slice(0, 1))
    calibration = calibration_samples(ctx.train, comp.calib_samples or 1, cfg.seed)  # int8-static's alone

    with trial_stage(trial, ctx, "prune"):
        model = copy.deepcopy(ctx.own.network)
        trial.set_user_attr(attrs.PARAMS_BEFORE_PRUNE, ctx.own.params)
        judged = []
        finetune_seconds = prune_and_finetune(
            model, comp, cfg, ctx.train, ctx.train_logits, cfg.finetune_epochs, trial.number, example, ctx.progress.steps,
            held_out=ctx.held_out, on_judged=lambda before, after: judged.append([round(before, 4), round(after, 4)]),
        )
        if judged:
            trial.set_user_attr(attrs.FINETUNE_JUDGED, judged)
        trial.set_user_attr(attrs.FINETUNE_SECONDS, round(finetune_seconds, 4))
        cost = count_cost(model, data.in_chs, data.resolution)
        network = describe_network(ctx.own.name, comp)
        trial.set_user_attr(attrs.ARCH, network)
        trial.set_user_attr(attrs.PARAMS, cost.params)
        trial.set_user_attr(attrs.MACS, cost.macs)

    return deploy(trial, ctx, model, comp, calibration, {**file_metadata(data), "arch": network})


def describe_network(model: str, comp: ModelCompression) -> str:
    """What the report, the model card and the file call the deployed network: the user's
    own name for it, and how it was pruned (``torchvision:resnet18 pruned 0.5, round 8``)."""
    return f"{model} {comp.describe_pruning()}"
