"""What each command of ``nas.py`` does, and how progress looks in a terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data import DatasetError
from .progress import SearchProgress
from .study import attrs
from .study.config import STUDIES_DIR, ConfigError, config_keys, study_dir
from .study.storage import SearchError
from .targets import TargetError

USAGE_ERRORS = (ConfigError, DatasetError, TargetError)
RUN_ERRORS = (SearchError,)


class TerminalProgress(SearchProgress):
    """A tqdm bar of complete trials, with the current trial's stage beside it."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar = None
        self.trial = None
        self.stage_name = ""
        self._shown = -1

    def message(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stderr)

    def start(self, n_complete: int, budget: int) -> None:
        self._close_bar()
        self.bar = self._tqdm(total=budget, initial=n_complete, unit="trial", desc="search", file=sys.stderr, dynamic_ncols=True)

    def stage(self, trial_number: int, stage: str) -> None:
        self.trial, self.stage_name, self._shown = trial_number, stage, -1
        if self.bar is not None:
            self.bar.set_postfix_str(f"trial {trial_number}: {stage}")

    def fraction(self, done: float) -> None:
        percent = int(done * 100)
        if percent // 5 == self._shown // 5:
            return
        self._shown = percent
        if self.bar is None:  # before the trial loop: the teacher is training
            self.bar = self._tqdm(total=100, desc="teacher", unit="%", file=sys.stderr, dynamic_ncols=True)
        if self.bar.desc == "teacher":
            self.bar.n = percent
            self.bar.refresh()
        else:
            self.bar.set_postfix_str(f"trial {self.trial}: {self.stage_name} {percent}%", refresh=False)

    def trial_finished(self, trial, n_complete: int) -> None:
        from optuna.trial import TrialState

        ua = trial.user_attrs
        if attrs.REPEAT_OF in ua:
            self.message(f"trial {trial.number} is the candidate of trial {ua[attrs.REPEAT_OF]}: not trained again")
        elif trial.state == TrialState.FAIL:
            where = f" in {ua[attrs.FAILED_STAGE]}" if attrs.FAILED_STAGE in ua else ""
            self.message(f"trial {trial.number} failed{where}: {ua.get(attrs.FAIL_REASON, 'no reason recorded')}")
        elif trial.state == TrialState.PRUNED:
            self.message(f"trial {trial.number} rejected {ua.get(attrs.REJECTED, '')}")
        if self.bar is not None:
            self.bar.n = n_complete
            self.bar.refresh()

    def close(self) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _print_outputs(report, out_dir: Path) -> None:
    from .report.front import format_table

    print(format_table(report))
    print(f"\nwrote {out_dir}/pareto.png, {out_dir}/pareto.csv and {len(report.front)} ONNX files in {out_dir}/pareto/")


def cmd_search(args: argparse.Namespace) -> int:
    import optuna

    from .runner import SearchRequest, run_search

    if not args.verbose:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported by our own line
    explicit = {k: v for k, v in vars(args).items() if k in config_keys() and v is not None}
    request = SearchRequest(
        budget=args.budget,
        explicit=explicit,
        study=args.study,
        storage=args.storage,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        device=args.device,
        token=args.token,
    )
    report = run_search(request, TerminalProgress())
    _print_outputs(report, study_dir(report.study))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .runner import report_study

    report = report_study(args.study, args.storage, args.data_dir, args.cache_dir)
    _print_outputs(report, study_dir(report.study))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .study.storage import study_summaries

    summaries = study_summaries(args.storage, args.study, STUDIES_DIR)
    if not summaries:
        print("no studies found; start one with: python nas.py --budget 50")
    for s in summaries:
        c = s.counts
        print(
            f"{s.name}: {c['COMPLETE']} complete, {c['FAIL']} failed, {c['PRUNED']} rejected, "
            f"{c['REPEAT']} repeats, {c['RUNNING']} running  [{s.url}]\n"
            f"  config {s.config}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .study.storage import deployed_model

    data, ua = deployed_model(args.study, args.storage, args.trial)
    out = Path(args.out or f"trial-{args.trial}.onnx")
    out.write_bytes(data)
    print(f"wrote {out} ({len(data) / 1024:.1f} KB): {ua.get(attrs.ARCH)} [{ua.get(attrs.COMPRESSION)}], "
          f"val accuracy {ua.get(attrs.ACCURACY):.4f}, p50 {ua.get(attrs.LATENCY_P50):.3f} ms")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .stages.teacher import import_teacher, load_or_train_teacher, teacher_path

    data = load_dataset(args.dataset, args.data_dir, args.cache_dir)
    if args.weights:
        if not Path(args.weights).is_file():
            raise ConfigError(f"--weights {args.weights} is not a file")
        try:
            teacher = import_teacher(data, args.weights, args.cache_dir)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    else:
        if teacher_path(data, args.cache_dir).exists():
            print(f"teacher for {data.name} already cached at {teacher_path(data, args.cache_dir)}")
        teacher = load_or_train_teacher(data, args.cache_dir, args.epochs, on_progress=TerminalProgress().fraction)
    print(f"teacher for {data.name}: {teacher.source}, validation accuracy {teacher.val_accuracy:.4f}, at {teacher.path}")
    return 0
