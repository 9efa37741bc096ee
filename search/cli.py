"""What each command of ``nas.py`` does, and how progress looks in a terminal."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from .data import DatasetError
from .progress import SearchProgress, StepRun, TrialClock, duration_text, step_text, trial_text
from .study import attrs
from .study.config import STUDIES_DIR, ConfigError, config_keys, study_dir
from .study.storage import SearchError
from .targets import TargetError

USAGE_ERRORS = (ConfigError, DatasetError, TargetError)
RUN_ERRORS = (SearchError,)


REDRAW_SECONDS = 0.25  # steps() comes after every batch, hundreds a second on a GPU: redraw at most 4 times a second
# Work outside trials that nobody announced with stage(None, ...) is the teacher's:
# `nas.py teacher` hands the teacher module progress.steps alone.
UNANNOUNCED_WORK = "teacher"
# What a pass over images is, under a label whose work also trains: the teacher reports its
# training and then its validation pass through one callback.
PASS_NAMES = {"teacher": "validation"}
WORK_BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}"


class TerminalProgress(SearchProgress):
    """A tqdm bar of complete trials, with the running trial's stage, its epoch and batch,
    and when the trial should end; work outside trials (the teacher's) on a bar of its own,
    gone from the terminal once the work is done."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar = None  # the search's: complete trials of the budget
        self.work_bar = None  # the running work outside trials
        self.trial = None
        self.stage_name = UNANNOUNCED_WORK
        self.clock = TrialClock()
        self._trial_stages: list[str] = []  # those the running trial entered, in order
        self._stage_started = 0.0
        self._run: StepRun | None = None
        self._drawn_at = -math.inf

    def message(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stderr)

    def start(self, n_complete: int, budget: int, label: str = "search") -> None:
        self._close_work_bar()
        self._close_bar()
        self.bar = self._tqdm(total=budget, initial=n_complete, unit="trial", desc=label, file=sys.stderr, dynamic_ncols=True)

    def advance(self, n_done: int) -> None:
        if self.bar is not None:
            self.bar.n = n_done
            self.bar.set_postfix_str("")

    def stage(self, trial_number: int | None, stage: str) -> None:
        self._close_work_bar()
        if trial_number != self.trial:
            self._trial_stages = []
        self.trial, self.stage_name, self._run = trial_number, stage, None
        self._stage_started = time.monotonic()
        if trial_number is not None:
            self._trial_stages.append(stage)
            self._draw_trial(self._stage_started)

    def steps(self, done: int, total: int, per_epoch: int) -> None:
        now = time.monotonic()
        if self._run is not None and self._run.continues(done, total, per_epoch):
            self._run.advance(done, now)
        else:
            self._run = StepRun(done, total, per_epoch, now)
            if self.trial is None:
                self._open_work_bar()
        if self.trial is None and self._run.finished:
            self._close_work_bar()  # before whatever prints next: no half-drawn bar left behind
        elif now - self._drawn_at < REDRAW_SECONDS:
            return
        elif self.trial is None:
            self._draw_work(now)
        else:
            self._draw_trial(now)

    def trial_finished(self, trial, n_complete: int) -> None:
        from optuna.trial import TrialState

        ua = trial.user_attrs
        self.clock.learn(self._trial_stages if trial.number == self.trial else [], ua)
        self._trial_stages = []
        if attrs.REPEAT_OF in ua:
            self.message(f"trial {trial.number} is the candidate of trial {ua[attrs.REPEAT_OF]}: not trained again")
        elif trial.state == TrialState.FAIL:
            where = f" in {ua[attrs.FAILED_STAGE]}" if attrs.FAILED_STAGE in ua else ""
            self.message(f"trial {trial.number} failed{where}: {ua.get(attrs.FAIL_REASON, 'no reason recorded')}")
        elif attrs.EARLY_STOPPED in ua:
            self.message(f"trial {trial.number} {ua[attrs.EARLY_STOPPED]['reason']}")
        elif trial.state == TrialState.PRUNED:
            self.message(f"trial {trial.number} rejected {ua.get(attrs.REJECTED, '')}")
        if self.bar is not None:
            self.bar.n = n_complete
            self.bar.set_postfix_str("")  # the trial's stage and estimate no longer hold

    def close(self) -> None:
        self._close_work_bar()
        self._close_bar()
        self.trial, self.stage_name, self._run = None, UNANNOUNCED_WORK, None

    def _draw_trial(self, now: float) -> None:
        if self.bar is None:
            return
        self._drawn_at = now
        run = self._run
        # Within a trial only training runs report steps (train, and prune's fine-tunes).
        steps = step_text(run.done, run.total, run.per_epoch) if run else None
        estimate = self.clock.remaining(self.stage_name, now - self._stage_started, run.seconds_left() if run else None)
        self.bar.set_postfix_str(trial_text(self.trial, self.stage_name, steps, estimate))

    def _work_text(self) -> str:
        run, label = self._run, self.stage_name
        if run.total > run.per_epoch:
            return f"{label}: train {step_text(run.done, run.total, run.per_epoch)}"
        name = PASS_NAMES.get(label)
        return f"{label}: {name + ' ' if name else ''}{step_text(run.done, run.total, run.per_epoch, epochs=False)}"

    def _open_work_bar(self) -> None:
        self._close_work_bar()
        self.work_bar = self._tqdm(
            total=self._run.total, initial=self._run.done, desc=self._work_text(), leave=False, file=sys.stderr,
            dynamic_ncols=True, bar_format=WORK_BAR_FORMAT,
        )

    def _draw_work(self, now: float) -> None:
        self._drawn_at = now
        self.work_bar.n = self._run.done
        self.work_bar.set_description_str(self._work_text())  # refreshes: tqdm's ETA from n and its clock

    def _close_work_bar(self) -> None:
        if self.work_bar is not None:
            self.work_bar.close()
            self.work_bar = None

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _print_outputs(report, out_dir: Path) -> None:
    from .report.decision import decide, describe
    from .report.front import format_table

    print(format_table(report))
    print("\n" + "\n".join(describe(decide(report))))
    print(f"\nwrote the report {out_dir}/report/index.html (with its plots and pareto.csv) "
          f"and {len(report.front)} ONNX files in {out_dir}/pareto/")


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
        train_device=args.train_device,
        skip_bad_images=args.skip_bad_images,
    )
    report = run_search(request, TerminalProgress())
    _print_outputs(report, study_dir(report.study))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .runner import ReportRequest, report_study

    for flag, value in (("--max-latency-ms", args.max_latency_ms), ("--max-size-kb", args.max_size_kb)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be > 0, got {value:g}")
    request = ReportRequest(
        study=args.study, storage=args.storage, data_dir=args.data_dir, cache_dir=args.cache_dir,
        skip_bad_images=args.skip_bad_images, max_latency_ms=args.max_latency_ms, max_size_kb=args.max_size_kb,
        device=args.device, token=args.token, compare=tuple(args.compare),
    )
    report = report_study(request, TerminalProgress())
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
            f"{c['STOPPED']} stopped early, {c['REPEAT']} repeats, {c['RUNNING']} running, {c['WAITING']} waiting  "
            f"[{s.url}]\n"
            f"  config {s.config}"
        )
        print("\n".join(format_workers(s.workers)))
        _print_boards(s, args.token)
    return 0


def format_workers(workers) -> list[str]:
    """``nas.py status``'s table of a study's workers (``study.workers.WorkerStatus``)."""
    if not workers:
        return ["  no worker has started a trial"]
    rows = [
        (f"{w.host} pid {w.pid}", str(w.complete), str(w.failed), str(w.set_aside),
         ", ".join(f"trial {number} for {duration_text(seconds)}" for number, seconds in w.running) or "-",
         "-" if w.last_seen is None else f"{duration_text(w.last_seen)} ago")
        for w in workers
    ]
    return aligned([("worker", "complete", "failed", "set aside", "running", "last seen"), *rows], right=(1, 2, 3))


def aligned(rows: list[tuple[str, ...]], right: tuple[int, ...] = ()) -> list[str]:
    """Rows as lines of columns, indented under their study; the columns in ``right`` right-aligned (counts)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


def _print_boards(summary, token: str | None) -> None:
    """Per board agent that measured for the study: models measured, and its queue now."""
    from .board.client import AgentError, agent_info
    from .study.storage import models_measured_by_board

    for device, measured in models_measured_by_board(summary.url, summary.name).items():
        if not token:
            now = "queue unknown: pass --token (or $EDGENAS_TOKEN) to ask it"
        else:
            try:
                now = f"queue now {agent_info(device, token)['queue']}"
            except AgentError as e:
                now = "not reachable" if e.status is None else f"answered {e.status}: {e}"
        print(f"  board {device}: {measured} model{'' if measured == 1 else 's'} measured; {now}")


def cmd_export(args: argparse.Namespace) -> int:
    from .report.card import MODEL_FILE, SNIPPET_FILE, check_out_dir, model_card, write_export
    from .study.storage import deployed_model

    out = Path(args.out or f"{args.study}-trial-{args.trial}{'-final' if args.final else ''}")
    check_out_dir(out, args.force)
    deployed = deployed_model(args.study, args.storage, args.trial, final=args.final)
    card = model_card(args.study, args.trial, deployed, final=args.final)
    write_export(out, deployed, card, args.force)
    acc = card["accuracy"]
    test = "not measured" if acc["test"] is None else f"{acc['test']:.4f}"
    print(f"wrote {out}/: {MODEL_FILE} ({card['size_kb']} KB), card.json, README.md, {SNIPPET_FILE}\n"
          f"  {card['architecture']} [{card['compression']}]\n"
          f"  accuracy: validation {acc['validation']:.4f}, test {test}; p50 {card['latency_ms']['p50']:.3f} ms")
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    from .finalize import FinalizeRequest, run_finalize
    from .report.front import format_finalized

    request = FinalizeRequest(
        study=args.study,
        trials=None if args.front else args.trials,
        epochs=args.epochs,
        storage=args.storage,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        device=args.device,
        token=args.token,
        train_device=args.train_device,
        skip_bad_images=args.skip_bad_images,
    )
    result = run_finalize(request, TerminalProgress())
    print(f"finalized trials of study {result.study}:")
    print(format_finalized(result.points))
    if result.failed:
        print(f"could not finalize trials {', '.join(map(str, result.failed))}: see the messages above", file=sys.stderr)
        return 1
    print(f"write a file out with: python nas.py export --study {result.study} --final --trial N")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from .data import check_dataset_name, load_dataset
    from .stages.teacher import NearChance, import_teacher, load_or_train_teacher, teacher_path

    progress = TerminalProgress()
    if args.study is not None:
        return _study_teacher(args, progress)
    if args.storage is not None:
        raise ConfigError("--storage names where a study lives: give the --study to install the teacher into")
    dataset = args.dataset or "digits"
    check_dataset_name(dataset, args.data_dir)
    data = load_dataset(dataset, args.data_dir, args.cache_dir, args.resolution or 0, args.skip_bad_images)
    if args.weights:
        if not Path(args.weights).is_file():
            raise ConfigError(f"--weights {args.weights} is not a file")
        try:
            teacher = import_teacher(data, args.weights, args.cache_dir, on_progress=progress.steps)
        except NearChance as e:
            raise ConfigError(f"{e}; nothing was installed") from None
        except ValueError as e:  # the file does not fit the teacher
            raise ConfigError(str(e)) from None
    else:
        if teacher_path(data, args.cache_dir).exists():
            print(f"teacher for {data.name} already cached at {teacher_path(data, args.cache_dir)}")
        try:
            teacher = load_or_train_teacher(data, args.cache_dir, args.epochs, on_progress=progress.steps)
        except NearChance as e:
            raise SearchError(f"{e}; nothing was kept: train for longer (--epochs N)") from None
    print(f"teacher for {data.name}: {teacher.source}, validation accuracy {teacher.val_accuracy:.4f}, at {teacher.path}")
    return 0


def _read_weights(weights: str, data):
    from .stages.teacher import read_weights

    if not Path(weights).is_file():
        raise ConfigError(f"--weights {weights} is not a file")
    try:
        return read_weights(data, weights)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _study_teacher(args: argparse.Namespace, progress: TerminalProgress) -> int:
    """``nas.py teacher --study S``: install ``--weights`` as the study's teacher, or train it
    into the study; the data checked against the study's first, and nothing written if refused."""
    from .data import check_dataset_name, load_dataset
    from .runner import check_same_data
    from .shared_teacher import check_installable, describe, install_teacher, study_teacher
    from .study.storage import Store, open_storage, plan_study
    from .study.teacher_store import READY, TeacherStore

    explicit = {k: v for k, v in (("dataset", args.dataset), ("resolution", args.resolution)) if v is not None}
    plan = plan_study(args.study, args.storage, explicit)
    if plan.config.model:
        raise ConfigError(
            f"study {plan.name} compresses your own network ({plan.config.model}): its teacher is that network, "
            "with the weights the study was created with; there is no other teacher to install or train"
        )
    check_dataset_name(plan.config.dataset, args.data_dir)
    data = load_dataset(plan.config.dataset, args.data_dir, args.cache_dir, plan.config.resolution, args.skip_bad_images)
    check_same_data(plan.name, plan.data, data)
    model = _read_weights(args.weights, data) if args.weights else None
    val_accuracy = check_installable(model, data, args.weights, progress) if model is not None else None
    open_storage(plan.url).engine.dispose()  # the study's database, made where it is new
    teachers = TeacherStore(Store(plan.url))
    record = teachers.get(plan.name)
    if model is None and args.epochs is not None and record is not None and record.state == READY:
        raise ConfigError(
            f"study {plan.name} has its teacher already ({record.source}): its trials must share one; "
            "train a new one for a new --study"
        )
    if model is not None:
        teacher = install_teacher(teachers, plan.name, data, args.cache_dir, model, args.weights, progress, val_accuracy)
    else:
        epochs = args.epochs or plan.config.teacher_epochs or None
        teacher = study_teacher(
            teachers, plan.name, data, args.cache_dir, epochs, plan.config.seed, progress, retrain=args.epochs is not None
        )
    progress.close()
    print(f"teacher of study {plan.name}: {describe(teacher)}")
    return 0
