"""One HTTP call to a downstream AI service: a timeout, typed errors, nothing repeated here.

A connection error, a timeout, a 429 or a 5xx is `retryable` (the registry moves on to the next
URL, or tries again later); any other 4xx, a redirect, or a 2xx that is not JSON is final:
repeating the same request cannot change the answer. A 429's `Retry-After` is kept on the error.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import urllib3
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.exceptions import (
    HTTPError,
    LocationValueError,
    NewConnectionError,
)
from urllib3.exceptions import (
    TimeoutError as Urllib3Timeout,
)

logger = logging.getLogger(__name__)

# Enough kept-alive connections for every call a worker process has in flight to one host.
POOL_SIZE = 256
BODY_EXCERPT_CHARS = 200
# A service asking for a longer pause than this is paused this long, then tried again.
MAX_RETRY_AFTER_S = 300.0
USER_AGENT = "orchestrator-service"


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
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST payload as JSON to one URL, once; return the decoded JSON reply.

    Failover across a service's URLs and retries belong to the registry
    (app/services/registry.py), which calls this once per attempt.
    """
    if not base:
        raise DownstreamError("no URL configured for the service", retryable=False)
    return _attempt(_join(base, path), payload, timeout, headers)


def _attempt(
    url: str, payload: dict[str, Any], timeout: float, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    started = time.monotonic()
    try:
        try:
            body = json.dumps(payload, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise DownstreamError(f"the payload is not JSON: {exc}", retryable=False) from None
        response = _pool().request(
            "POST",
            url,
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                **(headers or {}),
            },
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            # Neither here: a redirect is answered as it is (a final error), and the registry
            # decides about trying again.
            redirect=False,
            retries=False,
        )
        return _decode(response, url)
    except DownstreamError as error:
        _log_failure(url, str(error), started)
        raise
    except (HTTPError, OSError) as exc:
        classified = _classify(exc, url, timeout)
        _log_failure(url, str(classified), started)
        raise classified from exc


def _decode(response: urllib3.BaseHTTPResponse, url: str) -> dict[str, Any]:
    status = response.status
    if not 200 <= status < 300:
        retryable = status == 429 or status >= 500
        raise DownstreamHTTPError(
            f"{url} answered {status}: {_excerpt(response.data)}",
            retryable=retryable,
            status=status,
            url=url,
            retry_after=_retry_after(response.headers.get("Retry-After")) if retryable else None,
        )
    try:
        body = json.loads(response.data)
    except ValueError:
        raise DownstreamBadResponse(
            f"{url} answered {status} with a body that is not JSON: {_excerpt(response.data)}",
            retryable=False,
            status=status,
            url=url,
        ) from None
    return body if isinstance(body, dict) else {"result": body}


def _classify(exc: Exception, url: str, timeout: float) -> DownstreamError:
    # A refused connection is a NewConnectionError, which urllib3 derives from its connect
    # timeout: test for it first.
    if isinstance(exc, NewConnectionError):
        return DownstreamConnectionError(
            f"{url} unreachable: {_reason(exc)}", retryable=True, url=url
        )
    if isinstance(exc, Urllib3Timeout):
        return DownstreamTimeout(f"{url} timed out after {timeout}s", retryable=True, url=url)
    if isinstance(exc, LocationValueError):
        return DownstreamError(f"{url} is not a usable URL: {exc}", retryable=False, url=url)
    # Reset, refused at a lower level, or a broken or undecodable reply stream: transient faults
    # of the connection.
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


def _excerpt(raw: bytes) -> str:
    flat = " ".join(raw.decode("utf-8", "replace").split())
    return flat[:BODY_EXCERPT_CHARS] or "(empty body)"


def _reason(exc: Exception) -> str:
    detail = f" ({exc.args[0]})" if exc.args else ""
    return (type(exc).__name__ + detail)[:BODY_EXCERPT_CHARS]


_pools: dict[int, urllib3.PoolManager] = {}
_pools_lock = threading.Lock()


def _pool() -> urllib3.PoolManager:
    """The process's connection pools (urllib3 directly: requests' session layer cost about
    twice the CPU of the whole HTTP exchange per call, measured in docs/performance.md).

    Keyed by pid: pools created before a prefork fork must not share sockets with children.
    Certificates are checked against the same bundle requests uses (REQUESTS_CA_BUNDLE if set).
    Proxy variables of the environment are not followed: the URL guard checks the address a call
    connects to, which a proxy would replace.
    """
    pid = os.getpid()
    pool = _pools.get(pid)
    if pool is None:
        with _pools_lock:
            pool = _pools.get(pid)
            if pool is None:
                pool = urllib3.PoolManager(
                    num_pools=POOL_SIZE,
                    maxsize=POOL_SIZE,
                    cert_reqs="CERT_REQUIRED",
                    ca_certs=os.environ.get("REQUESTS_CA_BUNDLE") or DEFAULT_CA_BUNDLE_PATH,
                )
                _pools.clear()
                _pools[pid] = pool
    return pool
