"""What the benchmarks share: CIFAR-10 from ../shared, its ResNet-18 teacher, the
benchmark network trained once and cached, and side-by-side printing.

Every benchmark prints a table of figures measured in the same run and, as its last
line, the same figures as JSON.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.data import Dataset, load_dataset  # noqa: E402
from search.stages.teacher import Teacher, import_teacher, load_or_train_teacher, teacher_logits, teacher_path  # noqa: E402
from search.stages.train import TrainConfig, accuracy, fit, predict_logits  # noqa: E402
from spaces import MobileNetV3Like, build_model, parse_arch  # noqa: E402

SHARED = ROOT.parent / "shared"
CIFAR_ZIP = SHARED / "data" / "cifar10-jpeg.zip"
CIFAR_SHA256 = "78727f12476137bdacc970d65fa1acfea0ba56de418d5a068d8334934669cfdf"
TEACHER_WEIGHTS = SHARED / "models" / "resnet18-cifar10.pt"
CACHE = ROOT / "studies" / ".cache"

# The fixed benchmark network: MobileNetV3-style, 804k parameters, 12.2 MMACs at 32 px.
BENCH_ARCH = (
    "in3-stem16_s1_hs-ir_k3_s2_x64_c24_re-ir_k3_s1_x72_c24_re-ir_k5_s2_x96_c40_se24_re"
    "-ir_k5_s1_x120_c40_se32_re-ir_k3_s2_x240_c80_hs-ir_k3_s1_x200_c80_hs"
    "-ir_k3_s1_x480_c112_se120_hs-ir_k5_s1_x672_c128_se168_hs-conv512_hs-cls10"
)
BENCH_EPOCHS = 6


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def cifar10() -> Dataset:
    """CIFAR-10 from the shared zip (checked against its published hash), decoded once and cached."""
    stamp = CACHE / "data" / "cifar10-zip.sha256-ok"
    if not stamp.exists():
        digest = hashlib.sha256(CIFAR_ZIP.read_bytes()).hexdigest()
        if digest != CIFAR_SHA256:
            raise SystemExit(f"{CIFAR_ZIP} has sha256 {digest}, expected {CIFAR_SHA256}")
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
    return load_dataset(f"imagefolder:{CIFAR_ZIP}", cache_dir=str(CACHE))


def cifar_teacher(data: Dataset) -> Teacher:
    """The shared ResNet-18 (83.9% test), installed as this data set's teacher once."""
    if teacher_path(data, CACHE).exists():
        return load_or_train_teacher(data, CACHE)
    log("installing the shared ResNet-18 teacher: checking it on the validation split")
    return import_teacher(data, TEACHER_WEIGHTS, CACHE)


def trained_bench_model(data: Dataset, teacher: Teacher) -> MobileNetV3Like:
    """BENCH_ARCH distilled from the teacher for BENCH_EPOCHS epochs; cached."""
    path = CACHE / "bench" / f"bench-net-{hashlib.sha256(BENCH_ARCH.encode()).hexdigest()[:10]}-e{BENCH_EPOCHS}.pt"
    model = build_model(parse_arch(BENCH_ARCH))
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    log(f"training the benchmark network for {BENCH_EPOCHS} epochs (cached afterwards)")
    torch.manual_seed(0)
    start = time.perf_counter()
    fit(model, data.train, TrainConfig(epochs=BENCH_EPOCHS, lr=0.01, batch_size=128), teacher_logits(teacher, data.train))
    log(f"trained in {time.perf_counter() - start:.0f} s, validation accuracy "
        f"{accuracy(predict_logits(model, data.val), data.val.y):.4f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def parse_setting(text: str, keys: dict[str, type], defaults: dict | None = None) -> tuple[str, dict]:
    """``NAME:KEY=V,KEY=V`` (a benchmark's ``--setting``) as its name and its values over
    ``defaults``, each converted by its type in ``keys``."""
    name, _, body = text.partition(":")
    values = dict(defaults or {})
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in keys:
            raise SystemExit(f"setting {name!r}: unknown key {key!r}; keys: {', '.join(keys)}")
        values[key] = keys[key](value)
    return name, values


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *cells)]
    print(title)
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def print_json(result: dict) -> None:
    print(json.dumps(result, sort_keys=True))
