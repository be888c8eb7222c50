"""What the benchmark talks to: the API over HTTP, and PostgreSQL/Redis directly for measurements."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import redis

# The admin key the bench's stack is started with; in the environment so that the load
# generator's subprocess uses the same one.
API_KEY = os.environ.setdefault("BENCH_API_KEY", "orch_bench_" + secrets.token_urlsafe(16))


class Api:
    """A small keep-alive HTTP client (reconnects when gunicorn closes the connection)."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one request and read the whole answer; (status, parsed JSON)."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {API_KEY}"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
                if response.will_close:
                    self._conn.close()
                    self._conn = None
                return response.status, json.loads(raw) if raw else None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        """Like request(), but raise unless the status is `expect`."""
        status, document = self.request(method, path, body)
        if status != expect:
            raise RuntimeError(f"{method} {path} answered {status}: {document}")
        return document

    def wait_for(self, path: str, done, timeout: float, interval: float = 0.02) -> Any:
        """Poll GET path until done(document); the document, or raise after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            document = self.call("GET", path)
            if done(document):
                return document
            if time.monotonic() > deadline:
                raise TimeoutError(f"GET {path} not done after {timeout:.0f} s: {document}")
            time.sleep(interval)


def database() -> psycopg2.extensions.connection:
    """An autocommit connection to the benchmark's database (measurements only)."""
    url = os.environ["DATABASE_URL"].replace("postgresql+psycopg2://", "postgresql://", 1)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def broker() -> redis.Redis:
    """The Redis DB the stack uses."""
    return redis.Redis.from_url(os.environ["REDIS_URL"])
