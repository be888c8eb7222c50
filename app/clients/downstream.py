"""HTTP calls to the downstream AI services: timeouts, failover across URLs, typed errors.

A service may have several URLs. One round tries them in order, moving on after a connection
error, a timeout, a 429 or a 5xx; failed rounds are repeated with exponential backoff and jitter.
Any other 4xx, a redirect, or a 2xx that is not JSON is final at once: repeating the same request
cannot change the answer.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter

logger = logging.getLogger(__name__)

# Enough connections for every thread of a worker process to keep one per downstream host.
POOL_SIZE = 32
BODY_EXCERPT_CHARS = 200


class DownstreamError(Exception):
    """A downstream call failed; `retryable` says whether trying again later may succeed."""

    def __init__(
        self, message: str, *, retryable: bool, status: int | None = None, url: str | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.url = url


class DownstreamConnectionError(DownstreamError):
    """The service could not be reached (refused, reset, DNS)."""


class DownstreamTimeout(DownstreamError):
    """The service did not connect or answer within the timeout."""


class DownstreamHTTPError(DownstreamError):
    """The service answered with a status that is not success."""


class DownstreamBadResponse(DownstreamError):
    """The service answered 2xx with a body that is not JSON."""


def call_service(
    urls: list[str],
    path: str,
    payload: dict[str, Any],
    *,
    timeout: float,
    retries: int = 2,
    backoff: float = 0.2,
    session: requests.Session | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST payload as JSON to the first URL that answers; return the decoded JSON reply."""
    if not urls:
        raise DownstreamError("no URL configured for the service", retryable=False)
    session = session or _session()
    last_error: DownstreamError | None = None
    for round_number in range(retries + 1):
        if round_number:
            time.sleep(_backoff_delay(backoff, round_number))
        for base in urls:
            try:
                return _attempt(session, _join(base, path), payload, timeout, headers)
            except DownstreamError as error:
                if not error.retryable:
                    raise
                last_error = error
    assert last_error is not None
    raise last_error


def _attempt(
    session: requests.Session,
    url: str,
    payload: dict[str, Any],
    timeout: float,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    started = time.monotonic()
    try:
        response = session.post(
            url, json=payload, headers=headers, timeout=(timeout, timeout), allow_redirects=False
        )
        return _decode(response, url)
    except DownstreamError as error:
        _log_failure(url, str(error), started)
        raise
    except requests.RequestException as exc:
        classified = _classify(exc, url, timeout)
        _log_failure(url, str(classified), started)
        raise classified from exc


def _decode(response: requests.Response, url: str) -> dict[str, Any]:
    status = response.status_code
    if not 200 <= status < 300:
        retryable = status == 429 or status >= 500
        raise DownstreamHTTPError(
            f"{url} answered {status}: {_excerpt(response.text)}",
            retryable=retryable,
            status=status,
            url=url,
        )
    try:
        body = response.json()
    except ValueError:
        raise DownstreamBadResponse(
            f"{url} answered {status} with a body that is not JSON: {_excerpt(response.text)}",
            retryable=False,
            status=status,
            url=url,
        ) from None
    return body if isinstance(body, dict) else {"result": body}


def _classify(exc: requests.RequestException, url: str, timeout: float) -> DownstreamError:
    # ConnectTimeout is also a ConnectionError: test for timeouts first.
    if isinstance(exc, requests.Timeout):
        return DownstreamTimeout(f"{url} timed out after {timeout}s", retryable=True, url=url)
    if isinstance(
        exc,
        (
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema,
        ),
    ):
        return DownstreamError(f"{url} is not a usable URL: {exc}", retryable=False, url=url)
    if isinstance(exc, requests.ConnectionError):
        return DownstreamConnectionError(
            f"{url} unreachable: {_reason(exc)}", retryable=True, url=url
        )
    # A broken or undecodable reply stream is a transient fault of the connection.
    return DownstreamConnectionError(f"{url} failed: {_reason(exc)}", retryable=True, url=url)


def _log_failure(url: str, outcome: str, started: float) -> None:
    elapsed_ms = round((time.monotonic() - started) * 1000)
    logger.warning(
        "downstream attempt failed url=%s outcome=%s elapsed_ms=%d", url, outcome, elapsed_ms
    )


def _backoff_delay(backoff: float, round_number: int) -> float:
    # Random jitter on top of the exponential base spreads the retries of many workers apart.
    base = backoff * 2 ** (round_number - 1)
    return base + random.uniform(0, base)


def _join(base: str, path: str) -> str:
    if not path:
        return base
    return base.rstrip("/") + "/" + path.lstrip("/")


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat[:BODY_EXCERPT_CHARS] or "(empty body)"


def _reason(exc: Exception) -> str:
    detail = f" ({exc.args[0]})" if exc.args else ""
    return (type(exc).__name__ + detail)[:BODY_EXCERPT_CHARS]


_sessions: dict[int, requests.Session] = {}
_sessions_lock = threading.Lock()


def _session() -> requests.Session:
    # Keyed by pid: a session created before a prefork fork must not share sockets with children.
    pid = os.getpid()
    session = _sessions.get(pid)
    if session is None:
        with _sessions_lock:
            session = _sessions.get(pid)
            if session is None:
                session = requests.Session()
                adapter = HTTPAdapter(pool_connections=POOL_SIZE, pool_maxsize=POOL_SIZE)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                session.headers["User-Agent"] = "orchestrator-service"
                _sessions.clear()
                _sessions[pid] = session
    return session
