"""A real HTTP server on 127.0.0.1 that speaks OpenAI chat-completions.

Used by the teacher tests, the loop's end-to-end tests and bench/teacher_bench.py.
It serves `POST /v1/chat/completions` and `GET /v1/models` from a thread pool
(stdlib ThreadingHTTPServer), with:

- scripted answers: `answer(messages) -> str` (default: "... #### 42");
- fault injection per request: `fault_rate` (deterministic: decided by a hash of
  seed, request fingerprint and attempt number, so thread timing never changes
  which attempts fail), `fault_fn(fingerprint, attempt, body) -> kind | None`,
  or `queue_faults([...])` for the next requests.  Kinds: FAULT_KINDS;
- fixed latency per request; usage numbers that make costs exact;
- thread-safe counters: `requests` (every HTTP request), `completions` (200s
  with a real answer: what a provider would bill), `billed` per fingerprint.

    with FakeOpenAIServer(answer=lambda msgs: "#### 7", latency=0.2) as srv:
        litellm.completion(model="openai/fake", api_base=srv.base_url, api_key="x", ...)
        assert srv.requests == 1

or the pytest fixture `fake_server` (import it into a conftest.py), or
`FakeServerProcess` for a server in a child process (counters over GET /_stats,
reset with POST /_reset): `python tests/fakeserver.py --latency 0.2` serves one
from the command line and prints "PORT <n>".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable

FAULT_KINDS = (
    "429",  # rate limited, with Retry-After / retry-after-ms headers
    "500",
    "503",
    "timeout",  # hang until the client gives up (or hang_s passes)
    "reset",  # TCP connection reset before any response
    "malformed",  # 200 with a body that is not JSON
    "empty",  # 200 with empty content
    "no_answer",  # 200 with text that has no final "#### <number>" line
)
# Faults after which the client must try again; "no_answer" is a billed success.
RETRYABLE_FAULTS = tuple(k for k in FAULT_KINDS if k != "no_answer")

Messages = list[dict]


def planted_secret() -> str:
    """A made-up credential for the tests that check keys never reach the
    store: made at run time, so nothing that looks like a key is committed."""
    import secrets

    return "planted-" + secrets.token_hex(16)


def default_answer(messages: Messages) -> str:
    return "Step 1: add the numbers.\nStep 2: check the result.\n#### 42"


def fingerprint(body: dict) -> str:
    """Identity of a request across retries: its messages and sampling params."""
    ident = {k: body.get(k) for k in ("model", "messages", "temperature", "top_p", "max_tokens", "seed", "n")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


class FakeOpenAIServer:
    def __init__(
        self,
        answer: Callable[[Messages], str] = default_answer,
        *,
        latency: float = 0.0,
        fault_rate: float = 0.0,
        fault_kinds: Iterable[str] = RETRYABLE_FAULTS,
        fault_fn: Callable[[str, int, dict], str | None] | None = None,
        seed: int = 0,
        retry_after_s: float = 0.05,
        hang_s: float = 30.0,
        api_key: str | None = None,
        models: Iterable[str] = ("fake",),
        completion_tokens: Callable[[dict, str], int] | None = None,
        port: int = 0,  # 0: a free port chosen by the OS
    ) -> None:
        self._requested_port = port
        self.answer = answer
        self.latency = latency
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        for k in self.fault_kinds:
            if k not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {k!r}; known: {FAULT_KINDS}")
        self.fault_fn = fault_fn
        self.seed = seed
        self.retry_after_s = retry_after_s
        self.hang_s = hang_s
        self.api_key = api_key  # when set, requests without "Bearer <api_key>" get 401
        self.models = list(models)
        # usage.completion_tokens for a response; default: whitespace words, capped at max_tokens
        self.completion_tokens = completion_tokens
        self._lock = threading.Lock()
        self._queued: list[str] = []
        self._attempts: Counter[str] = Counter()
        self._stop = threading.Event()
        self.requests = 0  # every HTTP request received
        self.completions = 0  # successful completions delivered (what a provider bills)
        self.billed: Counter[str] = Counter()  # fingerprint -> completions delivered
        self.faults: Counter[str] = Counter()  # kind -> times injected
        self.auth_headers: list[str] = []  # Authorization headers seen (tests check keys)
        self.bodies: list[dict] = []
        self.in_flight = 0  # chat requests being handled right now
        self.peak_in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # A subclass of _Handler that serves more routes (tests/batch_fakeserver.py); None: _Handler.
    handler_class: type | None = None

    # -- lifecycle --------------------------------------------------------
    def start(self) -> "FakeOpenAIServer":
        server = self

        class Handler(self.handler_class or _Handler):
            srv = server

        self._stop.clear()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._requested_port), Handler)
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 256
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes hanging handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting --------------------------------------------------------
    def queue_faults(self, kinds: Iterable[str]) -> None:
        """The next len(kinds) chat requests get these faults, in order (None = no fault)."""
        with self._lock:
            self._queued.extend(kinds)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = 0
            self.completions = 0
            self.billed.clear()
            self.faults.clear()
            self.auth_headers.clear()
            self.bodies.clear()
            self.peak_in_flight = self.in_flight

    def stats(self) -> dict:
        return {"requests": self.requests, "completions": self.completions, "billed": dict(self.billed),
                "faults": dict(self.faults), "peak_in_flight": self.peak_in_flight}

    def _choose_fault(self, fp: str, body: dict) -> str | None:
        with self._lock:
            self._attempts[fp] += 1
            attempt = self._attempts[fp]
            if self._queued:
                return self._queued.pop(0)
        if self.fault_fn is not None:
            return self.fault_fn(fp, attempt, body)
        if self.fault_rate > 0:
            rng = random.Random(f"{self.seed}:{fp}:{attempt}")
            if rng.random() < self.fault_rate:
                return rng.choice(self.fault_kinds)
        return None

    def _count_tokens(self, body: dict, text: str) -> int:
        if self.completion_tokens is not None:
            return self.completion_tokens(body, text)
        n = len(text.split())
        mt = body.get("max_tokens") or body.get("max_completion_tokens")
        return min(n, mt) if mt else n


class _Handler(BaseHTTPRequestHandler):
    srv: FakeOpenAIServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm and the
    # client's delayed ACK that costs ~40 ms per response.  Real servers set
    # TCP_NODELAY, so must we, or every latency measured here is 40 ms too long.
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send_json(self, code: int, doc: dict | str, headers: dict[str, str] | None = None) -> None:
        raw = (doc if isinstance(doc, str) else json.dumps(doc)).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, code: int, message: str, etype: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(code, {"error": {"message": message, "type": etype, "code": str(code)}}, headers)

    def do_GET(self) -> None:
        srv = self.srv
        if self.path == "/_stats":  # counters for a server in another process (not counted)
            with srv._lock:
                self._send_json(200, srv.stats())
            return
        with srv._lock:
            srv.requests += 1
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send_json(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in srv.models]})
        else:
            self._error(404, f"no route {self.path}", "not_found")

    def do_POST(self) -> None:
        srv = self.srv
        with srv._lock:
            srv.in_flight += 1
            srv.peak_in_flight = max(srv.peak_in_flight, srv.in_flight)
        try:
            self._post()
        finally:
            with srv._lock:
                srv.in_flight -= 1

    def _post(self) -> None:
        srv = self.srv
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path == "/_reset":
            srv.reset_counts()
            self._send_json(200, {"ok": True})
            return
        with srv._lock:
            srv.requests += 1
            srv.auth_headers.append(self.headers.get("Authorization", ""))
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route {self.path}", "not_found")
            return
        if srv.api_key is not None and self.headers.get("Authorization") != f"Bearer {srv.api_key}":
            # like OpenAI: echo a masked form of the key that was sent
            sent = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            masked = sent[:8] + "*" * max(len(sent) - 12, 0) + sent[-4:] if len(sent) > 12 else "***"
            self._error(401, f"Incorrect API key provided: {masked}. You can find your API key at "
                        "https://platform.openai.com/account/api-keys.", "invalid_request_error")
            return
        try:
            body = json.loads(raw)
            messages = body["messages"]
        except (ValueError, KeyError):
            self._error(400, "body must be JSON with 'messages'", "invalid_request_error")
            return
        if body.get("model") not in srv.models:
            self._error(404, f"The model `{body.get('model')}` does not exist", "invalid_request_error")
            return
        with srv._lock:
            srv.bodies.append(body)
        fp = fingerprint(body)
        fault = srv._choose_fault(fp, body)
        if fault is not None:
            with srv._lock:
                srv.faults[fault] += 1
        if srv.latency:
            srv._stop.wait(srv.latency)

        if fault == "429":
            ms = int(srv.retry_after_s * 1000)
            self._error(429, "Rate limit reached, retry later.", "rate_limit_error",
                        {"Retry-After": str(max(1, round(srv.retry_after_s))) if srv.retry_after_s >= 1 else f"{srv.retry_after_s:g}",
                         "retry-after-ms": str(ms)})
            return
        if fault in ("500", "503"):
            self._error(int(fault), "The server had an error while processing your request.", "server_error")
            return
        if fault == "timeout":
            srv._stop.wait(srv.hang_s)
            self.close_connection = True
            return
        if fault == "reset":
            # SO_LINGER 0 makes close() send RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if fault == "malformed":
            self._send_json(200, '{"id": "chatcmpl-x", "choices": [ {"message": ')
            return

        if fault == "empty":
            text = ""
        elif fault == "no_answer":
            text = "I am not sure how to solve this one."
        else:
            text = srv.answer(messages)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion_tokens = srv._count_tokens(body, text)
        if text:
            with srv._lock:
                srv.completions += 1
                srv.billed[fp] += 1
        self._send_json(200, {
            "id": f"chatcmpl-{fp}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })


class FakeServerProcess:
    """The same server in a child process, so that its threads do not share
    the GIL with the client under test (bench/teacher_bench.py).  Scripted
    answers are the default ones; counters are read over HTTP (GET /_stats)."""

    def __init__(self, *, latency: float = 0.0, fault_rate: float = 0.0, seed: int = 0) -> None:
        self.args = ["--latency", str(latency), "--fault-rate", str(fault_rate), "--seed", str(seed)]
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> "FakeServerProcess":
        self.proc = subprocess.Popen([sys.executable, __file__, *self.args], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> "FakeServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stats", timeout=10) as r:
            return json.loads(r.read())

    @property
    def requests(self) -> int:
        return self.stats()["requests"]

    def reset_counts(self) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/_reset", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass


def _serve_main() -> None:
    ap = argparse.ArgumentParser(description="OpenAI chat-completions fake server on 127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    srv = FakeOpenAIServer(latency=a.latency, fault_rate=a.fault_rate, seed=a.seed, port=a.port)
    srv.start()
    print(f"PORT {srv.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    srv.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


try:  # the fixture is optional so bench/ can import this module without pytest
    import pytest

    @pytest.fixture
    def fake_server():
        """A started FakeOpenAIServer; set attributes (answer, fault_rate, ...) in the test."""
        with FakeOpenAIServer() as srv:
            yield srv
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    _serve_main()
