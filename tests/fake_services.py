"""Real HTTP servers on loopback that stand in for the downstream AI services in tests.

A FakeService answers with scripted responses, in order, then with its default; it records every
request it receives. `answer(n)` may answer by the request's number instead, and `loaded(n)` by
the requests in flight (counting the new one), for a service whose latency and errors depend
on its load. Load the fixtures with `pytest_plugins = ["tests.fake_services"]` or by
importing `fake_service` and `dead_url` into a conftest.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass(frozen=True)
class Scripted:
    """One response: status, body (JSON-encoded unless str or bytes), delay, extra headers."""

    status: int = 200
    body: Any = field(default_factory=lambda: {"ok": True})
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return json.dumps(self.body).encode(), "application/json"


@dataclass(frozen=True)
class Received:
    """One request the fake service received."""

    method: str
    path: str
    body: Any
    headers: dict[str, str]
    # time.monotonic() when it arrived.
    at: float = 0.0


ResponseSpec = Scripted | tuple[Any, ...]


class FakeService:
    """A threaded HTTP server on 127.0.0.1 whose answers the test scripts."""

    def __init__(
        self,
        responses: Iterable[ResponseSpec] = (),
        default: ResponseSpec | None = None,
        answer: Callable[[int], ResponseSpec] | None = None,
        loaded: Callable[[int], ResponseSpec] | None = None,
    ) -> None:
        """`answer(n)`, if given, answers the n-th request (from 0) once the script is used up;
        `loaded(n)` answers a request that finds n requests in flight (itself included)."""
        self._answer = answer
        self._loaded = loaded
        self._script = [_as_scripted(spec) for spec in responses]
        self._default = _as_scripted(default) if default is not None else Scripted()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.requests: list[Received] = []
        # Requests being answered now, and the most ever answered at once.
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval keeps close(), and so each test's teardown, fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL of the server, without a trailing slash."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        """Stop serving; a response still waiting out its delay is abandoned."""
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next(self, received: Received) -> Scripted:
        with self._lock:
            self.requests.append(received)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self._script:
                return self._script.pop(0)
            if self._answer is not None:
                return _as_scripted(self._answer(len(self.requests) - 1))
            if self._loaded is not None:
                return _as_scripted(self._loaded(self.in_flight))
            return self._default

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in two writes: with Nagle's algorithm the body would wait
            # for the client's delayed ACK (about 40 ms on Linux) and every answer would be slow.
            disable_nagle_algorithm = True
            # Idle keep-alive connections end on their own instead of outliving the test.
            timeout = 10

            def do_POST(self) -> None:
                self._answer()

            def do_GET(self) -> None:
                self._answer()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                received = Received(
                    self.command, self.path, _decode(raw), dict(self.headers), time.monotonic()
                )
                scripted = service._next(received)
                try:
                    if scripted.delay and service._closing.wait(scripted.delay):
                        return
                    self._send(scripted)
                finally:
                    service._done()

            def _send(self, scripted: Scripted) -> None:
                payload, content_type = scripted.encoded()
                try:
                    self.send_response(scripted.status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in scripted.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up (a timeout test): nothing left to answer.
                    pass

        return Handler


def make_dead_url() -> str:
    """A loopback URL on a port that was bound then closed, so connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def fake_service() -> Iterator[Callable[..., FakeService]]:
    """Factory: `server = fake_service(responses=[(503, {...}), (200, {...})])`; closed after."""
    started: list[FakeService] = []

    def start(
        responses: Iterable[ResponseSpec] = (),
        default: ResponseSpec | None = None,
        answer: Callable[[int], ResponseSpec] | None = None,
        loaded: Callable[[int], ResponseSpec] | None = None,
    ) -> FakeService:
        service = FakeService(responses, default, answer, loaded)
        started.append(service)
        return service

    yield start
    for service in started:
        service.close()


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback URL that refuses connections for the whole test."""
    # Holding the port bound (never listening) keeps it refused and stops anything reusing it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _as_scripted(spec: ResponseSpec) -> Scripted:
    if isinstance(spec, Scripted):
        return spec
    return Scripted(*spec)


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw
