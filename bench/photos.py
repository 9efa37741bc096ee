"""Peak memory of a search on a folder of ordinary photographs (issue 10).

    python bench/photos.py [--images 20000] [--resolution 96] [--load-only] [--workdir DIR]

Generates ``--images`` JPEGs of the sizes a phone or a web scrape leaves (500x375,
375x500, 640x480, 333x500, 500x333, 300x300; smooth colour fields with a class tint and
grain, so they compress like photos), 90% under ``train/`` and 10% under ``test/``, in
10 classes. Then, each in a fresh process whose peak resident memory is read back
(``ru_maxrss`` of the child):

The classes differ by their tint, so that a teacher trained for two epochs knows them.

1. ``load``: decoding the folder at ``--resolution`` into the memory-mapped cache
   (cold), then loading it again from the cache (warm);
2. ``search``: one whole trial of ``nas.py`` on the folder: teacher training (2 epochs,
   torchvision's strided stem at this resolution), its logits, a proxy student, pruning,
   export, quantization and latency.

The goal: the search's peak stays under 4 GB (the pixels alone, held as float32 at full
size, would be tens of GB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import ROOT, log, print_json, print_table

SIZES = [(500, 375), (375, 500), (640, 480), (333, 500), (500, 333), (300, 300)]
CLASSES = 10
GOAL_MB = 4096


def _write_chunk(args: tuple[Path, int, int]) -> None:
    from PIL import Image

    root, start, stop = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        cls = i % CLASSES
        split = "test" if (i // CLASSES) % 10 == 9 else "train"
        w, h = SIZES[i % len(SIZES)]
        # A smooth field (upsampled 8x6 noise) tinted by the class, plus grain.
        coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.int16)
        tint = np.array([(cls * 25) % 256, (cls * 71) % 256, (cls * 113) % 256], dtype=np.int16)
        pixels = (field // 4 + tint * 3 // 4 + rng.integers(-12, 12, (h, w, 3), dtype=np.int16)).clip(0, 255)
        path = root / split / f"class{cls}" / f"{i:06d}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=85)


def write_photos(root: Path, n: int) -> None:
    for split in ("train", "test"):
        for cls in range(CLASSES):
            (root / split / f"class{cls}").mkdir(parents=True, exist_ok=True)
    chunk = 500
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_write_chunk, [(root, s, min(s + chunk, n)) for s in range(0, n, chunk)]))


def run_measured(cmd: list[str], cwd: Path = ROOT) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MB) of ``cmd`` run as a child of a fresh helper process,
    so that the figure is that command's alone."""
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(r.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.stderr.write(r.stderr[-3000:])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=cwd, capture_output=True, text=True, env=env)
    code, seconds, kb = result.stdout.split()
    if code != "0":
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr}")
    return float(seconds), int(kb) / 1024, result.stderr


LOAD = (
    "import sys; from search.data import load_dataset; "
    "d = load_dataset(sys.argv[1], cache_dir=sys.argv[2], resolution=int(sys.argv[3])); "
    "print(len(d.train), len(d.val), len(d.test), tuple(d.train.pixels.shape))"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--load-only", action="store_true", help="measure the decode and cache alone, not a search")
    parser.add_argument("--workdir", type=Path, help="where the photos and caches go (default: a temporary folder, removed)")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-photos-"))
    photos, cache = work / "photos", work / "cache"
    try:
        if not photos.exists():
            log(f"writing {args.images:,} JPEGs under {photos}")
            start = time.perf_counter()
            write_photos(photos, args.images)
            log(f"written in {time.perf_counter() - start:.0f} s")
        folder_mb = sum(f.stat().st_size for f in photos.rglob("*.jpg")) / 2**20
        dataset = f"imagefolder:{photos}"
        shutil.rmtree(cache, ignore_errors=True)
        rows, figures = [], {}
        for name in ("load, cold cache", "load, warm cache"):
            log(f"{name}")
            seconds, peak_mb, _ = run_measured([sys.executable, "-c", LOAD, dataset, str(cache), str(args.resolution)])
            rows.append([name, f"{seconds:.0f}", f"{peak_mb:.0f}"])
            figures[name] = {"seconds": seconds, "peak_mb": peak_mb}
        cache_mb = sum(f.stat().st_size for f in (cache / "data").rglob("*") if f.is_file()) / 2**20
        if not args.load_only:
            log(f"one trial of nas.py (teacher {args.teacher_epochs} epochs, proxy 2,000 images)")
            search = [
                sys.executable, str(ROOT / "nas.py"), "--dataset", dataset, "--resolution", str(args.resolution),
                "--cache-dir", str(cache), "--storage", f"sqlite:///{work / 'study.db'}", "--study", "photos",
                "--budget", "1", "--teacher-epochs", str(args.teacher_epochs), "--train-subset", "2000",
                "--epochs", "1", "--finetune-epochs", "0.5", "--calib-samples", "64", "--sampler", "random",
            ]
            seconds, peak_mb, _ = run_measured(search, cwd=work)  # its study's outputs go there
            rows.append(["one-trial search", f"{seconds:.0f}", f"{peak_mb:.0f}"])
            figures["search"] = {"seconds": seconds, "peak_mb": peak_mb}
        print_table(
            f"{args.images:,} generated JPEGs ({folder_mb:.0f} MB) at {args.resolution} px; decode cache "
            f"{cache_mb:.0f} MB; goal: peak < {GOAL_MB} MB",
            ["run", "wall s", "peak RSS MB"],
            rows,
        )
        print_json({"images": args.images, "resolution": args.resolution, "folder_mb": folder_mb, "cache_mb": cache_mb,
                    "runs": figures, "goal_mb": GOAL_MB})
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
