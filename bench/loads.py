"""How many loads of a model one latency measurement should pool.

    python bench/loads.py [--rounds 20] [--threads 1]

Where ONNX Runtime places a session's buffers can make every run of that session
slower or faster, so one load is one draw of that placement however many runs it
times. This measures each model ``--rounds`` times with the default ``TimingPlan``
pooled over 1, 3 and 5 sessions (the same total runs and seconds), rotating the order
within each round, and prints the coefficient of variation (std / mean) of the p50s of
each. The models are bench/agent.py's. On a machine whose speed drifts, the CVs of all
three rise alike: compare them within one run.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

from agent import MODELS, cv, onnx_model
from common import log, print_json, print_table

from search.board.timing import TimingPlan, measure_latency

SESSIONS = (1, 3, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="measurements of each model with each setting (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default: %(default)s)")
    args = parser.parse_args()

    results = {}
    for name, spec, resolution in MODELS:
        model = onnx_model(spec, resolution)
        log(f"{name}: {args.rounds} rounds")
        p50s = {n: [] for n in SESSIONS}
        for r in range(args.rounds):
            for n in SESSIONS[r % 3:] + SESSIONS[: r % 3]:
                p50s[n].append(measure_latency(model, args.threads, plan=replace(TimingPlan(), sessions=n)).p50_ms)
        results[name] = {f"sessions_{n}": {"p50_ms": statistics.median(v), "cv": cv(v)} for n, v in p50s.items()}

    print_table(
        f"CV of the p50 over {args.rounds} measurements, by the number of loads pooled ({args.threads} thread(s), batch 1)",
        ["model"] + [f"p50 ms, {n} load(s)" for n in SESSIONS] + [f"CV, {n} load(s)" for n in SESSIONS],
        [[name] + [f"{r[f'sessions_{n}']['p50_ms']:.4f}" for n in SESSIONS] + [f"{100 * r[f'sessions_{n}']['cv']:.1f}%" for n in SESSIONS]
         for name, r in results.items()],
    )
    print_json({"rounds": args.rounds, "threads": args.threads, "models": results})


if __name__ == "__main__":
    main()
