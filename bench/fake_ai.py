"""`python -m bench.fake_ai --port P --delay S`: a downstream AI service for the benchmarks.

Answers every POST after `delay` seconds with a small JSON body, keeps connections alive, and
counts requests in flight and their peak (GET /stats, POST /reset). One asyncio event loop serves
every connection (a deep listen backlog, no thread per connection), so the stand-in costs little
CPU per answer and is not what caps a fan-out's rate: the thread-per-connection `http.server`
it replaces spent most of a core at about 450 answers a second, on the same cores as the
service and the baseline it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

BACKLOG = 1024


class Counters:
    """Requests in flight, their peak and how many came; one event loop, so no lock."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.in_flight = 0
        self.peak = 0
        self.requests = 0

    def enter(self) -> None:
        self.in_flight += 1
        self.requests += 1
        self.peak = max(self.peak, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def stats(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "peak": self.peak, "requests": self.requests}

    def reset(self, delay: float | None) -> None:
        self.peak, self.requests = self.in_flight, 0
        if delay is not None:
            self.delay = delay


def _answer(body: dict[str, Any], keep_alive: bool) -> bytes:
    raw = json.dumps(body).encode()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}"
        "\r\n\r\n"
    )
    # Headers and body in one write: no second segment waiting for a delayed ACK.
    return head.encode() + raw


async def _serve(
    counters: Counters, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, *_ = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            raw = await reader.readexactly(length) if length else b""
            keep_alive = headers.get("connection", "").lower() != "close"
            if method == "GET":
                body = counters.stats() if path == "/stats" else {"status": "ok"}
            elif path.startswith("/reset"):
                counters.reset(json.loads(raw or b"{}").get("delay"))
                body = counters.stats()
            else:
                counters.enter()
                try:
                    await asyncio.sleep(counters.delay)
                finally:
                    counters.leave()
                body = {"image": "generated.png"}
            writer.write(_answer(body, keep_alive))
            await writer.drain()
            if not keep_alive:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def _main(port: int, delay: float) -> None:
    counters = Counters(delay)
    server = await asyncio.start_server(
        lambda r, w: _serve(counters, r, w), "127.0.0.1", port, backlog=BACKLOG
    )
    print(f"fake AI service on 127.0.0.1:{port}, {delay * 1000:.0f} ms", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_ai")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.1)
    args = parser.parse_args()
    asyncio.run(_main(args.port, args.delay))


if __name__ == "__main__":
    main()
