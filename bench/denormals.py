"""What flushing denormal floats to zero buys in training, on this CPU.

    python bench/denormals.py [--rounds 3]

Trains the same networks from the same seed with ``torch.set_flush_denormal`` off and
on, alternating within each round: the digits teacher (ResNet-18, 3x3 stem, SGD at
lr 0.1, as the search trains it), a student (AdamW, as a trial), and a photo-stem
ResNet-18 trained as a teacher on a tiny separable set of 72 px images (what the
tests' photo folders are). Prints seconds per run and the ratio
off / on, all taken in one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from common import log, print_json, print_table

from search.data import Dataset, load_dataset
from search.stages.teacher import build_teacher, load_or_train_teacher
from search.stages.train import TrainConfig, fit
from spaces import build_model, parse_arch

REAL_FLUSH = torch.set_flush_denormal
STUDENT = "in1-stem16_s1_hs-ir_k3_s2_x64_c24_re-ir_k5_s1_x96_c40_se24_hs-conv128_hs-cls10"


def photo_folder(root: Path) -> Dataset:
    """The photo folder of tests/test_runner.py: 36 JPEGs of two classes a colour apart,
    500 x 375 and other sizes, at 72 px. The network soon fits them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_data import write_photo_tree

    write_photo_tree(root, [(500, 375), (375, 500), (400, 300)], per_class=15, test_per_class=3)
    return load_dataset(f"imagefolder:{root}", resolution=72)


def cases(digits: Dataset, photos: Dataset, cache: Path) -> dict:
    """name -> a training run to time."""
    teacher_config = TrainConfig(epochs=2, lr=0.1, batch_size=128, weight_decay=5e-4, optimizer="sgd", augment=True)
    student_config = TrainConfig(epochs=4, batch_size=128)
    runs = iter(range(1_000_000))
    return {
        "digits teacher, 2 epochs": lambda: fit(build_teacher(1, 10), digits.train, teacher_config),
        "digits student, 4 epochs": lambda: fit(build_model(parse_arch(STUDENT)), digits.train, student_config),
        # The search's own path: a fresh cache each time, so the teacher trains.
        "photo-folder teacher, 72 px, 40 epochs": lambda: load_or_train_teacher(photos, cache / str(next(runs)), epochs=40),
    }


def run(train, flush: bool) -> float:
    torch.manual_seed(0)
    # fit turns flushing on; for the "kept" runs it must stay off.
    with mock.patch.object(torch, "set_flush_denormal", lambda on: REAL_FLUSH(flush)):
        start = time.perf_counter()
        train()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    digits = load_dataset("digits")
    tmp = Path(tempfile.mkdtemp())
    all_cases = cases(digits, photo_folder(tmp / "photos"), tmp / "cache")
    seconds = {(name, flush): [] for name in all_cases for flush in (False, True)}
    for r in range(args.rounds):
        for name, case in all_cases.items():
            for flush in ((False, True) if r % 2 == 0 else (True, False)):
                seconds[name, flush].append(run(case, flush))
                log(f"round {r + 1}: {name}, flush {flush}: {seconds[name, flush][-1]:.2f} s")
    rows = []
    for name in all_cases:
        off, on = statistics.median(seconds[name, False]), statistics.median(seconds[name, True])
        rows.append([name, f"{off:.2f}", f"{on:.2f}", f"{off / on:.2f}x"])
    print_table("median seconds per training run", ["run", "denormals kept", "flushed", "kept / flushed"], rows)
    print_json({name: {"kept_s": seconds[name, False], "flushed_s": seconds[name, True]} for name in all_cases})


if __name__ == "__main__":
    main()
