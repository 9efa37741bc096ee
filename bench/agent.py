"""The board agent's cost: the same models measured in this process and through the agent.

    python bench/agent.py [--rounds 5] [--threads 1]

Starts a real agent (``python nas.py agent``) on loopback and measures each model
``--rounds`` times each way: in this process, as ``LocalMeasurer`` does; through
``AgentMeasurer`` (HTTP, then a child process of the agent per model); and in this
process from a single load of the model (``TimingPlan(sessions=1)``, how measurements
were taken before they were pooled over three loads). Each round measures every way,
rotating which goes first, so that drift of the machine affects all alike. The networks are MobileNetV3-style, untrained (latency depends on shapes
only), exported as the search exports them.

Figures: the median over rounds of each side's p50; the agent's overhead, the median
over rounds of agent p50 / local p50 - 1 (paired within a round, so that the machine's
drift cancels; goal <= 5%); the coefficient of variation (std / mean) of each side's
p50 over the rounds (goal <= 3%); the wall time of one measurement request on each
side. The local CV is the machine's own noise floor: where it is over a goal, the
machine cannot judge that goal, and the bench says so. The CV of the local side's
minimum shows how much of that floor is interference, which only ever adds time.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import ROOT, log, print_json, print_table

from search.board.client import AgentMeasurer
from search.stages.export import export_onnx
from search.stages.measure import LocalMeasurer
from search.board.timing import LatencyStats, TimingPlan
from search.targets import get_target
from spaces import MOBILENET_V3_SMALL, build_model, parse_arch

GOAL_OVERHEAD = 0.05
GOAL_CV = 0.03

# (name, spec, input resolution): from a digits-sized net to torchvision's mobilenet_v3_small.
MODELS = [
    ("tiny-8px", "in1-stem8_s1_hs-ir_k3_s2_x16_c8_re-ir_k3_s1_x24_c8_se8_hs-conv32_hs-cls10", 8),
    (
        "bench-32px",
        "in3-stem16_s1_hs-ir_k3_s2_x64_c24_re-ir_k3_s1_x72_c24_re-ir_k5_s2_x96_c40_se24_re"
        "-ir_k5_s1_x120_c40_se32_re-ir_k3_s2_x240_c80_hs-ir_k3_s1_x200_c80_hs"
        "-ir_k3_s1_x480_c112_se120_hs-ir_k5_s1_x672_c128_se168_hs-conv512_hs-cls10",
        32,
    ),
    ("mbv3-small-96px", str(MOBILENET_V3_SMALL), 96),
    ("mbv3-small-224px", str(MOBILENET_V3_SMALL), 224),
]


def start_agent(token: str, log_path: Path) -> tuple[subprocess.Popen, int]:
    """``nas.py agent`` on a port the system picks; returns the process and its port."""
    with open(log_path, "w") as agent_log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "nas.py"), "agent", "--port", "0"],
            stdout=subprocess.DEVNULL, stderr=agent_log, env={**os.environ, "EDGENAS_TOKEN": token},
        )
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log_path.read_text())
        if found:
            return proc, int(found.group(1))
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the agent did not start:\n{log_path.read_text()}")


def onnx_model(spec: str, resolution: int) -> bytes:
    arch = parse_arch(spec)
    torch.manual_seed(0)
    return export_onnx(build_model(arch), torch.zeros(1, arch.in_chs, resolution, resolution))


def timed(measurer, model: bytes) -> tuple[LatencyStats, float]:
    """The measurement's statistics and the wall seconds of the whole request."""
    start = time.perf_counter()
    stats = measurer.measure(model).stats
    return stats, time.perf_counter() - start


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each model on each side (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default: %(default)s)")
    args = parser.parse_args()

    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_agent(token, Path(tmp) / "agent.log")
        try:
            target = replace(get_target("host", f"127.0.0.1:{port}"), threads=args.threads)
            sides = {
                "local": LocalMeasurer(target),
                "agent": AgentMeasurer(target, token),
                "one_load": LocalMeasurer(target, TimingPlan(sessions=1)),
            }
            results = {}
            for name, spec, resolution in MODELS:
                model = onnx_model(spec, resolution)
                log(f"{name}: {len(model) / 1024:.0f} KB, {args.rounds} rounds")
                rounds = {side: [] for side in sides}
                walls = {side: [] for side in sides}
                for r in range(args.rounds):
                    order = list(sides)[r % len(sides):] + list(sides)[: r % len(sides)]
                    for side in order:
                        stats, wall = timed(sides[side], model)
                        rounds[side].append(stats)
                        walls[side].append(wall)
                p50s = {side: [s.p50_ms for s in rounds[side]] for side in sides}
                local, agent = (statistics.median(p50s[s]) for s in ("local", "agent"))
                results[name] = {
                    "size_kb": round(len(model) / 1024, 1),
                    "local_p50_ms": local,
                    "agent_p50_ms": agent,
                    "overhead": statistics.median(a / b for a, b in zip(p50s["agent"], p50s["local"])) - 1,
                    "local_cv": cv(p50s["local"]),
                    "agent_cv": cv(p50s["agent"]),
                    "one_load_cv": cv(p50s["one_load"]),
                    "local_cv_min": cv([s.min_ms for s in rounds["local"]]),
                    "local_wall_s": statistics.median(walls["local"]),
                    "agent_wall_s": statistics.median(walls["agent"]),
                }
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)

    rows = [
        [name, r["size_kb"], f"{r['local_p50_ms']:.4f}", f"{r['agent_p50_ms']:.4f}", f"{100 * r['overhead']:+.1f}%",
         f"{100 * r['local_cv']:.1f}%", f"{100 * r['agent_cv']:.1f}%", f"{100 * r['one_load_cv']:.1f}%",
         f"{100 * r['local_cv_min']:.1f}%", f"{r['local_wall_s']:.2f}", f"{r['agent_wall_s']:.2f}"]
        for name, r in results.items()
    ]
    print_table(
        f"Latency measured locally and by the agent on loopback, batch 1, {args.threads} thread(s), "
        f"{args.rounds} rounds (medians; CV = std/mean of the rounds' p50s)",
        ["model", "KB", "local p50 ms", "agent p50 ms", "overhead", "local CV", "agent CV",
         "one-load CV", "local CV of min", "local s", "agent s"],
        rows,
    )
    worst_overhead = max(abs(r["overhead"]) for r in results.values())
    worst_cv = max(r["agent_cv"] for r in results.values())
    noise_floor = max(r["local_cv"] for r in results.values())
    print(f"largest |overhead| {100 * worst_overhead:.1f}% (goal <= {100 * GOAL_OVERHEAD:.0f}%): "
          f"{verdict(worst_overhead, GOAL_OVERHEAD, noise_floor)}")
    print(f"largest agent CV {100 * worst_cv:.1f}% (goal <= {100 * GOAL_CV:.0f}%): "
          f"{verdict(worst_cv, GOAL_CV, noise_floor)}")
    print_json({"threads": args.threads, "rounds": args.rounds, "models": results,
                "max_abs_overhead": worst_overhead, "max_agent_cv": worst_cv, "max_local_cv": noise_floor})


def verdict(value: float, goal: float, noise_floor: float) -> str:
    if value <= goal:
        return "met"
    if noise_floor > goal:
        return f"not judged: this machine's own spread (local CV up to {100 * noise_floor:.1f}%) is over the goal"
    return "NOT met"


if __name__ == "__main__":
    main()
