"""The board agent, as a real process on loopback, and the search's client of it."""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from onnx import TensorProto, helper
from optuna.trial import TrialState

from conftest import FAST, ROOT, run_nas
from search.board import client as agent_client
from search.report import retime
from search.study import attrs
from search.board.agent import PROTOCOL, ModelRunner, RequestError, measure_job
from search.board.client import AgentError, AgentMeasurer
from search.stages.evaluate import onnx_logits
from search.stages.export import export_onnx
from search.board.timing import TimingPlan
from search.report.front import BOARD_ACCURACY_GAP
from search.study.storage import Store
from search.targets import TargetError, get_target

TOKEN = "test-token"
MAX_MODEL_MB = 1.0
QUICK_PLAN = {"warmup_runs": 2, "warmup_seconds": 0.0, "min_runs": 10, "min_seconds": 0.0}


def start_agent(
    log_path: Path, *args: str, command: list[str] | None = None, cwd: Path | None = None, env: dict | None = None
) -> tuple[subprocess.Popen, int]:
    """``nas.py agent`` (or ``python COMMAND``) on a port the system picks; returns the process and its port."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, *(command or [str(ROOT / "nas.py"), "agent"]), "--port", "0", *args],
            stdout=subprocess.DEVNULL, stderr=log, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
    deadline = time.time() + 60
    while time.time() < deadline:
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log_path.read_text())
        if found:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the agent did not start:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """A real agent process: (port, path of its log)."""
    log_path = tmp_path_factory.mktemp("agent") / "agent.log"
    proc, port = start_agent(log_path, "--token", TOKEN, "--max-model-mb", str(MAX_MODEL_MB))
    yield port, log_path
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


@pytest.fixture(scope="module")
def model() -> bytes:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    return export_onnx(net.eval(), torch.zeros(1, 1, 8, 8))


def request(port: int, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN):
    """(status, parsed JSON or raw bytes) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    is_json = response.getheader("Content-Type") == "application/json"
    return response.status, json.loads(payload) if is_json else payload


def measure_path(**params) -> str:
    return "/measure?" + "&".join(f"{k}={v}" for k, v in {**QUICK_PLAN, **params}.items())


def external_data_model(location: str) -> bytes:
    """A model whose only tensor claims to live in a file beside it: a way to read the board's files."""
    tensor = TensorProto(name="w", data_type=TensorProto.UINT8, dims=[4], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])], "leak", [],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [4])], initializer=[tensor],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def assert_still_serving(port: int, model: bytes) -> None:
    status, info = request(port, "GET", "/info")
    assert status == 200 and info["protocol"] == PROTOCOL
    status, reply = request(port, "POST", measure_path(threads=1), model)
    assert status == 200, reply
    assert reply["stats"]["runs"] >= 10 and reply["stats"]["p50_ms"] > 0


def test_info_says_what_it_runs_on(agent):
    status, info = request(agent[0], "GET", "/info")
    assert status == 200
    assert {"host", "cpu", "arch", "cores", "onnxruntime", "providers", "emulated"} <= set(info["machine"])
    assert info["max_body_bytes"] == int(MAX_MODEL_MB * 1024 * 1024)


@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x", ""], ids=["none", "wrong", "longer", "empty"])
@pytest.mark.parametrize("method, path", [("GET", "/info"), ("POST", "/measure"), ("POST", "/run?model_bytes=1")])
def test_no_or_wrong_token_is_refused(agent, model, token, method, path):
    status, reply = request(agent[0], method, path, model if method == "POST" else None, token=token)
    assert status == 401 and "token" in reply["error"]


def test_oversized_model_is_refused_from_its_length(agent, model):
    status, reply = request(agent[0], "POST", "/measure", b"\0" * int(MAX_MODEL_MB * 1024 * 1024 + 1))
    assert status == 413 and "limit" in reply["error"]
    # Far over the limit: still a clean 413, not a reset connection.
    status, reply = request(agent[0], "POST", "/measure", b"\0" * (40 * 1024 * 1024))
    assert status == 413
    assert_still_serving(agent[0], model)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"this is not an onnx file" * 40, "INVALID_PROTOBUF"),
        (b"", "protobuf"),
        ("truncated", ""),
        (external_data_model("/etc/hostname"), "External data"),
        (external_data_model("../../../../../etc/hostname"), "External data"),
        (external_data_model("hostname"), "External data"),
    ],
    ids=["garbage", "empty", "truncated", "external-absolute", "external-escape", "external-relative"],
)
def test_bad_or_hostile_model_is_a_400_and_the_agent_goes_on(agent, model, body, message):
    if body == "truncated":
        body = model[: len(model) // 2]
    status, reply = request(agent[0], "POST", measure_path(), body)
    assert status == 400 and message in reply["error"]
    assert_still_serving(agent[0], model)


def test_hostile_model_cannot_read_files_through_run(agent, model):
    inputs = io.BytesIO()
    np.save(inputs, np.zeros(1, np.float32))
    leak = external_data_model("hostname")
    status, reply = request(agent[0], "POST", f"/run?model_bytes={len(leak)}", leak + inputs.getvalue())
    assert status == 400 and "External data" in reply["error"]


@pytest.mark.parametrize(
    "method, path, status, message",
    [
        ("POST", "/measure?bogus=1", 400, "unknown parameters ['bogus']"),
        ("POST", "/measure?min_runs=many", 400, "must be a number"),
        ("POST", "/measure?sessions=0", 400, "sessions must be at least 1"),
        ("POST", "/measure?threads=-1", 400, "threads must be an integer"),
        ("POST", "/measure?provider=TensorrtExecutionProvider", 400, "not available"),
        ("POST", "/run", 400, "model_bytes"),
        ("GET", "/nothing", 404, "no GET /nothing"),
    ],
)
def test_bad_requests_say_what_is_wrong(agent, model, method, path, status, message):
    got, reply = request(agent[0], method, path, model if method == "POST" else None)
    assert got == status and message in reply["error"]


def test_concurrent_requests_are_measured_one_at_a_time(agent, model):
    path = measure_path(threads=1, warmup_seconds=0.1, min_seconds=0.3, max_runs=10**6)
    replies: list[tuple[float, dict]] = []

    def send():
        status, reply = request(agent[0], "POST", path, model)
        assert status == 200, reply
        replies.append((time.perf_counter(), reply))

    workers = [threading.Thread(target=send) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    # Each measurement ran from (reply received - its seconds) to (reply received): no overlap.
    spans = sorted((end - reply["seconds"], end) for end, reply in replies)
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 0.05, spans
    assert sorted(reply["queued_s"] for _, reply in replies)[-1] >= 0.6  # the last one waited for two


def test_run_returns_what_local_onnx_runtime_computes(agent, model):
    measurer = AgentMeasurer(get_target("host", f"127.0.0.1:{agent[0]}"), TOKEN)
    x = np.random.default_rng(0).standard_normal((300, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(measurer.run(model, x), onnx_logits(model, x), rtol=1e-5, atol=1e-6)
    # Inputs over the size limit go in several requests.
    measurer.max_body_bytes = len(model) + 1024 + 100 * x[0].nbytes
    np.testing.assert_allclose(measurer.run(model, x), onnx_logits(model, x), rtol=1e-5, atol=1e-6)


def test_agent_measurer_records_where_it_measured(agent, model):
    device = f"127.0.0.1:{agent[0]}"
    measurer = AgentMeasurer(get_target("host", device), TOKEN, TimingPlan(**QUICK_PLAN))
    m = measurer.measure(model)
    assert m.stats.runs >= 10 and m.stats.p50_ms > 0
    assert m.measured_on["via"] == "agent" and m.measured_on["device"] == device
    assert m.measured_on["arch"] == measurer.machine["arch"] and m.measured_on["emulated"] is False
    assert '"arch": "' in measurer.identity()
    with pytest.raises(AgentError, match="over the limit"):
        measurer.measure(b"\0" * (int(MAX_MODEL_MB * 1024 * 1024) + 1))
    with pytest.raises(AgentError, match="INVALID_PROTOBUF"):
        measurer.measure(b"garbage")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "target, token, message",
    [
        ("host", "wrong-token", "refused the token"),
        ("host", None, "needs the agent's token"),
        ("arm", TOKEN, "needs latency measured on aarch64, but the agent at 127.0.0.1:{port} runs on x86_64"),
    ],
)
def test_agent_measurer_refuses_with_one_clear_line(agent, target, token, message):
    if target == "arm" and os.uname().machine != "x86_64":
        pytest.skip("needs an x86_64 agent")
    with pytest.raises(TargetError) as e:
        AgentMeasurer(get_target(target, f"127.0.0.1:{agent[0]}"), token)
    assert message.format(port=agent[0]) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="needs an x86_64 agent")
def test_a_search_for_arm_against_an_x86_agent_stops_with_one_line(agent, tmp_path):
    result = run_nas(["--target", "arm", "--device", f"127.0.0.1:{agent[0]}", "--token", TOKEN], tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "aarch64" in lines[0] and "runs on x86_64" in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # refused before any study was written


def test_unreachable_agent_is_a_clear_error_after_retries(monkeypatch):
    monkeypatch.setattr(agent_client, "FIRST_PAUSE_S", 0.01)
    port = _closed_port()
    with pytest.raises(TargetError, match=f"cannot reach the agent at 127.0.0.1:{port}.*5 attempts.*nas.py agent"):
        AgentMeasurer(get_target("host", f"127.0.0.1:{port}"), TOKEN)


def test_a_crashing_or_endless_model_takes_down_its_child_not_the_runner(model):
    runner = ModelRunner(time_limit_s=1.0)
    with pytest.raises(RequestError, match="crashed ONNX Runtime .killed by SIGABRT") as crash:
        runner.run(os.abort, ())
    assert crash.value.status == 500
    with pytest.raises(RequestError, match="time limit of 1 s") as endless:
        runner.run(time.sleep, (30,))
    assert endless.value.status == 504
    stats, _, _ = runner.run(measure_job, (model, 1, "CPUExecutionProvider", TimingPlan(**QUICK_PLAN)))
    assert stats["runs"] >= 10


def test_agent_needs_a_token(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "nas.py"), "agent", "--port", "0"],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "EDGENAS_TOKEN"},
    )
    assert result.returncode == 2 and "needs --token" in result.stderr


def _trials(cwd: Path, name: str):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{cwd}/studies/{name}/study.db")
    return study.get_trials(states=(TrialState.COMPLETE,))


def test_a_study_measures_every_trial_on_the_agent(agent, tmp_path, cache_dir):
    port, log_path = agent
    log_before = len(log_path.read_text())  # earlier tests of the module wrote to the same log
    result = run_nas(
        ["--budget", "2", "--study", "remote", "--device", f"127.0.0.1:{port}", "--token", TOKEN,
         "--cache-dir", str(cache_dir), *FAST],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    trials = _trials(tmp_path, "remote")
    assert len(trials) == 2
    for trial in trials:
        measured_on = trial.user_attrs[attrs.MEASURED_ON]
        assert measured_on["via"] == "agent" and measured_on["device"] == f"127.0.0.1:{port}"
        # Same x86 kernels behind the agent: the board's accuracy is this machine's.
        assert trial.user_attrs[attrs.ACCURACY_ON_TARGET] == pytest.approx(trial.user_attrs[attrs.ACCURACY], abs=0.01)
    assert "via agent" in result.stdout
    # Each distinct deployed file is measured once on the agent (the study's latency cache
    # answers any repeat); the only other requests re-time the front on it before the report,
    # once a round. The teacher's file is over the agent's upload limit: not drawn, said so.
    measured = [t for t in _all_trials(tmp_path, "remote") if t.user_attrs.get(attrs.LATENCY_CACHED) is False]
    assert len({t.user_attrs[attrs.ONNX_SHA256] for t in measured}) == len(measured) >= 2
    rows = list(csv.DictReader((tmp_path / "studies" / "remote" / "report" / "pareto.csv").open()))
    front = [r for r in rows if r["on_front"] == "True"]
    assert all(r["retimed_p50_ms"] for r in front) and "front and baselines re-timed together" in result.stdout
    assert "the teacher is not drawn" in result.stderr
    requests = log_path.read_text()[log_before:].count("POST /measure -> 200")
    assert requests == len(measured) + retime.ROUNDS * len(front)


# Installed on the PYTHONPATH of a second agent: its ONNX Runtime answers with every row
# of the first output rotated by one class, so that its accuracy cannot be this machine's.
# The agent's forkserver children start Python afresh and read this file too.
PERTURBING_SITECUSTOMIZE = """
import numpy as np
import onnxruntime

_run = onnxruntime.InferenceSession.run


def _rolled_run(self, output_names, input_feed, run_options=None):
    outputs = _run(self, output_names, input_feed, run_options)
    return [np.roll(outputs[0], 1, axis=1), *outputs[1:]]


onnxruntime.InferenceSession.run = _rolled_run
"""


@pytest.fixture
def perturbed_agent(tmp_path):
    """An agent whose ONNX Runtime rotates the logits: its port."""
    folder = tmp_path / "perturbed"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(PERTURBING_SITECUSTOMIZE)
    proc, port = start_agent(tmp_path / "perturbed-agent.log", "--token", TOKEN,
                             env={"PYTHONPATH": f"{folder}:{ROOT}"})
    yield port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def _all_trials(cwd: Path, name: str):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd}/studies/{name}/study.db").get_trials()


@pytest.mark.slow  # 33 s: a whole study on a perturbed agent; CI runs it
def test_accuracy_on_target_is_what_the_board_computes(perturbed_agent, tmp_path, cache_dir, digits):
    name = "perturbed"
    url = f"sqlite:///{tmp_path}/studies/{name}/study.db"
    # Rotated logits score like the true ones when a network predicts one class for
    # everything (the validation split is stratified), as a FAST student can after its
    # dozen steps; four times the steps at a higher rate leave it well above chance.
    args = ["--study", name, "--device", f"127.0.0.1:{perturbed_agent}", "--token", TOKEN,
            "--cache-dir", str(cache_dir), *FAST, "--batch-size", "32", "--lr", "0.03"]
    first = run_nas(["--budget", "1", *args], tmp_path)
    assert first.returncode == 0, first.stderr
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.load_study(study_name=name, storage=url).enqueue_trial({"quant": "int8-static", "prune_ratio": 0.0})
    second = run_nas(["--budget", "2", *args], tmp_path)
    assert second.returncode == 0, second.stderr

    trials = _trials(tmp_path, name)
    assert len(trials) == 2
    assert "int8-static" in [t.user_attrs[attrs.QUANT] for t in trials]
    store = Store(url)
    x, y = digits.val.x.numpy(), digits.val.y.numpy()
    try:
        for trial in trials:
            deployed = store.get_model(trial.user_attrs[attrs.ONNX_SHA256])
            rolled = np.roll(onnx_logits(deployed, x), 1, axis=1)
            on_board = float((rolled.argmax(1) == y).mean())
            assert trial.user_attrs[attrs.ACCURACY_ON_TARGET] == on_board, trial.number
            assert trial.user_attrs[attrs.ACCURACY_ON_TARGET] != trial.user_attrs[attrs.ACCURACY], trial.number
    finally:
        store.close()


# The emulated ARM board: a Debian arm64 userland under QEMU (scripts/emulated-arm-board.sh).
BOARD_SCRIPT = ROOT / "scripts" / "emulated-arm-board.sh"


@pytest.fixture(scope="module")
def emulated_board():
    """The emulated board's agent: (device, token); stopped afterwards if this started it."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        why = "the emulated board needs root on Debian (debootstrap, chroot, mounts)"
        if os.environ.get("CI") == "true":  # .ci/run: a skipped board test would hide a broken CI machine
            pytest.fail(f"{why}; CI must run it", pytrace=False)
        pytest.skip(why)
    was_running = subprocess.run([str(BOARD_SCRIPT), "status"], capture_output=True).returncode == 0
    started = subprocess.run([str(BOARD_SCRIPT), "start", "--port", str(_closed_port())],
                             capture_output=True, text=True, timeout=900)
    assert started.returncode == 0, started.stderr
    device, token = re.fullmatch(r"--device (\S+) --token (\S+)", started.stdout.strip().splitlines()[-1]).groups()
    yield device, token
    if not was_running:
        subprocess.run([str(BOARD_SCRIPT), "stop"], check=True, timeout=60)


@pytest.mark.slow
def test_a_study_for_arm_measures_on_the_emulated_board(emulated_board, tmp_path, cache_dir, digits):
    device, token = emulated_board
    result = run_nas(
        ["--budget", "3", "--target", "arm", "--device", device, "--token", token, "--cache-dir", str(cache_dir), *FAST],
        tmp_path, timeout=1800,
    )
    assert result.returncode == 0, result.stderr
    trials = _trials(tmp_path, "digits-arm")
    assert len(trials) == 3
    for trial in trials:
        measured_on = trial.user_attrs[attrs.MEASURED_ON]
        assert measured_on["arch"] == "aarch64" and measured_on["emulated"] is True
        assert measured_on["via"] == "agent"
        # The deployed file also ran on ARM's ONNX Runtime kernels (int8 ones included): a
        # count of right answers on the whole validation split, which on the emulated board
        # matches this machine's top classes (BENCHMARKS.md) within the report's own gap.
        on_target, n_val = trial.user_attrs[attrs.ACCURACY_ON_TARGET], len(digits.val)
        assert on_target * n_val == pytest.approx(round(on_target * n_val), abs=1e-6)
        assert abs(on_target - trial.user_attrs[attrs.ACCURACY]) <= BOARD_ACCURACY_GAP
    assert "EMULATED" in result.stdout
