"""A farm of board agents (search/board/farm.py): real agent processes on loopback, two
of them alike and one slowed down with the agent's --slowdown test flag."""

from __future__ import annotations

import argparse
import hashlib
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import optuna
import pytest

from conftest import FAST, ROOT, run_nas
from search.board.client import AgentMeasurer, agent_info
from search.board.farm import BoardFarm, check_agreement
from search.board.timing import TimingPlan
from search.cli import cmd_status
from search.report.retime import same_setup
from search.stages.evaluate import onnx_logits
from search.stages.measure import LocalMeasurer, make_measurer, reference_model
from search.study import attrs
from search.targets import BUILTIN_TARGETS, TargetError, get_target
from test_agent import QUICK_PLAN, TOKEN, _closed_port, model, start_agent  # noqa: F401 (model is a fixture)

QUICK = TimingPlan(**QUICK_PLAN)
SLOWDOWN = 3.0


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    """Three real agents: {"a": (port, log path), "b": ..., "slow": ...}; "slow" runs every model 3x slower."""
    folder = tmp_path_factory.mktemp("farm")
    started = {}
    try:
        for name, extra in (("a", ()), ("b", ()), ("slow", ("--slowdown", str(SLOWDOWN)))):
            log_path = folder / f"{name}.log"
            proc, port = start_agent(log_path, "--token", TOKEN, *extra)
            started[name] = (proc, port, log_path)
        yield {name: (port, log_path) for name, (_, port, log_path) in started.items()}
    finally:
        for proc, _, _ in started.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


def device(boards, name: str) -> str:
    return f"127.0.0.1:{boards[name][0]}"


def farm_target(boards, *names: str):
    # One thread: two agents on this shared machine compete less for its cores.
    return replace(BUILTIN_TARGETS["host"], threads=1, devices=tuple(device(boards, n) for n in names))


def farm_of(boards, *names: str) -> BoardFarm:
    target = farm_target(boards, *names)
    return BoardFarm([AgentMeasurer(replace(target, devices=(d,)), TOKEN, QUICK) for d in target.devices])


def measured(boards, name: str) -> int:
    """Measurements the agent has answered so far, from its own log."""
    time.sleep(0.3)  # the agent logs a request after replying
    return boards[name][1].read_text().count("POST /measure -> 200")


def refused_in(message: str) -> set[str]:
    found = re.search(r"refused boards? (.*?): the reference", message)
    return set(re.findall(r"(\S+) \(\d+% off\)", found.group(1))) if found else set()


@pytest.mark.parametrize(
    "figures, refused",
    [
        ({"a": 1.0, "b": 1.05, "c": 0.96}, set()),
        ({"a": 1.0, "b": 1.02, "c": 3.0}, {"c"}),  # the median of the others would refuse a and b too
        ({"a": 1.0, "b": 1.02, "c": 0.98, "d": 1.5, "e": 0.5}, {"d", "e"}),
        ({"a": 1.0, "b": 1.09}, set()),
        ({"a": 1.0}, set()),
    ],
)
def test_a_board_far_from_the_farm_s_median_is_refused_by_name(figures, refused):
    if not refused:
        check_agreement(figures)
        return
    with pytest.raises(TargetError) as e:
        check_agreement(figures)
    message = str(e.value)
    assert refused_in(message) == refused and "\n" not in message
    assert all(f"{d} {ms:.3f} ms" in message for d, ms in figures.items())  # every figure, to judge by


def test_two_boards_that_disagree_are_both_refused():
    with pytest.raises(TargetError) as e:
        check_agreement({"a": 1.0, "b": 1.12})
    message = str(e.value)
    assert "boards a and b disagree" in message and "12% apart" in message and "add a third board" in message


def test_the_reference_model_is_the_same_file_in_every_worker():
    here = reference_model()
    code = "import hashlib; from search.stages.measure import reference_model; print(hashlib.sha256(reference_model()).hexdigest())"
    elsewhere = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert elsewhere.stdout.strip() == hashlib.sha256(here).hexdigest(), elsewhere.stderr
    session = ort.InferenceSession(here, providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.ones((1, 32, 32, 32), np.float32)})[0]
    assert out.shape == (1, 32, 32, 32) and np.isfinite(out).all() and out.max() > 0


def test_two_agents_as_a_farm_both_receive_work(boards, model):
    farm = farm_of(boards, "a", "b")
    before = {name: measured(boards, name) for name in ("a", "b")}
    start = threading.Barrier(2)
    results, errors = [], []

    def worker_thread():
        start.wait()
        try:
            for _ in range(2):
                results.append(farm.measure(model, replace(QUICK, min_seconds=0.3)))
        except Exception as e:  # reported in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=worker_thread) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    # A request in flight on one board sends the other thread's to the other board.
    assert {m.measured_on["device"] for m in results} == {device(boards, "a"), device(boards, "b")}
    after = {name: measured(boards, name) for name in ("a", "b")}
    assert after["a"] > before["a"] and after["b"] > before["b"]
    assert after["a"] + after["b"] == before["a"] + before["b"] + 4
    x = np.random.default_rng(0).standard_normal((20, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(farm.run(model, x), onnx_logits(model, x), rtol=1e-5, atol=1e-6)


def test_a_board_this_worker_is_sending_to_is_not_chosen_again(boards):
    farm = farm_of(boards, "a", "b")
    # Chosen, not yet sent: no agent's queue shows it, this worker's own count does.
    with farm._freest() as first, farm._freest() as second:
        assert {first.device, second.device} == {device(boards, "a"), device(boards, "b")}
        assert all(agent_info(d, TOKEN)["queue"] == 0 for d in (first.device, second.device))


def test_a_worker_keeps_to_its_board_until_another_worker_keeps_it_busy(boards, model):
    farm = farm_of(boards, "a", "b")
    used = {farm.measure(model).measured_on["device"] for _ in range(3)}
    assert len(used) == 1  # one worker alone: its figures, and the report's re-timing, from one machine
    (own,) = used
    other = next(d for d in farm_target(boards, "a", "b").devices if d != own)
    busy = AgentMeasurer(replace(farm_target(boards, "a", "b"), devices=(own,)), TOKEN)
    long_plan = replace(QUICK, min_seconds=3.0, max_runs=10**6)
    hog = threading.Thread(target=busy.measure, args=(model, long_plan))  # another worker's model
    hog.start()
    try:
        deadline = time.time() + 20
        while agent_info(own, TOKEN)["queue"] == 0 and time.time() < deadline:
            time.sleep(0.05)
        assert agent_info(own, TOKEN)["queue"] == 1
        assert farm.measure(model).measured_on["device"] == other
    finally:
        hog.join(timeout=60)
    assert agent_info(own, TOKEN)["queue"] == 0
    assert farm.measure(model).measured_on["device"] == other  # free again, but the worker keeps to its new board


def test_a_board_slower_than_the_others_is_refused(boards):
    with pytest.raises(TargetError) as e:
        make_measurer(farm_target(boards, "a", "b", "slow"), TOKEN)
    message = str(e.value)
    assert refused_in(message) == {device(boards, "slow")}, message
    assert "\n" not in message and "leave it out of the farm" in message
    figures = {d: float(ms) for d, ms in re.findall(r"(127\.0\.0\.1:\d+) ([\d.]+) ms", message)}
    assert figures[device(boards, "slow")] > 2 * figures[device(boards, "a")]


def test_a_farm_of_agreeing_boards_is_one_measuring_setup(boards, model):
    farm = make_measurer(farm_target(boards, "a", "b"), TOKEN)
    assert isinstance(farm, BoardFarm) and farm.runs_elsewhere
    a, b = farm.boards
    assert farm.identity() == a.identity() == b.identity()
    # The report re-times on the farm a front that either board measured; a local
    # measurement of this very machine is another setup.
    from_a, from_b = a.measure(model).measured_on, b.measure(model).measured_on
    assert from_a["host"] == from_b["host"] and from_a["device"] != from_b["device"]
    assert same_setup(farm, [from_a, from_b]) and same_setup(a, [from_b])
    assert same_setup(farm, [from_a, {**from_b, "host": "pi-2", "device": "pi-2:8470"}])  # the kind, not the host
    assert not same_setup(farm, [from_a, {**from_b, "cpu": "another CPU"}])
    assert not same_setup(farm, [LocalMeasurer(farm_target(boards)).machine])


def test_boards_of_another_kind_are_refused(boards):
    target = farm_target(boards, "a", "b")
    a, b = (AgentMeasurer(replace(target, devices=(d,)), TOKEN) for d in target.devices)
    b.machine = {**b.machine, "onnxruntime": "1.0.0"}  # as an agent with another ONNX Runtime reports
    with pytest.raises(TargetError, match=rf"one kind, but {b.device}: onnxruntime '1.0.0' where {a.device} has"):
        BoardFarm([a, b])


@pytest.mark.parametrize(
    "given, message",
    [
        ("127.0.0.1:8470,,127.0.0.1:8471", "'' is not HOST:PORT"),
        ("127.0.0.1:8470,board", "'board' is not HOST:PORT"),
        ("127.0.0.1:8470, 127.0.0.1:8470", "names 127.0.0.1:8470 more than once"),
    ],
)
def test_a_bad_device_list_says_which_entry_is_wrong(tmp_path, given, message):
    with pytest.raises(TargetError, match=re.escape(message)):
        get_target("host", given, path=tmp_path / "none.toml")
    assert get_target("host", "a:1, b:2", path=tmp_path / "none.toml").devices == ("a:1", "b:2")


def test_a_bad_device_list_stops_the_search_in_one_line(tmp_path):
    result = run_nas(["--budget", "1", "--device", "127.0.0.1:8470,,127.0.0.1:8471", "--token", TOKEN], tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'' is not HOST:PORT" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_a_search_on_a_farm_with_a_slow_board_stops_before_writing(boards, tmp_path):
    devices = ",".join(device(boards, n) for n in ("a", "b", "slow"))
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "targets.toml").write_text("[host]\nthreads = 1\n")
    result = run_nas(["--budget", "1", "--device", devices, "--token", TOKEN], tmp_path, timeout=180)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and refused_in(lines[0]) == {device(boards, "slow")}, lines
    assert [p.name for p in (tmp_path / "studies").iterdir()] == ["targets.toml"]  # no study written


@pytest.mark.slow  # a whole study: 50 to 107 s on this shared 2-core machine; CI runs it
def test_a_study_on_a_farm_records_each_board_and_status_shows_them(boards, tmp_path, cache_dir, capsys):
    a, b = device(boards, "a"), device(boards, "b")
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "targets.toml").write_text(f'[host]\nthreads = 1\ndevices = ["{a}", "{b}"]\n')
    result = run_nas(["--budget", "2", "--study", "farm", "--token", TOKEN, "--cache-dir", str(cache_dir), *FAST],
                     tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"a farm of 2 agents ({a}, {b})" in result.stderr
    url = f"sqlite:///{tmp_path}/studies/farm/study.db"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials = [t for t in optuna.load_study(study_name="farm", storage=url).get_trials() if attrs.MEASURED_ON in t.user_attrs]
    assert len(trials) >= 2 and {t.user_attrs[attrs.MEASURED_ON]["device"] for t in trials} <= {a, b}
    timed = [t.user_attrs[attrs.MEASURED_ON]["device"] for t in trials if t.user_attrs[attrs.LATENCY_CACHED] is False]

    cmd_status(argparse.Namespace(storage=url, study="farm", token=TOKEN))
    rows = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("board ")]
    assert rows == [f"board {d}: {timed.count(d)} model{'' if timed.count(d) == 1 else 's'} measured; queue now 0"
                    for d in sorted(set(timed))]


def test_status_says_which_boards_cannot_be_asked(boards, tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/study.db"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name="s", storage=url, directions=list(attrs.DIRECTIONS))
    gone = f"127.0.0.1:{_closed_port()}"
    for where, cached in ((device(boards, "a"), False), (device(boards, "a"), False), (device(boards, "a"), True),
                          (gone, False)):
        trial = study.ask()
        trial.set_user_attr(attrs.MEASURED_ON, {"via": "agent", "device": where})
        trial.set_user_attr(attrs.LATENCY_CACHED, cached)
        study.tell(trial, [0.5, 1.0, 10.0])
    cmd_status(argparse.Namespace(storage=url, study="s", token=TOKEN))
    out = capsys.readouterr().out
    assert f"board {device(boards, 'a')}: 2 models measured; queue now 0" in out  # the cached one is not its work
    assert f"board {gone}: 1 model measured; not reachable" in out
    cmd_status(argparse.Namespace(storage=url, study="s", token=None))
    assert "queue unknown: pass --token" in capsys.readouterr().out
    cmd_status(argparse.Namespace(storage=url, study="s", token="wrong"))
    assert f"board {device(boards, 'a')}: 2 models measured; answered 401" in capsys.readouterr().out
