"""End to end: the real command, real Optuna storage, real ONNX Runtime."""

import csv
import datetime
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest import FAST, ROOT, run_nas
from search.study import attrs
from search.stages.evaluate import onnx_accuracy
from search.study.storage import GRACE_SECONDS, Store
from search.study.teacher_store import TeacherStore

REQUIRED_ATTRS = [
    attrs.ARCH, attrs.PARAMS, attrs.MACS, attrs.SIZE_BYTES, attrs.LATENCY_P50, attrs.LATENCY_P90,
    attrs.ACCURACY, attrs.TARGET, attrs.MEASURED_ON, attrs.PRUNE_RATIO,
    attrs.CHANNEL_ROUND, attrs.QUANT, attrs.CALIB_METHOD, attrs.PARAMS_BEFORE_PRUNE,
    attrs.ACCURACY_BEFORE_QUANT, attrs.SIZE_BYTES_FP32, attrs.TEACHER_SHA256,
] + [attrs.SECONDS_PREFIX + s for s in ("cost", "train", "prune", "export", "quantize", "evaluate", "measure")]


def _study(cwd, name):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{cwd}/studies/{name}/study.db"
    return optuna.load_study(study_name=name, storage=url), url


def _complete(study):
    return len(study.get_trials(states=(TrialState.COMPLETE,)))


def test_search_end_to_end(tmp_path, cache_dir, digits):
    result = run_nas(["--budget", "3", "--study", "e2e", "--cache-dir", str(cache_dir), *FAST], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Pareto front of study e2e" in result.stdout
    # The study's teacher, made from this machine's, and its accuracy beside the front.
    teacher_line = next(line for line in result.stdout.splitlines() if line.startswith("teacher (ResNet-18"))
    assert re.fullmatch(r"teacher \(ResNet-18, every trial distilled from it\): validation accuracy 0\.9\d+, p50 .*", teacher_line)

    out = tmp_path / "studies" / "e2e"
    assert (out / "report" / "pareto.png").stat().st_size > 10_000
    assert "<!DOCTYPE html>" in (out / "report" / "index.html").read_text()
    rows = list(csv.DictReader((out / "report" / "pareto.csv").open()))
    assert len(rows) == 3
    front = [r for r in rows if r["on_front"] == "True"]
    assert front and sorted(p.name for p in (out / "pareto").iterdir()) == sorted(
        f"trial-{int(r['number']):04d}.onnx" for r in front
    )
    assert all(r["test_accuracy"] for r in front)

    study, url = _study(tmp_path, "e2e")
    assert study.metric_names == list(attrs.METRIC_NAMES)
    store = Store(url)
    teacher = TeacherStore(store).get("e2e")
    assert {t.user_attrs[attrs.TEACHER_SHA256] for t in study.get_trials()} == {teacher.sha256}
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        ua = trial.user_attrs
        missing = [k for k in REQUIRED_ATTRS if k not in ua]
        assert not missing
        # The objective is the accuracy of the deployed file, run again here by ORT.
        model = store.get_model(ua[attrs.ONNX_SHA256])
        assert len(model) == ua[attrs.SIZE_BYTES]
        assert trial.values[0] == pytest.approx(onnx_accuracy(model, digits.val))
        assert trial.values[1] == ua[attrs.LATENCY_P50]
        assert trial.values[2] == pytest.approx(len(model) / 1024)
        assert ua[attrs.MEASURED_ON]["arch"] and ua[attrs.MEASURED_ON]["onnxruntime"]
        assert ua[attrs.MEASURED_ON]["emulated"] is False
    store.close()

    # Rerunning with the budget reached runs nothing more and rebuilds the outputs.
    again = run_nas(["--budget", "3", "--study", "e2e", "--cache-dir", str(cache_dir)], tmp_path)
    assert again.returncode == 0, again.stderr
    assert _complete(_study(tmp_path, "e2e")[0]) == 3


def _wait_for(predicate, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _running_trial_number(cwd, name):
    try:
        study, _ = _study(cwd, name)
    except Exception:
        return None
    running = study.get_trials(states=(TrialState.RUNNING,))
    return running[0].number if running else None


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "crash"])
def test_interrupted_study_resumes_to_exactly_the_budget(tmp_path, cache_dir, how):
    args = [sys.executable, str(ROOT / "nas.py"), "--budget", "5", "--study", "resume", "--cache-dir", str(cache_dir), *FAST]
    # A shell's background job (CI may be one) inherits SIGINT ignored, and Python then
    # installs no Ctrl-C handler: restore the default so the child sees a real Ctrl-C.
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Interrupt during the third trial (number 2).
        started = _wait_for(lambda: proc.poll() is not None or _running_trial_number(tmp_path, "resume") == 2)
        assert proc.poll() is None, f"nas.py exited with {proc.returncode} before trial 3:\n{proc.stderr.read()}"
        assert started, "trial 3 never started"
        proc.send_signal(how)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    study, _ = _study(tmp_path, "resume")
    assert _complete(study) == 2, proc.stderr.read()[-2000:]
    if how == signal.SIGINT:
        assert proc.returncode == 130
        assert study.get_trials()[2].state == TrialState.FAIL

    rerun_started = datetime.datetime.now()  # Optuna's trial datetimes are naive local times too
    result = run_nas(["--budget", "5", "--study", "resume", "--cache-dir", str(cache_dir)], tmp_path)
    assert result.returncode == 0, result.stderr
    study, _ = _study(tmp_path, "resume")
    assert _complete(study) == 5
    killed = study.get_trials()[2]
    assert killed.state == TrialState.FAIL
    if how == signal.SIGKILL:
        # The rerun failed the dead worker's trial itself, before starting any trial of its
        # own: the heartbeat would have failed it only GRACE_SECONDS after its last beat,
        # while the rerun was already training (trial 3 starts at once beside a RUNNING one).
        rerun_trials = [t for t in study.get_trials() if t.number > killed.number]
        assert killed.datetime_complete <= min(t.datetime_start for t in rerun_trials)
        assert 0 <= (killed.datetime_complete - rerun_started).total_seconds() < GRACE_SECONDS / 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "nope"], "unknown data set"),
        (["--dataset", "cifar10"], "needs --data-dir"),
        (["--dataset", "imagefolder:/does/not/exist"], "does not exist"),
        (["--storage", "notaurl"], "not a usable database URL"),
        (["--storage", "sqlite:////no/such/folder/x.db"], "does not exist"),
        (["--budget", "0"], "--budget must be >= 1"),
        (["--target", "mars"], "unknown target"),
        (["--target", "arm"], "start the agent on the board"),
        (["--epochs", "-1"], "--epochs must be > 0"),
        (["--space", "huge"], "unknown search space"),
        (["--study", "../escape"], "--study"),
    ],
)
def test_bad_input_is_one_clear_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    import nas

    monkeypatch.chdir(tmp_path)
    assert nas.main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas.py: error:") and message in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_bad_input_exit_status_of_the_real_process(tmp_path):
    result = run_nas(["--dataset", "nope"], tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "nas.py: error: unknown data set 'nope'; choose digits (embedded, default), cifar10, mnist, "
        "fashion-mnist (need --data-dir), imagefolder:PATH"
    ]
    assert list(tmp_path.iterdir()) == []


def test_joining_a_study_with_a_conflicting_setting_is_refused(tmp_path, cache_dir):
    first = run_nas(["--budget", "1", "--study", "cfg", "--cache-dir", str(cache_dir), *FAST], tmp_path)
    assert first.returncode == 0, first.stderr
    clash = run_nas(["--budget", "2", "--study", "cfg", "--epochs", "3"], tmp_path)
    assert clash.returncode == 2
    assert "was created with epochs = 1.0" in clash.stderr
    study, _ = _study(tmp_path, "cfg")
    assert _complete(study) == 1


def test_status_export_and_report_commands(tmp_path, monkeypatch, capsys, cache_dir):
    import nas

    monkeypatch.chdir(tmp_path)
    assert nas.main(["--budget", "2", "--study", "cmds", "--cache-dir", str(cache_dir), *FAST]) == 0
    capsys.readouterr()

    assert nas.main(["status"]) == 0
    assert "cmds: 2 complete, 0 failed" in capsys.readouterr().out

    study, url = _study(tmp_path, "cmds")
    trial = study.get_trials(states=(TrialState.COMPLETE,))[0]
    assert nas.main(["export", "--study", "cmds", "--trial", str(trial.number), "--out", "model"]) == 0
    store = Store(url)
    assert (tmp_path / "model" / "model.onnx").read_bytes() == store.get_model(trial.user_attrs[attrs.ONNX_SHA256])
    store.close()
    assert nas.main(["export", "--study", "cmds", "--trial", "99"]) == 2
    assert "no deployed model for trial 99" in capsys.readouterr().err

    (tmp_path / "studies" / "cmds" / "report" / "pareto.png").unlink()
    assert nas.main(["report", "--study", "cmds", "--cache-dir", str(cache_dir)]) == 0
    assert "Pareto front of study cmds" in capsys.readouterr().out
    assert (tmp_path / "studies" / "cmds" / "report" / "pareto.png").exists()
    assert nas.main(["report", "--study", "nope"]) == 2
