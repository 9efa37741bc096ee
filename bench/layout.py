"""Training step time in PyTorch's default (NCHW) layout against channels-last, side by side.

    python bench/layout.py [--candidates 4] [--steps 10] [--rounds 3] [--eval]

``search.stages.train.fit`` trains in channels-last layout. This shows why, on the networks
the search trains: MobileNetV3-Small baselines and random compact-space candidates at
digits' shape (1x8x8, batch 128), random mbv3-space candidates at CIFAR-10's (3x32x32,
batch 128), and the ResNet-18 teacher (as ``build_teacher`` makes it) at both. Each network is timed in both layouts in
interleaved rounds (AdamW steps after two warm-up steps; the median over rounds), so a
phase of the machine favours neither; the ratio is default / channels-last.

With ``--eval`` it times what ``predict_logits`` does instead (a learning-curve point, the
accuracy after pruning): a pass over 2,000 images in batches of 512 without gradients,
the weights left in the default layout and only the images in either layout.
"""

from __future__ import annotations

import argparse
import statistics
import time

import optuna
import torch
from common import log, print_json, print_table

from search.stages.teacher import build_teacher
from spaces import build_model, get_space, mobilenet_v3_small, sample_arch

LAYOUTS = {"default": torch.contiguous_format, "channels-last": torch.channels_last}


def networks(n_candidates: int) -> list[tuple[str, callable, tuple]]:
    """(name, model factory, input shape) for each network timed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    nets = [(f"mnv3-small-{w:g} @8px", lambda w=w: build_model(mobilenet_v3_small(w, 1, 8, 10)), (1, 8, 8))
            for w in (0.35, 1.0)]
    for space, shape in (("compact", (1, 8, 8)), ("mbv3", (3, 32, 32))):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for i in range(n_candidates):
            spec = sample_arch(study.ask(), get_space(space), shape[0], shape[1], 10)
            nets.append((f"{space} #{i} @{shape[1]}px", lambda spec=spec: build_model(spec), shape))
    for shape in ((1, 8, 8), (3, 32, 32)):
        nets.append((f"resnet18 @{shape[1]}px", lambda c=shape[0]: build_teacher(c, 10), shape))
    return nets


def step_seconds(make, shape: tuple, layout, steps: int) -> float:
    torch.manual_seed(0)
    model = make().to(memory_format=layout).train()
    x = torch.randn(128, *shape).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (128,))
    optimizer = torch.optim.AdamW(model.parameters())
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


EVAL_IMAGES = 2000


@torch.no_grad()
def pass_seconds(make, shape: tuple, layout, steps: int) -> float:
    """Seconds of one pass over EVAL_IMAGES (the best of ``steps``), weights in the default layout."""
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(EVAL_IMAGES, *shape)
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        for i in range(0, EVAL_IMAGES, 512):
            model(x[i : i + 512].contiguous(memory_format=layout))
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=4, help="random candidates per space")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--eval", action="store_true", help=f"time a pass over {EVAL_IMAGES} images without gradients instead")
    args = p.parse_args()
    timed = pass_seconds if args.eval else step_seconds
    torch.set_flush_denormal(True)  # as fit() does
    nets = networks(args.candidates)
    times = {(name, layout): [] for name, _, _ in nets for layout in LAYOUTS}
    for r in range(args.rounds):
        log(f"round {r + 1} of {args.rounds}")
        for name, make, shape in nets:
            for layout, fmt in LAYOUTS.items():
                times[(name, layout)].append(timed(make, shape, fmt, args.steps))
    rows, results = [], {}
    for name, _, _ in nets:
        default, last = (statistics.median(times[(name, layout)]) for layout in LAYOUTS)
        results[name] = {"default_s": round(default, 4), "channels_last_s": round(last, 4), "ratio": round(default / last, 2)}
        rows.append([name, f"{default * 1000:.0f}", f"{last * 1000:.0f}", f"{default / last:.2f}"])
    what = (f"Pass over {EVAL_IMAGES} images, batch 512, no gradients, ms (median of {args.rounds} interleaved rounds, "
            f"each the best of {args.steps})" if args.eval else
            f"Training step, batch 128, ms (median of {args.rounds} interleaved rounds of {args.steps} steps)")
    print_table(what,
                ["network", "default (NCHW)", "channels-last", "default / channels-last"], rows)
    print_json({"torch": torch.__version__, "threads": torch.get_num_threads(), "eval": args.eval, "networks": results})


if __name__ == "__main__":
    main()
