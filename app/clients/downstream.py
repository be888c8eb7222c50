"""One HTTP call to a downstream AI service: a timeout, typed errors, nothing repeated here.

A connection error, a timeout, a 429 or a 5xx is `retryable` (the registry moves on to the next
URL, or tries again later); any other 4xx, a redirect, or a 2xx that is not JSON is final:
repeating the same request cannot change the answer. A 429's `Retry-After` is kept on the error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter

logger = logging.getLogger(__name__)

# Enough kept-alive connections for every call a worker process has in flight to one host.
POOL_SIZE = 256
BODY_EXCERPT_CHARS = 200
# A service asking for a longer pause than this is paused this long, then tried again.
MAX_RETRY_AFTER_S = 300.0


class DownstreamError(Exception):
    """A downstream call failed; `retryable` says whether trying again later may succeed."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        url: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.url = url
        # Seconds the service asked for (a 429's or 503's Retry-After), if any.
        self.retry_after = retry_after


class DownstreamConnectionError(DownstreamError):
    """The service could not be reached (refused, reset, DNS)."""


class DownstreamTimeout(DownstreamError):
    """The service did not connect or answer within the timeout."""


class DownstreamHTTPError(DownstreamError):
    """The service answered with a status that is not success."""


class DownstreamBadResponse(DownstreamError):
    """The service answered 2xx with a body that is not JSON."""


def post(
    base: str,
    path: str,
    payload: dict[str, Any],
    *,
    timeout: float,
    session: requests.Session | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST payload as JSON to one URL, once; return the decoded JSON reply.

    Failover across a service's URLs and retries belong to the registry
    (app/services/registry.py), which calls this once per attempt.
    """
    if not base:
        raise DownstreamError("no URL configured for the service", retryable=False)
    return _attempt(session or _session(), _join(base, path), payload, timeout, headers)


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
            retry_after=_retry_after(response.headers.get("Retry-After")) if retryable else None,
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


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the delay form; an HTTP date is read as no advice), capped."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or seconds != seconds or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


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
