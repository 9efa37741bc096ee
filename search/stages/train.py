"""Training: knowledge distillation for students, plain cross-entropy for the teacher.

One loop serves both: the student's loss mixes cross-entropy with the KL divergence to
the teacher's precomputed logits; the teacher's is cross-entropy on augmented images.
Students train without augmentation because the teacher's logits are computed once on
the un-augmented images and reused by every trial.

Training runs where the split's images are: a split moved to a CUDA device trains there,
with automatic mixed precision; the model comes back to the CPU, where the stages after
training run.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Split


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


TRAIN_DEVICES = ("auto", "cpu", "cuda")


def train_device(choice: str) -> torch.device:
    """Where training runs: ``auto`` is the first CUDA GPU when there is one, else the CPU.
    Raises ``ValueError`` for a device this machine does not have."""
    if choice not in TRAIN_DEVICES:
        raise ValueError(f"--train-device must be one of {', '.join(TRAIN_DEVICES)}, got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--train-device cuda: this machine has no CUDA GPU that torch can use; use --train-device cpu or auto")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


@dataclass(frozen=True)
class TrainConfig:
    epochs: float  # fractional epochs are allowed: a proxy budget of 0.5 epoch is a real setting
    optimizer: str = "adamw"  # adamw: robust across sampled architectures at short budgets; sgd for the teacher
    lr: float = 0.01  # peak of the warm-up / cosine schedule
    batch_size: int = 64
    weight_decay: float = 4e-5  # MobileNet-style: depthwise convs overfit little, regularise lightly
    alpha: float = 0.3  # weight of the distillation term (the seed recipe: 0.7 CE + 0.3 KL)
    temperature: float = 4.0
    augment: bool = False  # random crop (and flip where the data allow it); teacher only
    hflip: bool = False
    resized_crops: bool = False  # photos: random-resized crops instead of shifted ones
    seed: int = 0


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``(1-alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))``.

    The T^2 factor keeps the soft term's gradients on the scale of the hard term's
    as T changes (Hinton et al., 2015).
    """
    ce = F.cross_entropy(student_logits, labels)
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    return (1.0 - alpha) * ce + alpha * temperature**2 * kl


def _augment(x: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    out = _random_resized_crop(x, generator) if config.resized_crops else _random_shift(x, generator)
    if config.hflip:
        flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
        out[flip] = out[flip].flip(3)
    return out


def _random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop after reflect-padding by 1/8 of the side (the small-image recipe)."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h)).view(n, 1, h, 1)
    out = padded.gather(2, rows.expand(-1, x.shape[1], -1, w + 2 * pad))
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w)).view(n, 1, 1, w)
    return out.gather(3, cols.expand(-1, x.shape[1], h, -1))


def _random_resized_crop(
    x: torch.Tensor, generator: torch.Generator, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3)
) -> torch.Tensor:
    """Inception-style crops (a random area and aspect ratio, resized back to the input's
    size) for a whole batch at once. The lower bound of the area is 0.25, not 0.08:
    short runs learn little from crops that small."""
    from torchvision.ops import roi_align

    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(*scale, generator=generator) * h * w
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    cw = torch.sqrt(area * aspect).clamp(max=w)
    ch = torch.sqrt(area / aspect).clamp(max=h)
    x0 = torch.rand(n, generator=generator) * (w - cw)
    y0 = torch.rand(n, generator=generator) * (h - ch)
    boxes = torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1)
    return roi_align(x, boxes.to(x.device, x.dtype), output_size=(h, w), sampling_ratio=2, aligned=True)


def _one_cycle(step: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up over the first quarter, cosine decay after.

    Written out because torch's OneCycleLR divides by zero below eight steps, and a
    fine-tune of half an epoch on a small data set is fewer.
    """
    warmup = max(1, total_steps // 4)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Checkpoint(Protocol):
    """Where :func:`fit` keeps its state between runs, so that a run killed midway continues."""

    def load(self) -> dict | None:
        """The state saved last, or None to train from the start."""

    def save(self, state: dict) -> None:
        """Keep ``state`` (tensors and numbers) until the next save. Its tensors are the live
        ones, which training goes on changing: write them out or copy them."""


def fit(
    model: nn.Module,
    data: Split,
    config: TrainConfig,
    teacher_logits: torch.Tensor | None = None,
    on_progress=None,
    checkpoint: Checkpoint | None = None,
    evaluate_at: Sequence[float] = (),
    on_evaluate: Callable[[float], None] | None = None,
) -> float:
    """Train ``model`` in place; return the mean loss of the last epoch.

    With ``teacher_logits`` (one row per training sample) the loss is
    :func:`distillation_loss`, else cross-entropy. ``on_progress(step, total_steps,
    steps_per_epoch)`` is called after every step. With a ``checkpoint``, training starts
    from the state it holds, and saves its state at the end of every epoch: a resumed run
    takes the steps an uninterrupted one would have taken. ``on_evaluate(fraction)`` is
    called, with the model in eval mode and where it trains, once the step nearest each
    fraction of training in ``evaluate_at`` is done; whatever it raises ends training.
    Raises :class:`TrainingDiverged` on a non-finite loss.
    """
    # Denormal floats (gradients of tiny magnitude, common after a few steps at a high
    # learning rate) take a slow path on x86 CPUs: a ResNet-18 step on 72 px photos went
    # from 2.4 s to 0.1 s with them flushed to zero. Their values are below what float32
    # training resolves anyway.
    torch.set_flush_denormal(True)
    device = data.pixels.device
    # Channels-last layout: PyTorch's CPU depthwise convolutions, which every candidate is
    # built from, are faster in it; a step took 1.4-1.8x less time on digits, 1.7-1.9x at
    # 32 px, and 1.1-1.2x for the ResNet-18 teacher (bench/layout.py). The model goes back
    # to the default layout after training, so nothing after it differs.
    model.to(device, memory_format=torch.channels_last)
    if teacher_logits is not None:
        teacher_logits = teacher_logits.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    n = len(data)
    steps_per_epoch = max(1, math.ceil(n / config.batch_size))
    total_steps = max(1, round(config.epochs * steps_per_epoch))
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_one_cycle, total_steps=total_steps))
    evaluate_after = {max(1, round(f * total_steps)): f for f in evaluate_at}
    step, loss_of_epoch = 0, 0.0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        step, loss_of_epoch = _resume(saved, total_steps, model, optimizer, schedule, generator, device)
    model.train()
    while step < total_steps:
        order = torch.randperm(n, generator=generator)
        epoch_losses = []
        for start in range(0, n, config.batch_size):
            if step >= total_steps:
                break
            idx = order[start : start + config.batch_size]
            if len(idx) < 2:  # batch norm cannot train on a batch of one
                continue
            idx = idx.to(device)
            x, y = data.batch(idx), data.y[idx]
            if config.augment:
                x = _augment(x, config, generator)
            x = x.contiguous(memory_format=torch.channels_last)
            with _mixed_precision(device):
                logits = model(x)
                if teacher_logits is None:
                    loss = F.cross_entropy(logits.float(), y)
                else:
                    loss = distillation_loss(logits.float(), teacher_logits[idx], y, config.alpha, config.temperature)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at step {step + 1} of {total_steps}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            epoch_losses.append(loss.detach())
            if on_progress is not None:
                on_progress(step, total_steps, steps_per_epoch)
            if on_evaluate is not None and step in evaluate_after:
                model.eval()
                on_evaluate(evaluate_after[step])
                model.train()
        loss_of_epoch = float(torch.stack(epoch_losses).mean()) if epoch_losses else 0.0
        if checkpoint is not None:
            state = _training_state(model, optimizer, schedule, generator, device, step, total_steps, loss_of_epoch)
            checkpoint.save(state)
    model.eval()
    model.to("cpu", memory_format=torch.contiguous_format)
    return loss_of_epoch


def _training_state(model, optimizer, schedule, generator, device, step: int, total_steps: int, loss: float) -> dict:
    """All that the steps still to come depend on: the weights, the optimizer's moments,
    where the schedule is, and the random streams (the batch order's and augmentation's
    generator; the global one, which dropout draws from)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "step": step,
        "total_steps": total_steps,
        "loss": loss,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def _resume(state: dict, total_steps: int, model, optimizer, schedule, generator, device) -> tuple[int, float]:
    """Load a :func:`_training_state`; return its step and the loss of its last epoch."""
    if state["total_steps"] != total_steps:  # another schedule: its steps cannot continue this one
        raise ValueError(f"the checkpoint is of a run of {state['total_steps']} steps, not {total_steps}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return state["step"], state["loss"]


def _mixed_precision(device: torch.device):
    """bfloat16 autocast on a GPU (no loss scaling needed); full precision on the CPU,
    where autocast would only slow the small convolutions down."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_logits(model: nn.Module, data: Split, batch_size: int = 512, on_progress=None) -> torch.Tensor:
    """Logits of every image of ``data``, on the CPU; computed where the images are, the
    model left where it was (a model in training stays on its device).

    Images go in channels-last, as in training: the convolutions then run in that layout
    whatever the model's weights are in, and a pass over 2,000 images at 32 px was 1.3-1.8x
    faster for four MobileNetV3-style candidates and the ResNet-18 teacher (bench/layout.py --eval)."""
    model.eval()
    home = next(model.parameters()).device
    model.to(data.pixels.device)
    out = []
    total = math.ceil(len(data) / batch_size)
    for i, start in enumerate(range(0, len(data), batch_size)):
        x = data.batch(slice(start, start + batch_size))
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with _mixed_precision(data.pixels.device):
            out.append(model(x).float().cpu())
        if on_progress is not None:
            on_progress(i + 1, total, total)
    model.to(home)
    return torch.cat(out) if out else torch.empty(0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """Recompute batch-norm running statistics from ``x`` (normalised images).

    Removing channels changes what every following layer sees, so the statistics
    gathered before pruning no longer hold (a network pruned by 30% fell to chance
    accuracy until they were recomputed). A pass in train mode with cumulative
    averaging fixes that without any gradient step.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.train()
    for i in range(0, len(x), batch_size):
        if len(x[i : i + batch_size]) > 1:
            model(x[i : i + batch_size].contiguous(memory_format=torch.channels_last))  # faster, as in predict_logits
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()
