"""The search side of the board agent (``agent.py`` beside this file documents the protocol).

``AgentMeasurer`` implements ``search.stages.measure.Measurer`` for one board (``farm``
spreads work over several), so the objective and the measurement cache do not know
where a latency comes from; every latency it returns says so (``"via": "agent"``,
``"device": "HOST:PORT"``). Its constructor checks the
agent before the search trains anything: reachable, the token accepted, the protocol
understood, and the architecture the target asks for. Requests that fail on the way
(refused or dropped connections, time-outs, an agent busy with other workers' models)
are retried with a growing pause; a refusal of the request itself is not.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import time
from dataclasses import asdict
from urllib.parse import urlencode

import numpy as np

from ..targets import Target, TargetError, normalise_arch, parse_device
from .agent import PROTOCOL
from .timing import LatencyStats, Measurement, TimingPlan, measuring_setup

CONNECT_TIMEOUT_S = 10.0
INFO_TIMEOUT_S = 30.0  # /info does no work: a slow answer means a broken link
QUEUE_TIMEOUT_S = 2.0  # asking a farm's boards how busy they are: one that is this slow is passed over
REPLY_MARGIN_S = 60.0  # on top of the agent's own bound (queue wait + time limit): transfer of the model
ATTEMPTS = 5
FIRST_PAUSE_S = 0.5  # doubled after each failed attempt: 7.5 s of pauses in all

log = logging.getLogger(__name__)


class AgentError(RuntimeError):
    """The agent refused or failed a request (``status``), or was not reached (``status`` None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class AgentMeasurer:
    """Times models on a board agent, and runs inputs through them there."""

    runs_elsewhere = True  # models run on the board's kernels, which may differ from ours

    def __init__(self, target: Target, token: str | None, plan: TimingPlan = TimingPlan()):
        if not target.devices:
            raise TargetError(f"target {target.name} has no device: pass --device HOST:PORT of its agent")
        (self.device,) = target.devices  # one board; a farm has one AgentMeasurer for each
        if not token:
            raise TargetError(f"--device {self.device} needs the agent's token: --token SECRET or $EDGENAS_TOKEN")
        self.target = target
        self.plan = plan
        self.host, self.port = parse_device(self.device)
        self.token = token
        info = self._connect()
        self.max_body_bytes = int(info["max_body_bytes"])
        self.reply_timeout_s = float(info["queue_wait_s"]) + float(info["time_limit_s"]) + REPLY_MARGIN_S
        agent_machine = info["machine"]
        self.machine = {
            **agent_machine,
            "threads": target.threads or agent_machine["cores"],
            "provider": target.provider,
            "via": "agent",
            "device": self.device,
        }
        self._check_suits_target(agent_machine)

    def identity(self) -> str:
        return measuring_setup(self.machine)

    def measure(self, onnx_bytes: bytes, plan: TimingPlan | None = None) -> Measurement:
        self._check_size(len(onnx_bytes))
        query = {**self._settings(), **asdict(plan or self.plan)}
        reply = json.loads(self._request("POST", "/measure", query, onnx_bytes))
        stats = LatencyStats.from_dict(reply["stats"])
        return Measurement(stats, {**reply["measured_on"], "via": "agent", "device": self.device})

    def run(self, onnx_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
        """The model's first output for ``inputs`` (batch first), computed on the board.

        Inputs too large for one request go in several, each under the agent's size limit.
        """
        if len(inputs) == 0:
            raise ValueError("no inputs to run")
        row_bytes = max(1, inputs[0].nbytes)
        room = self.max_body_bytes - len(onnx_bytes) - 1024  # 1 KiB: the .npy header
        self._check_size(len(onnx_bytes) + 1024 + row_bytes)
        rows = max(1, room // row_bytes)
        query = {**self._settings(), "model_bytes": len(onnx_bytes)}
        outputs = []
        for start in range(0, len(inputs), rows):
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(inputs[start : start + rows]), allow_pickle=False)
            reply = self._request("POST", "/run", query, onnx_bytes + buffer.getvalue())
            outputs.append(np.load(io.BytesIO(reply), allow_pickle=False))
        return np.concatenate(outputs)

    def _settings(self) -> dict:
        settings = {"provider": self.target.provider}
        if self.target.threads:
            settings["threads"] = self.target.threads
        return settings

    def _check_size(self, body_bytes: int) -> None:
        if body_bytes > self.max_body_bytes:
            raise AgentError(
                f"{body_bytes} bytes to send, over the limit of the agent at {self.device} "
                f"({self.max_body_bytes}): restart it with a larger --max-model-mb"
            )

    def _connect(self) -> dict:
        """The agent's /info, or a TargetError that says what to do."""
        device = self.device
        try:
            info = json.loads(self._request("GET", "/info", {}, timeout=INFO_TIMEOUT_S))
        except AgentError as e:
            if e.status is None:
                raise TargetError(
                    f"cannot reach the agent at {device} ({e}): start it on the board with "
                    f"'python nas.py agent --host 0.0.0.0 --port {self.port} --token SECRET', or check --device"
                ) from None
            if e.status == 401:
                raise TargetError(f"the agent at {device} refused the token: pass the --token it was started with") from None
            raise TargetError(f"{device} answered /info with {e.status}: {e}; is it an edgenas agent?") from None
        except ValueError:
            raise TargetError(f"{device} answered /info with something other than JSON; is it an edgenas agent?") from None
        if info.get("protocol") != PROTOCOL:
            raise TargetError(
                f"the agent at {device} speaks protocol {info.get('protocol')}, this search {PROTOCOL}: "
                f"copy this search/board/ to the board and restart the agent"
            )
        return info

    def _check_suits_target(self, agent_machine: dict) -> None:
        target, device = self.target, self.device
        arch = normalise_arch(agent_machine["arch"])
        if target.arch is not None and arch != target.arch:
            raise TargetError(
                f"target {target.name} needs latency measured on {target.arch}, but the agent at {device} runs on "
                f"{arch} ({agent_machine['cpu']}, host {agent_machine['host']}): start the agent on the "
                f"{target.arch} board, or choose a target for {arch}"
            )
        if target.provider not in agent_machine["providers"]:
            raise TargetError(
                f"target {target.name} needs ONNX Runtime's {target.provider}, which the agent at {device} lacks "
                f"(has {', '.join(agent_machine['providers'])})"
            )

    def _request(self, method: str, path: str, query: dict, body: bytes | None = None, timeout: float | None = None) -> bytes:
        """The reply's body for a 200; AgentError otherwise, after retrying what may pass."""
        url = f"{path}?{urlencode(query)}" if query else path
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        pause = FIRST_PAUSE_S
        for attempt in range(1, ATTEMPTS + 1):
            try:
                status, payload = _exchange(self.host, self.port, method, url, headers, body,
                                            timeout or self.reply_timeout_s)
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, cut short
                failure = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            else:
                if status == 200:
                    return payload
                if status != 503:  # busy is worth waiting for; any other refusal would only repeat
                    raise AgentError(_error_text(payload), status)
                failure = f"busy: {_error_text(payload)}"
            if attempt < ATTEMPTS:
                log.warning("agent at %s, %s %s: %s; retrying in %.1f s", self.device, method, path, failure, pause)
                time.sleep(pause)
                pause *= 2
        raise AgentError(f"{failure}, {ATTEMPTS} attempts")

    def queue_length(self, timeout: float = QUEUE_TIMEOUT_S) -> int:
        """Requests running or waiting on the board now, from one quick /info (AgentError if none)."""
        return int(agent_info(self.device, self.token, timeout)["queue"])


def agent_info(device: str, token: str, timeout: float = QUEUE_TIMEOUT_S) -> dict:
    """The /info of the agent at ``device``, asked once, without retries: AgentError if it does
    not answer within ``timeout`` (status None) or refuses (its status)."""
    host, port = parse_device(device)
    try:
        status, payload = _exchange(host, port, "GET", "/info", {"Authorization": f"Bearer {token}"}, None, timeout)
    except (OSError, http.client.HTTPException) as e:
        raise AgentError(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
    if status != 200:
        raise AgentError(_error_text(payload), status)
    try:
        return json.loads(payload)
    except ValueError:
        raise AgentError(f"{device} answered /info with something other than JSON", status) from None


def _exchange(host: str, port: int, method: str, url: str, headers: dict, body: bytes | None,
              timeout: float) -> tuple[int, bytes]:
    """One request on a new connection: a connect within ``timeout`` (at most CONNECT_TIMEOUT_S),
    then ``timeout`` for each read."""
    conn = http.client.HTTPConnection(host, port, timeout=min(timeout, CONNECT_TIMEOUT_S))
    try:
        conn.connect()
        conn.sock.settimeout(timeout)
        conn.request(method, url, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _error_text(payload: bytes) -> str:
    try:
        return str(json.loads(payload)["error"])
    except (ValueError, KeyError, TypeError):
        # Not an agent's reply (another web server's page): its start, on one line.
        return " ".join(payload[:200].decode("utf-8", "replace").split())
