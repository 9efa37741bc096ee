"""The search's client of the board agent (search/board/client.py), against a real agent
process on loopback. tests/test_agent.py covers the token, unreachable-port and
oversized-model refusals; this file covers the rest of the client's handling."""

from __future__ import annotations

import functools
import signal
import threading
import time
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from search.board import client
from search.board.agent import QUEUE_WAIT_S
from search.board.client import AgentError, AgentMeasurer
from search.board.timing import TimingPlan
from search.targets import BUILTIN_TARGETS, TargetError
from test_agent import QUICK_PLAN, TOKEN, _closed_port, model, start_agent  # noqa: F401 (model is a fixture)

MAX_MODEL_MB = 0.01  # 10485 bytes: room for the test model and a few rows of 8x8 inputs
TIME_LIMIT_S = 20.0


def host_at(port: int, **changes):
    return replace(BUILTIN_TARGETS["host"], devices=(f"127.0.0.1:{port}",), **changes)


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """A real agent with a small size limit: (port, path of its log)."""
    log_path = tmp_path_factory.mktemp("agent") / "agent.log"
    proc, port = start_agent(log_path, "--token", TOKEN, "--max-model-mb", str(MAX_MODEL_MB),
                             "--time-limit-s", str(TIME_LIMIT_S))
    yield port, log_path
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(client, "FIRST_PAUSE_S", 0.05)


def log_count(log_path, line: str, settle_s: float = 0.3) -> int:
    """How often ``line`` is in the agent's log, once the agent has written its last line."""
    time.sleep(settle_s)
    return log_path.read_text().count(line)


def test_the_agent_s_limits_become_the_client_s(agent):
    measurer = AgentMeasurer(host_at(agent[0]), TOKEN)
    assert measurer.max_body_bytes == int(MAX_MODEL_MB * 1024 * 1024)
    assert measurer.reply_timeout_s == QUEUE_WAIT_S + TIME_LIMIT_S + client.REPLY_MARGIN_S


@pytest.mark.parametrize("threads", [1, None], ids=["target-threads", "one-per-core"])
def test_the_target_s_thread_count_is_what_the_board_times_with(agent, model, threads):
    measurer = AgentMeasurer(host_at(agent[0], threads=threads), TOKEN, TimingPlan(**QUICK_PLAN))
    expected = threads or measurer.machine["cores"]
    assert measurer.machine["threads"] == expected
    assert measurer.measure(model).measured_on["threads"] == expected


def test_a_refused_request_is_not_retried(agent, quick_retries):
    port, log_path = agent
    before = log_count(log_path, "POST /measure -> 400", settle_s=0)
    with pytest.raises(AgentError, match="INVALID_PROTOBUF") as refused:
        AgentMeasurer(host_at(port), TOKEN).measure(b"not an onnx file")
    assert refused.value.status == 400
    assert log_count(log_path, "POST /measure -> 400") == before + 1


def test_inputs_too_large_for_the_agent_are_refused_before_sending(agent, model):
    port, log_path = agent
    measurer = AgentMeasurer(host_at(port), TOKEN)
    before = log_count(log_path, "POST /run", settle_s=0)
    with pytest.raises(AgentError, match="over the limit of the agent.*larger --max-model-mb") as refused:
        measurer.run(model, np.zeros((2, 1, 64, 64), np.float32))  # one row alone is 16 KB
    assert refused.value.status is None
    assert log_count(log_path, "POST /run") == before


def test_run_needs_inputs(agent, model):
    with pytest.raises(ValueError, match="no inputs"):
        AgentMeasurer(host_at(agent[0]), TOKEN).run(model, np.zeros((0, 1, 8, 8), np.float32))


def test_a_mismatched_protocol_says_to_copy_the_agent_again(agent, monkeypatch):
    monkeypatch.setattr(client, "PROTOCOL", 99)  # this search is newer than the agent
    with pytest.raises(TargetError, match=r"speaks protocol \d+, this search 99: copy this search/board/"):
        AgentMeasurer(host_at(agent[0]), TOKEN)


class QuietFileServer(SimpleHTTPRequestHandler):
    """Some other web server at the device's address: it serves files."""

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def file_server(tmp_path):
    """A plain file server on loopback, serving tmp_path: its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietFileServer, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "files, message",
    [({}, "answered /info with 404"), ({"info": "<html>hello</html>"}, "answered /info with something other than JSON")],
    ids=["not-found", "not-json"],
)
def test_a_server_that_is_not_an_agent_is_named_as_such(tmp_path, file_server, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(TargetError, match=f"(?s){message}.*; is it an edgenas agent[?]$"):
        AgentMeasurer(host_at(file_server), TOKEN)


def test_a_non_agent_s_error_page_is_reported_on_one_line(file_server):
    with pytest.raises(TargetError) as e:
        AgentMeasurer(host_at(file_server), TOKEN)
    assert "\n" not in str(e.value)


def test_an_agent_that_comes_up_during_the_retries_is_used(tmp_path, monkeypatch, caplog, model):
    monkeypatch.setattr(client, "FIRST_PAUSE_S", 1.0)  # attempts over 15 s: time for the agent to start
    port = _closed_port()
    got: dict = {}

    def connect():
        try:
            got["measurer"] = AgentMeasurer(host_at(port), TOKEN, TimingPlan(**QUICK_PLAN))
        except Exception as e:  # reported below, in the test's thread
            got["error"] = e

    connecting = threading.Thread(target=connect)
    connecting.start()
    time.sleep(0.5)  # the first attempt has been refused
    proc, _ = start_agent(tmp_path / "agent.log", "--port", str(port), "--token", TOKEN)
    try:
        connecting.join(timeout=30)
        assert "error" not in got, got.get("error")
        assert "ConnectionRefusedError" in caplog.text and "retrying in 1.0 s" in caplog.text
        assert got["measurer"].measure(model).stats.runs >= 10
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
