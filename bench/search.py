"""Does the search beat random sampling and the hand-designed baselines, and what does early stopping save?

    python bench/search.py fronts [--samplers nsga2,tpe,random,tpe:n_startup_trials=8] [--seeds 0,1,2] [--budget 50]
                                  [--early-stop off|on|both] [--no-baselines] [--settings cifar10 [--set train_subset=5000]]
    python bench/search.py sampler-overhead [--trials 1000] [--samplers nsga2,tpe]
    python bench/search.py trial-overhead --study NAME [--storage URL]
    python bench/search.py margins [--margins 0.01,0.02,0.03,0.05] [--study NAME [--storage URL]]
    python bench/search.py latency-drift --study NAME [--storage URL] [--rounds 5]
    python bench/search.py plans --study NAME [--plans default,threads=0] [--rounds 5]

``fronts`` runs one digits study (default settings, as ``make search``; or a study
config's, ``--settings cifar10``) per sampler, seed and early-stop setting (a sampler named with keyword arguments, ``tpe:n_startup_trials=8``,
is that setting tried before it becomes a default), in studies/bench-search/ (a rerun resumes and reuses them), and
reports for each: the hypervolume of its feasible front, complete trials, wall time of
the trial loop, and which baselines the front does not dominate. Objectives for the
hypervolume: validation error (1 - accuracy), latency and size, each divided by the
reference point's, so the box is the unit cube: REFERENCE below (error 1, 1 ms, 1024 KB;
trials beyond it add nothing), and again with each objective (error, log latency, log
size) scaled over the union of the compared studies' fronts, reference 1.1 (on digits
every front nears the fixed box's corner, so only this one tells samplers apart). For
studies without early stopping, it also replays the
rule (``search.study.early_stop.replay``) over their trials: which front members it would
have stopped. For studies with early stopping, the matching study without it is cut at
the same wall time: the hypervolume each had after the same compute.

``trial-overhead`` reads a finished study: per trial, the wall time from ask to tell
against the time spent training (proxy training less its learning-curve passes, plus
the fine-tunes); the rest (sampling, build, probe, prune surgery, export, quantize,
evaluation, measurement, storage writes) is the overhead, by stage.

``margins`` replays the early-stop rule over every study of ``fronts`` without it (or over
one study's complete trials, ``--study``), once per ``MARGIN`` (the accuracy added to the largest gain seen): what each would stop, and
how many front members.

``latency-drift`` takes every trained trial of a finished study (complete, not a repeat,
its file in the study's store), times all their files again in this process on a quiet
machine, every file once a round (``search.report.retime``), and compares each with
the latency the search recorded for it: how far the figures the samplers learned from
were off.

``plans`` times every stored file of a finished study by several timing plans
(``default`` is ``TimingPlan()`` with the study's target; others name the fields they
change, ``warmup_seconds=0.2:max_runs=2000``, or the target's ONNX Runtime threads,
``threads=0``: one per core), every file by every plan once a round, the plans'
order rotating, ``--rounds`` rounds: the seconds a measurement costs, each plan's p50
against the default's (median over rounds), how much a file's p50 moves between rounds
(CV), and how well one measurement orders the files (Kendall tau of each round's p50s
against the first plan's medians over all rounds, and against the plan's own: the median
over rounds): what a cheaper plan gives up, and how steady a plan is.

``sampler-overhead`` runs the trial loop with a fake objective (the real compact space's
parameters, values a cheap function of them) to ``--trials`` complete trials in one SQLite
study (``--storage sqlite``) or in memory (the default: the samplers' own cost, without
the per-write cost of SQLite), and reports seconds per trial (ask, sample, tell, the
loop's reads) in windows.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np
import optuna
from common import ROOT, log, print_json, print_table
from optuna.trial import TrialState
from scipy.stats import kendalltau

from search.board.timing import TimingPlan
from search.progress import SearchProgress
from search.report.front import build_report, dominated_by
from search.report.hypervolume import Scaling, hypervolume, objective_points
from search.report.retime import retime
from search.runner import SearchRequest, run_search
from search.stages.measure import LocalMeasurer
from search.study import attrs, early_stop, loop
from search.study.config import StudyConfig, load_toml
from search.study.storage import Store, TrialStartLock, open_storage
from spaces import get_space, sample_arch, sample_compression
from search.targets import Target, get_target

REFERENCE = {"error": 1.0, "latency_ms": 1.0, "size_kb": 1024.0}
WORK = ROOT / "studies" / "bench-search"


def normalised(trials) -> np.ndarray:
    """Feasible trials' objectives, minimised and divided by the reference point's."""
    feasible = [t for t in trials if all(v <= 0 for v in t.user_attrs.get(attrs.CONSTRAINT_VIOLATION) or [])]
    return np.array(
        [[(1.0 - t.values[0]) / REFERENCE["error"], t.values[1] / REFERENCE["latency_ms"],
          t.values[2] / REFERENCE["size_kb"]] for t in feasible]
    ).reshape(-1, 3)


def counted(trials):
    return [t for t in trials if loop.counts_towards_budget(t)]


def sampler_variant(spec: str) -> tuple[str, dict]:
    """``tpe`` or ``tpe:n_startup_trials=2:gamma_fraction=0.25``: the study's sampler and
    keyword arguments for it that no study setting offers, to try a setting before it
    becomes a default (``gamma_fraction`` F: TPE's "good" group is the best F of the trials)."""
    name, *items = spec.split(":")
    kwargs = {}
    for item in items:
        key, _, value = item.partition("=")
        kwargs[key] = float(value) if "." in value else int(value)
    return name, kwargs


def variant_sampler(name: str, kwargs: dict):
    """``loop.make_sampler`` with ``kwargs`` added for sampler ``name``."""
    made_by = loop.make_sampler

    def make(config, worker_slot, n_existing):
        sampler = made_by(config, worker_slot, n_existing)
        if not kwargs:
            return sampler
        extra = dict(kwargs)
        if "gamma_fraction" in extra:
            fraction = extra.pop("gamma_fraction")
            extra["gamma"] = lambda n: min(int(np.ceil(fraction * n)), 25)
        seed = loop.sampler_seed(config, worker_slot, n_existing)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, **extra)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, **{"population_size": config.population, **extra})
        raise SystemExit(f"bench/search.py: no keyword arguments for sampler {name}")

    return make


def run_study(name: str, spec: str, seed: int, budget: int, early: bool, baselines: bool, settings: dict) -> list:
    sampler, kwargs = sampler_variant(spec)
    explicit = {**settings, "sampler": sampler, "seed": seed, "early_stop": early, "baselines": baselines}
    log(f"study {name}: {explicit} {kwargs or ''}, budget {budget}")
    default = loop.make_sampler
    loop.make_sampler = variant_sampler(sampler, kwargs)
    try:
        run_search(SearchRequest(budget=budget, explicit=explicit, study=name,
                                 storage=f"sqlite:///{WORK}/{name}.db"), SearchProgress())
    finally:
        loop.make_sampler = default
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{WORK}/{name}.db")
    return study.get_trials(deepcopy=False)


def loop_seconds(trials) -> float:
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds()


def cut_at(trials, seconds: float):
    """The trials complete within ``seconds`` of the study's first start."""
    start = min(t.datetime_start for t in trials if t.datetime_start)
    return [t for t in trials if t.datetime_complete and (t.datetime_complete - start).total_seconds() <= seconds]


def front_of(trials):
    return build_report("", "", "", list(trials), {})


def cmd_fronts(args) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    import os

    os.chdir(ROOT)
    early_stops = {"off": [False], "on": [True], "both": [False, True]}[args.early_stop]
    settings, prefix = study_settings(args.settings, args.set)
    results = {}
    rows = []
    for sampler in args.samplers.split(","):
        for seed in map(int, args.seeds.split(",")):
            for early in early_stops:
                label = sampler.replace(":", "-").replace("=", "")
                name = f"{prefix}{label}-s{seed}-{'es' if early else 'full'}{'' if args.baselines else '-nob'}"
                if args.only_existing and not (WORK / f"{name}.db").exists():
                    continue
                # Existing studies are read as they are: resuming one would start a search (and a report).
                trials = _trials_of(name) if args.only_existing else run_study(name, sampler, seed, args.budget, early,
                                                                              args.baselines, settings)
                report = front_of(trials)
                feasible = [p for p in report.points if p.feasible]
                hv = hypervolume(normalised(counted(trials)))
                missed = [p.baseline for p in report.baselines if not p.on_front and dominated_by(p, report.front) is None]
                entry = {
                    "sampler": label, "seed": seed, "early_stop": early, "hypervolume": round(hv, 5),
                    "complete": len(counted(trials)), "stopped": report.n_stopped, "front": len(report.front),
                    "loop_s": round(loop_seconds(trials), 1), "baselines_not_dominated": missed,
                    "feasible": len(feasible),
                }
                if not early:
                    stops = early_stop.replay(trials, early_stop.curve_fractions(StudyConfig().epochs))
                    entry["replay_would_stop"] = len(stops)
                    entry["replay_front_lost"] = sorted(p.number for p in report.front if p.number in stops)
                    entry["replay_train_saved_s"] = round(sum(_saved(trials, n, s) for n, s in stops.items()), 1)
                results[name] = entry
                rows.append([name, f"{hv:.4f}", entry["complete"], entry["stopped"], entry["front"], entry["loop_s"],
                             ",".join(missed) or "-", entry.get("replay_front_lost", "-"), entry.get("replay_would_stop", "-")])
    print_table(f"Fronts on {settings.get('dataset', 'digits')} (hypervolume vs reference error 1, 1 ms, 1024 KB)",
                ["study", "HV", "complete", "stopped", "front", "loop s", "baselines not dominated",
                 "replay: front lost", "replay: stopped"], rows)
    union = _union_scaling(results)
    for name, r in results.items():
        r["hypervolume_union"] = round(hypervolume(union.apply(objective_points(_trials_of(name)))), 5)
    summary = _compare(results)
    print_table("Hypervolume, objectives scaled over the union of all these studies' fronts (reference 1.1)",
                ["study", "HV (union scaling)", "HV (fixed reference)"],
                [[n, r["hypervolume_union"], r["hypervolume"]] for n, r in results.items()])
    print_json({"reference": REFERENCE, "studies": results, "summary": summary})


def study_settings(toml: str | None, changes: str | None) -> tuple[dict, str]:
    """The settings every study of ``fronts`` runs with, and the prefix of their names:
    digits' defaults, or ``studies/<toml>.toml``'s (``cifar10``), with ``changes``
    (``train_subset=5000,epochs=0.5``) on top."""
    settings = load_toml(toml) if toml else {}
    if toml and not settings:
        raise SystemExit(f"bench/search.py: --settings {toml}: no studies/{toml}.toml")
    changed = dict(item.split("=") for item in changes.split(",")) if changes else {}
    for key, value in changed.items():
        settings[key] = float(value) if "." in value else int(value) if value.isdigit() else value
    prefix = "".join(f"{part}-" for part in [toml, *(f"{k}{v}" for k, v in changed.items())] if part)
    return settings, prefix


def _trials_of(name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{WORK}/{name}.db").get_trials(deepcopy=False)


def _union_scaling(results: dict) -> Scaling:
    """One scaling for all compared studies (``search.report.hypervolume``): the fixed
    reference above leaves every digits front near 0.9, where no sampler can look 15% better."""
    return Scaling.of([objective_points(_trials_of(n)) for n in results])


def _saved(trials, number: int, stop) -> float:
    """Training seconds the rule would have saved on trial ``number``: the rest of its
    proxy training after the stop, and all its fine-tune."""
    t = next(t for t in trials if t.number == number)
    ua = t.user_attrs
    train = ua.get(attrs.SECONDS_PREFIX + "train", 0.0)
    return train * (1 - stop.fraction) + ua.get(attrs.FINETUNE_SECONDS, 0.0)


def _compare(results: dict) -> dict:
    summary = {}
    by = {}
    for r in results.values():
        by.setdefault((r["sampler"], r["early_stop"]), []).append(r["hypervolume"])
    by_union = {}
    for r in results.values():
        by_union.setdefault((r["sampler"], r["early_stop"]), []).append(r["hypervolume_union"])
    for (sampler, early), hvs in sorted(by.items()):
        # Against random sampling with the same early-stop setting.
        random_fixed, random_union = by.get(("random", early)), by_union.get(("random", early))
        line = {"median_hv": statistics.median(hvs), "runs": len(hvs)}
        if random_fixed:
            line["vs_random_median"] = round(statistics.median(hvs) / statistics.median(random_fixed), 4)
        if random_union:
            union = by_union[(sampler, early)]
            line["union_median_hv"] = statistics.median(union)
            line["union_vs_random_median"] = round(statistics.median(union) / statistics.median(random_union), 4)
        summary[f"{sampler}{'-es' if early else ''}"] = line
    # Early stopping at the same compute: the study without it, cut at the wall time of the one with it.
    for name, r in results.items():
        if not r["early_stop"]:
            continue
        twin = name.replace("-es", "-full")
        if twin not in results:
            continue
        full = optuna.load_study(study_name=twin, storage=f"sqlite:///{WORK}/{twin}.db").get_trials(deepcopy=False)
        cut = counted(cut_at(full, r["loop_s"]))
        summary[f"{name} vs {twin} at {r['loop_s']} s"] = {
            "complete_with_es": r["complete"], "complete_without": len(cut),
            "hv_with_es": r["hypervolume"], "hv_without": round(hypervolume(normalised(cut)), 5),
        }
    return summary


class FakeObjective:
    """The compact space's parameters, values a cheap deterministic function of them."""

    def __init__(self):
        self.space, self.target = get_space("compact"), get_target("host")

    def sample(self, trial):
        arch = sample_arch(trial, self.space, 1, 8, 10)
        comp = sample_compression(trial, self.target.quant_modes, self.target.channel_rounds, self.target.prune_ratios)
        trial.set_user_attr(attrs.ARCH_SAMPLED, str(arch))
        trial.set_user_attr(attrs.COMPRESSION, str(comp))
        return arch, comp

    def run(self, trial, candidate):
        arch, comp = candidate
        width = sum(b.out_chs * (b.expand_chs or 1) for b in arch.blocks)
        accuracy = 1 - 1 / (1 + width / 4000) * (1 + comp.prune_ratio / 2)
        latency = width / 20000 * (0.5 if comp.quant.startswith("int8") else 1.0)
        return accuracy, latency, width / 100 * (0.25 if comp.quant.startswith("int8") else 1.0)

    def repeat(self, trial, original):
        trial.set_user_attr(attrs.REPEAT_OF, original.number)
        return original.values


class Timing(SearchProgress):
    def __init__(self):
        self.stamps: list[float] = []

    def trial_finished(self, trial, n_complete):
        self.stamps.append(time.perf_counter())


def cmd_sampler_overhead(args) -> None:
    import tempfile

    rows, result = [], {}
    for sampler in args.samplers.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/overhead.db"  # the start lock's file, whatever holds the study
            optuna.logging.set_verbosity(optuna.logging.ERROR)
            storage = open_storage(url) if args.storage == "sqlite" else optuna.storages.InMemoryStorage()
            study = optuna.create_study(study_name="overhead", storage=storage, directions=list(attrs.DIRECTIONS))
            lock = TrialStartLock(url, "overhead")
            timing = Timing()
            start = time.perf_counter()
            loop.run_trials(study, StudyConfig(sampler=sampler), args.trials, FakeObjective(), lock, timing)
            lock.close()
            stamps = [start, *timing.stamps]
            per_trial = np.diff(stamps)
            windows = {}
            for lo in (0, args.trials // 2, args.trials - 100):
                windows[f"{lo}-{lo + 100}"] = round(float(np.mean(per_trial[lo : lo + 100])), 4)
            n_all = len(study.get_trials(deepcopy=False))
            result[sampler] = {"windows_s_per_trial": windows, "trials_in_study": n_all,
                               "total_s": round(stamps[-1] - start, 1)}
            rows.append([sampler, *windows.values(), n_all, round(stamps[-1] - start, 1)])
            log(f"{sampler}: {result[sampler]}")
    windows = list(result[next(iter(result))]["windows_s_per_trial"])
    print_table(f"Sampler overhead, seconds a trial (fake objective, {args.trials} complete trials, {args.storage} storage)",
                ["sampler", *windows, "trials incl. repeats", "total s"], rows)
    print_json(result)


def cmd_trial_overhead(args) -> None:
    url = args.storage or f"sqlite:///{ROOT}/studies/{args.study}/study.db"
    trials = optuna.load_study(study_name=args.study, storage=url).get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.datetime_complete
            and attrs.REPEAT_OF not in t.user_attrs]
    rows, result = [], {}
    for label, group in (("search trials", [t for t in done if attrs.BASELINE not in t.user_attrs]),
                         ("baselines", [t for t in done if attrs.BASELINE in t.user_attrs]), ("all", done)):
        if not group:
            continue
        wall = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in group)
        training = sum(_training_seconds(t) for t in group)
        stages = {}
        for t in group:
            for k, v in t.user_attrs.items():
                if k.startswith(attrs.SECONDS_PREFIX):
                    stages[k[len(attrs.SECONDS_PREFIX):]] = stages.get(k[len(attrs.SECONDS_PREFIX):], 0.0) + v
        stages["train"] = stages.get("train", 0.0) - sum(t.user_attrs.get(attrs.CURVE_SECONDS, 0.0) for t in group)
        stages["prune"] = stages.get("prune", 0.0) - sum(t.user_attrs.get(attrs.FINETUNE_SECONDS, 0.0) for t in group)
        stages["learning curve"] = sum(t.user_attrs.get(attrs.CURVE_SECONDS, 0.0) for t in group)
        stages["outside stages"] = wall - sum(stages.values()) - sum(t.user_attrs.get(attrs.FINETUNE_SECONDS, 0.0) for t in group)
        overhead = {k: v for k, v in stages.items() if k != "train"}
        result[label] = {"trials": len(group), "wall_s": round(wall, 1), "training_s": round(training, 1),
                         "overhead_share": round(1 - training / wall, 4),
                         "overhead_s_by_part": {k: round(v, 1) for k, v in sorted(overhead.items(), key=lambda kv: -kv[1])}}
        rows.append([label, len(group), f"{wall:.1f}", f"{training:.1f}", f"{1 - training / wall:.1%}",
                     ", ".join(f"{k} {v:.1f}" for k, v in sorted(overhead.items(), key=lambda kv: -kv[1])[:5])])
    print_table(f"Trial overhead of study {args.study} (everything but training)",
                ["trials", "n", "wall s", "training s", "overhead", "largest parts (s)"], rows)
    print_json(result)


def cmd_margins(args) -> None:
    """The early-stop rule replayed over every finished study without it in studies/bench-search/
    (or over ``args.study``'s complete trials), once per margin: trials it would stop, front members among them, training it would save."""
    if args.study:
        url = args.storage or f"sqlite:///{ROOT}/studies/{args.study}/study.db"
        studies = {args.study: optuna.load_study(study_name=args.study, storage=url).get_trials(deepcopy=False)}
    else:
        studies = {db.stem: _trials_of(db.stem) for db in sorted(WORK.glob("*-full.db"))}
    fractions = early_stop.curve_fractions(StudyConfig().epochs)
    rows, result = [], {}
    for margin in map(float, args.margins.split(",")):
        early_stop.MARGIN = margin  # the rule reads it at each check
        stopped = lost = 0
        saved = 0.0
        for trials in studies.values():
            stops = early_stop.replay(trials, fractions)
            front = {p.number for p in front_of(trials).front}
            stopped, lost = stopped + len(stops), lost + len(front & set(stops))
            saved += sum(_saved(trials, n, s) for n, s in stops.items())
        result[margin] = {"stopped": stopped, "front_lost": lost, "train_saved_s": round(saved, 1)}
        rows.append([margin, stopped, lost, f"{saved:.0f}"])
    print_table(f"Early stop replayed over {len(studies)} studies", ["margin", "stopped", "front members lost",
                                                                   "training saved s"], rows)
    print_json(result)


def stored_files(args) -> tuple[list, dict[int, bytes], Target]:
    """The trained trials of study ``args.study`` (complete, not repeats, their deployed file
    in the study's store), their files by trial number, and the study's target."""
    url = args.storage or f"sqlite:///{ROOT}/studies/{args.study}/study.db"
    trials = [t for t in counted(optuna.load_study(study_name=args.study, storage=url).get_trials(deepcopy=False))
              if attrs.ONNX_SHA256 in t.user_attrs]
    store = Store(url)
    models = {t.number: store.get_model(t.user_attrs[attrs.ONNX_SHA256]) for t in trials}
    return trials, models, get_target(trials[0].user_attrs.get(attrs.TARGET, "host"))


def cmd_latency_drift(args) -> None:
    trials, models, target = stored_files(args)
    measurer = LocalMeasurer(target)
    log(f"re-timing {len(models)} files, {args.rounds} interleaved rounds")
    retimed = retime(models, measurer, rounds=args.rounds)
    ratios = {t.number: t.user_attrs[attrs.LATENCY_P50] / retimed[t.number].p50_ms for t in trials}
    rows = [[t.number, t.user_attrs.get(attrs.BASELINE, ""), t.user_attrs[attrs.QUANT],
             f"{t.user_attrs[attrs.LATENCY_P50]:.4f}", f"{retimed[t.number].p50_ms:.4f}", f"{ratios[t.number]:.2f}"]
            for t in trials]
    print_table(f"Search-time p50 against re-timed p50, study {args.study}",
                ["trial", "baseline", "quant", "search ms", "re-timed ms", "ratio"], rows)
    values = sorted(ratios.values())
    summary = {"trials": len(values), "median": round(statistics.median(values), 3),
               "p90": round(float(np.percentile(values, 90)), 3), "max": round(values[-1], 3),
               "over_1.25": sum(v > 1.25 for v in values), "under_0.8": sum(v < 0.8 for v in values)}
    print(f"ratio search / re-timed: {summary}")
    print_json({"study": args.study, "ratios": ratios, "summary": summary})


def timing_plan(spec: str) -> tuple[dict, dict]:
    """``default``, or what to change: TimingPlan's fields and the target's ``threads``
    (``warmup_seconds=0.05:max_runs=1000``, ``threads=1``): (plan fields, target fields)."""
    if spec == "default":
        return {}, {}
    changes = {k: float(v) if "." in v else int(v) for k, v in (item.split("=") for item in spec.split(":"))}
    target = {k: changes.pop(k) for k in ("threads",) if k in changes}
    return changes, target


def cmd_plans(args) -> None:
    _, models, target = stored_files(args)
    specs = args.plans.split(",")
    plans, measurers = {}, {}
    for spec in specs:
        plan_fields, target_fields = timing_plan(spec)
        plans[spec] = replace(TimingPlan(), **plan_fields)
        measurers[spec] = LocalMeasurer(replace(target, **target_fields))
    log(f"timing {len(models)} files by {len(plans)} plans, {args.rounds} rounds")
    p50 = {spec: {n: [] for n in models} for spec in specs}
    seconds = {spec: 0.0 for spec in specs}
    for round_ in range(args.rounds):
        for i, (number, onnx) in enumerate(models.items()):
            k = (round_ + i) % len(specs)
            for spec in specs[k:] + specs[:k]:
                start = time.perf_counter()
                p50[spec][number].append(measurers[spec].measure(onnx, plans[spec]).stats.p50_ms)
                seconds[spec] += time.perf_counter() - start
    numbers = list(models)
    reference = [statistics.median(p50[specs[0]][n]) for n in numbers]
    rows, result = [], {}
    for spec in specs:
        medians = [statistics.median(p50[spec][n]) for n in numbers]
        ratios = [m / r for m, r in zip(medians, reference)]
        cvs = [statistics.stdev(v) / statistics.fmean(v) for v in p50[spec].values()]
        taus = [kendalltau([p50[spec][n][r] for n in numbers], reference).statistic for r in range(args.rounds)]
        own_taus = [kendalltau([p50[spec][n][r] for n in numbers], medians).statistic for r in range(args.rounds)]
        result[spec] = {"seconds_a_measurement": round(seconds[spec] / (args.rounds * len(numbers)), 4),
                        "p50_vs_first_median": round(statistics.median(ratios), 4),
                        "p50_vs_first_range": [round(min(ratios), 3), round(max(ratios), 3)],
                        "cv_median": round(statistics.median(cvs), 4), "cv_p90": round(float(np.percentile(cvs, 90)), 4),
                        "tau_median": round(statistics.median(taus), 4), "tau_min": round(min(taus), 4),
                        "own_tau_median": round(statistics.median(own_taus), 4)}
        r = result[spec]
        rows.append([spec, f"{r['seconds_a_measurement']:.3f}", f"{r['p50_vs_first_median']:.3f}",
                     f"{r['p50_vs_first_range'][0]:.2f}-{r['p50_vs_first_range'][1]:.2f}",
                     f"{100 * r['cv_median']:.1f}%", f"{100 * r['cv_p90']:.1f}%", f"{r['tau_median']:.3f}", f"{r['tau_min']:.3f}",
                     f"{r['own_tau_median']:.3f}"])
    print_table(f"Timing plans on the {len(models)} files of study {args.study}, {args.rounds} rounds",
                ["plan", "s a measurement", f"p50 / {specs[0]}'s", "range over files", "CV median", "CV p90",
                 f"tau vs {specs[0]} (median)", "tau (worst round)", "tau vs its own medians"], rows)
    print_json({"study": args.study, "rounds": args.rounds, "plans": result})


def _training_seconds(t) -> float:
    ua = t.user_attrs
    return ua.get(attrs.SECONDS_PREFIX + "train", 0.0) - ua.get(attrs.CURVE_SECONDS, 0.0) + ua.get(attrs.FINETUNE_SECONDS, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fronts")
    f.add_argument("--samplers", default="tpe,nsga2,random",
                   help="comma-separated; a sampler may carry keyword arguments, e.g. tpe:n_startup_trials=8:gamma_fraction=0.25")
    f.add_argument("--seeds", default="0,1,2")
    f.add_argument("--budget", type=int, default=50)
    f.add_argument("--early-stop", choices=("off", "on", "both"), default="both")
    f.add_argument("--no-baselines", dest="baselines", action="store_false")
    f.add_argument("--only-existing", action="store_true", help="report only the studies already in studies/bench-search/")
    f.add_argument("--settings", metavar="STUDY",
                   help="run the studies with studies/STUDY.toml's settings (e.g. cifar10) instead of digits' defaults")
    f.add_argument("--set", metavar="KEY=VALUE,...", help="settings changed on top, e.g. train_subset=5000")
    o = sub.add_parser("sampler-overhead")
    o.add_argument("--trials", type=int, default=1000)
    o.add_argument("--samplers", default="nsga2,tpe")
    o.add_argument("--storage", choices=("memory", "sqlite"), default="memory",
                   help="memory: the samplers and the loop alone; sqlite: with the study's writes, as a search has them")
    t = sub.add_parser("trial-overhead")
    t.add_argument("--study", required=True)
    t.add_argument("--storage")
    m = sub.add_parser("margins")
    m.add_argument("--margins", default="0.01,0.02,0.03,0.05")
    m.add_argument("--study", help="replay over this study's complete trials instead (studies/NAME/study.db)")
    m.add_argument("--storage")
    d = sub.add_parser("latency-drift")
    d.add_argument("--study", required=True)
    d.add_argument("--storage")
    d.add_argument("--rounds", type=int, default=5)
    p = sub.add_parser("plans")
    p.add_argument("--study", required=True)
    p.add_argument("--storage")
    p.add_argument("--plans", default="default,threads=0",
                   help="comma-separated, the first the reference: 'default', or TimingPlan fields and the "
                        "target's threads (0: one per core), e.g. warmup_seconds=0.2:max_runs=2000")
    p.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    commands = {"fronts": cmd_fronts, "sampler-overhead": cmd_sampler_overhead, "trial-overhead": cmd_trial_overhead,
                "margins": cmd_margins, "latency-drift": cmd_latency_drift, "plans": cmd_plans}
    commands[args.command](args)


if __name__ == "__main__":
    main()
