"""`python -m bench.fake_ai --port P --delay S`: a downstream AI service for the benchmarks.

Answers every POST after `delay` seconds with a small JSON body, keeps connections alive, and
counts requests in flight and their peak (GET /stats, POST /reset). A thread per connection and
a deep listen backlog let it hold hundreds of requests at once (http.server's default backlog
of 5 refuses connections long before that).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Counters:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.requests = 0

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.requests += 1
            self.peak = max(self.peak, self.in_flight)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"in_flight": self.in_flight, "peak": self.peak, "requests": self.requests}

    def reset(self, delay: float | None) -> None:
        with self.lock:
            self.peak, self.requests = self.in_flight, 0
            if delay is not None:
                self.delay = delay


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def handler(counters: Counters) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The headers and the body go out as two writes; with Nagle's algorithm the body waits
        # for the client's delayed ACK (up to 40 ms on Linux), which would add to every call.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._reply(counters.stats() if self.path == "/stats" else {"status": "ok"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path.startswith("/reset"):
                body = json.loads(raw or b"{}")
                counters.reset(body.get("delay"))
                self._reply(counters.stats())
                return
            counters.enter()
            try:
                time.sleep(counters.delay)
                self._reply({"image": "generated.png"})
            finally:
                counters.leave()

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_ai")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.1)
    args = parser.parse_args()
    counters = Counters(args.delay)
    server = Server(("127.0.0.1", args.port), handler(counters))
    print(f"fake AI service on 127.0.0.1:{args.port}, {args.delay * 1000:.0f} ms", flush=True)
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
