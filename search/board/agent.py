"""The board agent: measures ONNX files for search workers, one model at a time.

    python -m search.board.agent --port 8470 --token SECRET    # on the board
    python nas.py agent --port 8470 --token SECRET             # the same, from a full checkout

It needs Python 3.11+, ``pip install onnxruntime numpy``, and a copy of
``search/__init__.py`` and ``search/board/``: this module imports only the standard
library, numpy, onnxruntime and ``timing`` beside it. It listens on loopback unless ``--host`` says otherwise. The token
is its only protection and the traffic is plain HTTP, so on a network reach it through
an SSH tunnel (``ssh -L 8470:127.0.0.1:8470 board``) or a network you trust.

Protocol (HTTP/1.1; every request carries ``Authorization: Bearer TOKEN``; every error
is a JSON ``{"error": "..."}`` with the status below):

``GET /info``
    ``{"protocol": 3, "machine": {...}, "max_body_bytes": N, "time_limit_s": S,
    "queue_wait_s": S, "queue": N}``: a reply comes within queue_wait_s +
    time_limit_s; ``machine`` is ``timing.machine_info()``: host, cpu, arch, cores,
    onnxruntime version and providers, emulated; ``queue`` is the number of requests
    running or waiting for the model now (a farm sends work to the shortest).
``POST /measure?threads=N&provider=NAME&<TimingPlan field>=VALUE...``
    Body: the ONNX file. Batch-1 latency of the model, timed as ``TimingPlan`` says
    (fields not given keep their defaults; no ``threads``: one per core). Reply:
    ``{"stats": {p50_ms, p90_ms, p10_ms, mean_ms, std_ms, min_ms, max_ms, runs,
    spread}, "measured_on": {... machine, "threads", "provider"}, "queued_s": S,
    "seconds": S}``: seconds waiting for other requests' models, then measuring.
``POST /run?model_bytes=N&threads=N&provider=NAME``
    Body: the ONNX file (its first N bytes) followed by a ``.npy`` array of inputs,
    batch first. Reply (``application/octet-stream``): a ``.npy`` array of the model's
    first output for those inputs, computed by this machine's ONNX Runtime kernels.

Statuses: 400 bad parameters, or a model or input ONNX Runtime refuses; 401 no or
wrong token; 404 unknown path; 411 no Content-Length; 413 body over the size limit
(refused from Content-Length, before reading the body); 500 the model crashed ONNX
Runtime; 503 too many requests queued (retry later); 504 over the time limit.

Why it is built this way:

- One model at a time: a lock around every measurement and run, so two search
  workers never time their models against each other. At most ``MAX_QUEUED``
  requests wait for it holding a body in memory; more are told 503.
- Each model runs in a child process forked from a clean, single-threaded fork
  server that has ONNX Runtime already imported (cheap per request, even under
  emulation). A model that crashes ONNX Runtime or eats all memory takes down its
  child, not the agent; a model over the time limit is killed. The child times the
  model exactly as the search host would in-process (``bench/agent.py`` compares the
  two). It runs in an empty working directory, so a model's external-data references
  find nothing of the board's files.
- Every socket read has a time-out, so a stalled client cannot hold a thread forever.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hmac
import io
import json
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import onnxruntime as ort

from .timing import TimingPlan, machine_info, make_session, measure_latency

PROTOCOL = 3  # bumped when a request or reply changes shape; the client checks it
SOCKET_TIMEOUT_S = 30.0  # longest wait for the next bytes of a request
DRAIN_S = 5.0  # longest the agent reads a refused body, so the client gets to read the refusal
TIME_LIMIT_S = 300.0  # hard limit on one measurement or run, model loading included
QUEUE_WAIT_S = 600.0  # longest a request waits for the model before it; then 503
MAX_QUEUED = 8  # requests holding a body while they wait: bounds memory
RUN_BATCH = 256  # /run feeds inputs in chunks of this size: bounds activation memory

log = logging.getLogger(__name__)


class RequestError(Exception):
    """A request the agent refuses or fails: becomes a JSON error reply with ``status``."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class ModelRunner:
    """Runs one job at a time, each in a child process with a hard time limit."""

    def __init__(self, time_limit_s: float):
        self.time_limit_s = time_limit_s
        self.lock = threading.Lock()
        self.queue_slots = threading.BoundedSemaphore(MAX_QUEUED)
        self.queued = 0  # requests holding a queue slot: running or waiting for the model
        self._queued_lock = threading.Lock()
        self.context = multiprocessing.get_context("forkserver")
        # The fork server imports ONNX Runtime once; each child is a fork of it.
        self.context.set_forkserver_preload([__name__])

    @contextlib.contextmanager
    def queue_slot(self):
        """Hold one of the queue's slots (a request's body in memory), or refuse with 503."""
        if not self.queue_slots.acquire(blocking=False):
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, f"{MAX_QUEUED} requests already waiting")
        with self._queued_lock:
            self.queued += 1
        try:
            yield
        finally:
            with self._queued_lock:
                self.queued -= 1
            self.queue_slots.release()

    def warm_up(self) -> None:
        """Start the fork server now, so that the first request does not pay for it."""
        self._in_child(bool, ())

    def run(self, job, args: tuple) -> tuple[object, float, float]:
        """``job(*args)`` in a child process, after the jobs before it have finished.

        Returns the job's result, the seconds it waited for the jobs before it, and
        the seconds it ran.
        """
        asked = time.perf_counter()
        if not self.lock.acquire(timeout=QUEUE_WAIT_S):
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, f"waited {QUEUE_WAIT_S:.0f} s for the models ahead")
        started = time.perf_counter()
        try:
            return self._in_child(job, args), started - asked, time.perf_counter() - started
        finally:
            self.lock.release()

    def _in_child(self, job, args: tuple):
        reader, writer = self.context.Pipe(duplex=False)
        child = self.context.Process(target=_child_main, args=(writer, job, args), daemon=True)
        child.start()
        writer.close()  # only the child writes: EOF on the reader then means the child is gone
        try:
            if not reader.poll(self.time_limit_s):
                raise RequestError(HTTPStatus.GATEWAY_TIMEOUT, f"stopped after the time limit of {self.time_limit_s:g} s")
            try:
                ok, value = reader.recv()
            except EOFError:
                child.join(5)
                raise RequestError(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    f"the model crashed ONNX Runtime ({_exit_reason(child.exitcode)})",
                ) from None
        finally:
            reader.close()
            if child.is_alive():
                child.kill()
            child.join()
        if not ok:
            raise RequestError(HTTPStatus.BAD_REQUEST, value)
        return value


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


def _child_main(writer, job, args: tuple) -> None:
    """In the child: run the job in an empty directory, send back (ok, value or message)."""
    with tempfile.TemporaryDirectory(prefix="edgenas-agent-") as empty:
        os.chdir(empty)
        try:
            result = (True, job(*args))
        except Exception as e:  # the model's fault, reported to the client; the agent goes on
            result = (False, f"{type(e).__name__}: {e}".splitlines()[0][:500])
    writer.send(result)
    writer.close()


class SlowedSession:
    """An ONNX Runtime session whose every run takes ``factor`` times as long: a board that
    is slower than its kind (``--slowdown``, for tests of a farm's reference check)."""

    def __init__(self, session: ort.InferenceSession, factor: float):
        self.session = session
        self.factor = factor

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, *args, **kwargs):
        start = time.perf_counter()
        outputs = self.session.run(*args, **kwargs)
        time.sleep((self.factor - 1) * (time.perf_counter() - start))
        return outputs


def open_session(onnx_bytes: bytes, threads: int | None, provider: str, slowdown: float = 1.0):
    session = make_session(onnx_bytes, threads, provider)
    return session if slowdown == 1 else SlowedSession(session, slowdown)


def measure_job(onnx_bytes: bytes, threads: int | None, provider: str, plan: TimingPlan, slowdown: float = 1.0) -> dict:
    opener = functools.partial(open_session, slowdown=slowdown)
    return measure_latency(onnx_bytes, threads, provider, plan, open_session=opener).as_dict()


def run_job(onnx_bytes: bytes, inputs: np.ndarray, threads: int | None, provider: str, slowdown: float = 1.0) -> bytes:
    """The model's first output for ``inputs``, as ``.npy`` bytes."""
    session = open_session(onnx_bytes, threads, provider, slowdown)
    name = session.get_inputs()[0].name
    outputs = [session.run(None, {name: inputs[i : i + RUN_BATCH]})[0] for i in range(0, len(inputs), RUN_BATCH)]
    buffer = io.BytesIO()
    np.save(buffer, np.concatenate(outputs), allow_pickle=False)
    return buffer.getvalue()


_PLAN_DEFAULTS = asdict(TimingPlan())


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True  # a request stuck in a model does not keep the agent from stopping

    def __init__(self, address: tuple[str, int], token: str, max_body_bytes: int, runner: ModelRunner,
                 slowdown: float = 1.0):
        super().__init__(address, AgentHandler)
        self.token = token.encode()
        self.max_body_bytes = max_body_bytes
        self.runner = runner
        self.machine = machine_info()
        self.slowdown = slowdown


class AgentHandler(BaseHTTPRequestHandler):
    server: AgentServer
    protocol_version = "HTTP/1.1"  # keep-alive: a search worker reuses its connection
    timeout = SOCKET_TIMEOUT_S
    server_version = f"edgenas-agent/{PROTOCOL}"

    def do_GET(self) -> None:
        self._handle({"/info": self._info})

    def do_POST(self) -> None:
        self._handle({"/measure": self._measure, "/run": self._run})

    def _handle(self, routes: dict) -> None:
        start = time.perf_counter()
        self.body_read = False
        url = urlsplit(self.path)
        try:
            self._check_token()
            if url.path not in routes:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no {self.command} {url.path}; see search/board/agent.py")
            status, content_type, body, note = routes[url.path](_query(url.query))
        except RequestError as e:
            status, content_type, note = e.status, "application/json", str(e)
            body = json.dumps({"error": str(e)}).encode()
        unread = 0 if self.body_read else _declared_length(self.headers)
        if unread:
            self.close_connection = True  # the unread body would be taken for the next request
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        if unread:
            self._drain_refused_body(unread)
        log.info(
            "%s %s %s -> %d %s (%.3f s)%s",
            self.client_address[0], self.command, url.path, status, status.phrase,
            time.perf_counter() - start, f": {note}" if note else "",
        )

    def log_request(self, code="-", size="-") -> None:
        """Silenced: ``_handle`` logs one line per request, with its outcome and time."""

    def log_error(self, format, *args) -> None:
        log.warning("%s %s", self.client_address[0], format % args)

    def _check_token(self) -> None:
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not hmac.compare_digest(given.encode(), self.server.token):
            raise RequestError(HTTPStatus.UNAUTHORIZED, "missing or wrong token (Authorization: Bearer TOKEN)")

    def _drain_refused_body(self, left: int) -> None:
        """Read and drop a body that was refused unread, for up to DRAIN_S seconds.

        Closing a socket with unread input resets the connection, and a reset can
        discard our reply before the client reads it: a client still sending a 30 MB
        model to a smaller limit saw "Broken pipe" instead of 413.
        """
        deadline = time.monotonic() + DRAIN_S
        try:
            self.connection.settimeout(DRAIN_S)
            while left > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass  # the client gave up first: nothing left to protect

    def _read_body(self) -> bytes:
        """The request body, refused from its declared length before a byte of it is read."""
        if not self.headers.get("Content-Length", "").isdigit():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
        length = _declared_length(self.headers)
        if length > self.server.max_body_bytes:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes is over this agent's limit of {self.server.max_body_bytes}",
            )
        body = self.rfile.read(length)
        self.body_read = True  # or what came of it: a short body leaves nothing to drain
        if len(body) != length:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body ended after {len(body)} of {length} bytes")
        return body

    def _queued_job(self, job, make_args):
        """Read the body and run the job, holding one of the queue's slots meanwhile."""
        with self.server.runner.queue_slot():
            return self.server.runner.run(job, make_args(self._read_body()))

    def _info(self, query: dict):
        info = {
            "protocol": PROTOCOL,
            "machine": self.server.machine,
            "max_body_bytes": self.server.max_body_bytes,
            "time_limit_s": self.server.runner.time_limit_s,
            "queue_wait_s": QUEUE_WAIT_S,
            "queue": self.server.runner.queued,
        }
        return HTTPStatus.OK, "application/json", json.dumps(info).encode(), ""

    def _measure(self, query: dict):
        threads, provider = self._threads_and_provider(query)
        plan = _timing_plan(query)
        slowdown = self.server.slowdown
        stats, queued_s, seconds = self._queued_job(measure_job, lambda body: (body, threads, provider, plan, slowdown))
        reply = {
            "stats": stats,
            "measured_on": {**machine_info(threads), "provider": provider},
            "queued_s": queued_s,
            "seconds": seconds,
        }
        return HTTPStatus.OK, "application/json", json.dumps(reply).encode(), f"p50 {stats['p50_ms']:.3f} ms"

    def _run(self, query: dict):
        threads, provider = self._threads_and_provider(query)
        model_bytes = _int_param(query, "model_bytes", 1, self.server.max_body_bytes)
        if model_bytes is None:
            raise RequestError(HTTPStatus.BAD_REQUEST, "/run needs model_bytes=N: the length of the ONNX file")

        def job_args(body: bytes) -> tuple:
            return body[:model_bytes], _load_npy(body[model_bytes:]), threads, provider, self.server.slowdown

        outputs, _, _ = self._queued_job(run_job, job_args)
        return HTTPStatus.OK, "application/octet-stream", outputs, ""

    def _threads_and_provider(self, query: dict) -> tuple[int | None, str]:
        threads = _int_param(query, "threads", 0, 1024) or None
        provider = query.pop("provider", "CPUExecutionProvider")
        available = self.server.machine["providers"]
        if provider not in available:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"provider {provider} is not available here; have {', '.join(available)}")
        return threads, provider


def _declared_length(headers) -> int:
    length = headers.get("Content-Length", "")
    return int(length) if length.isdigit() else 0


def _query(text: str) -> dict[str, str]:
    return dict(parse_qsl(text, keep_blank_values=True))


def _int_param(query: dict, name: str, low: int, high: int) -> int | None:
    text = query.pop(name, None)
    if text is None:
        return None
    if not text.isdigit() or not low <= int(text) <= high:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} must be an integer from {low} to {high}, got {text!r}")
    return int(text)


def _timing_plan(query: dict) -> TimingPlan:
    """TimingPlan from the query's fields (the rest keep their defaults); anything else is refused."""
    unknown = set(query) - set(_PLAN_DEFAULTS)
    if unknown:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"unknown parameters {sorted(unknown)}")
    values = {}
    for name, text in query.items():
        kind = type(_PLAN_DEFAULTS[name])
        try:
            values[name] = kind(text)
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} must be a number, got {text!r}") from None
        if not 0 <= values[name] < float("inf"):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} must be >= 0 and finite, got {text!r}")
    try:
        return replace(TimingPlan(), **values)
    except ValueError as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(e)) from None


def _load_npy(data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the inputs after the model are not a .npy array: {e}") from None


def serve(host: str, port: int, token: str, max_body_bytes: int, time_limit_s: float = TIME_LIMIT_S,
          slowdown: float = 1.0) -> int:
    """Serve until interrupted (Ctrl-C or SIGTERM); the exit status for the command line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent: %(message)s")
    runner = ModelRunner(time_limit_s)
    try:
        server = AgentServer((host, port), token, max_body_bytes, runner, slowdown)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", host, port, e)
        return 1
    runner.warm_up()  # connections wait in the listen queue meanwhile
    m = server.machine
    bound_host, bound_port = server.server_address[:2]
    log.info(
        "edgenas agent (protocol %d) listening on http://%s:%d: %s, %s, %d cores, ONNX Runtime %s%s",
        PROTOCOL, bound_host, bound_port, m["arch"], m["cpu"], m["cores"], m["onnxruntime"],
        ", EMULATED" if m["emulated"] else "",
    )
    if slowdown != 1:
        log.warning("every model runs %gx slower than this machine can (--slowdown): a test of a farm's check", slowdown)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening beyond loopback: plain HTTP, the token is the only protection")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run on the target board. Receives ONNX files from search workers, measures one at a time, "
        "replies with latency statistics and what it ran on. Needs only onnxruntime and numpy, and a copy of "
        "search/__init__.py and search/board/.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for the network)")
    parser.add_argument("--port", type=int, default=8470, help="(default: %(default)s)")
    parser.add_argument("--token", default=os.environ.get("EDGENAS_TOKEN"), help="required secret (default: $EDGENAS_TOKEN)")
    parser.add_argument("--max-model-mb", type=float, default=64.0, help="refuse larger models (default: %(default)s)")
    parser.add_argument("--time-limit-s", type=float, default=TIME_LIMIT_S, help="stop a measurement after this long (default: %(default)s)")
    parser.add_argument(
        "--slowdown", type=float, default=1.0, metavar="FACTOR",
        help="for tests only: run every model FACTOR times slower, as a board slower than its kind would "
        "(a search refuses such a board from a farm) (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if not args.token:
        print(f"{prog or 'agent'}: error: the agent needs --token SECRET (or $EDGENAS_TOKEN): it runs what it is sent",
              file=sys.stderr)
        return 2
    if not args.slowdown >= 1:
        print(f"{prog or 'agent'}: error: --slowdown must be a factor of at least 1, got {args.slowdown:g}", file=sys.stderr)
        return 2
    return serve(args.host, args.port, args.token, int(args.max_model_mb * 1024 * 1024), args.time_limit_s, args.slowdown)


if __name__ == "__main__":
    sys.exit(main(prog="python -m search.board.agent"))
