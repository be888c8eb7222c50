"""Log lines as JSON objects (or text), each carrying the request id of the work it belongs to.

A request's id comes from its `X-Request-ID` header (nginx sets one) or is made here; it goes back
in the response's `X-Request-ID`, rides in the headers of every Celery message the request
publishes (app/dispatch.py), and is set again around the worker task that receives it
(workers/celery_app.py), so one grep finds the request, its chunks and their outcomes.

`LOG_FORMAT=json` (the default) writes one JSON object a line: `ts`, `level`, `logger`,
`message`, `request_id` when there is one, and any `fields` a caller passed in `extra`. gunicorn's
own lines take the same path (gunicorn.conf.py), and the Celery worker's (workers/celery_app.py).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request

REQUEST_ID_HEADER = "X-Request-ID"
# Printable, no spaces, bounded: a header that could break a log line or a grep is replaced.
_ACCEPTABLE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

request_log = logging.getLogger("app.requests")


def current_request_id() -> str | None:
    """The id of the request (or of the request behind the Celery task) being handled."""
    return _request_id.get()


@contextmanager
def request_id_context(request_id: str | None) -> Iterator[None]:
    """Make `request_id` current for the duration of the block (a worker task, say)."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def accept_request_id(raw: str | None) -> str:
    """The caller's id when it is sane, else a fresh one."""
    if raw and _ACCEPTABLE_ID.match(raw):
        return raw
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id (None outside any request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            document["request_id"] = request_id
        document.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, with the request id and the fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = dict(getattr(record, "fields", None) or {})
        request_id = getattr(record, "request_id", None)
        if request_id and "request_id" not in extras:
            extras["request_id"] = request_id
        if extras:
            line += " " + " ".join(f"{key}={value}" for key, value in extras.items())
        return line


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter LOG_FORMAT names: json, or text for reading in a terminal."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


def stream_handler(log_format: str) -> logging.Handler:
    """The one handler every process writes through: stderr, request ids, `log_format` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.orchestrator = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter_for(log_format))
    return handler


def configure_logging(
    log_format: str, level: int | str = logging.INFO, *, own: bool = False
) -> None:
    """Send the root logger's records to stderr in `log_format` (json or text).

    Leaves logging alone when something else already set it up (pytest, an embedding app),
    unless `own` is given (the Celery worker, which hands logging over to us).
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "orchestrator", False)]
    if ours:
        ours[0].setFormatter(formatter_for(log_format))
        return
    if root.handlers and not own:
        return
    if own:
        root.handlers = []
    root.addHandler(stream_handler(log_format))
    root.setLevel(level)


def gunicorn_logconfig(log_format: str) -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its own lines (start, workers, signals, errors) go through
    stream_handler like the app's; its access log stays off, as the app logs each request once."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"orchestrator": {"()": stream_handler, "log_format": log_format}},
        "root": {"level": "INFO", "handlers": ["orchestrator"]},
        "loggers": {
            # No level: gunicorn's --log-level (set before this config is applied) still rules.
            "gunicorn.error": {"handlers": [], "propagate": True},
            "gunicorn.access": {"handlers": [], "propagate": False},
        },
    }


def register_request_logging(app: Flask) -> None:
    """Give every request an id, return it in X-Request-ID, and log one line per request.

    Register before other after_request hooks: Flask runs them in reverse, so this one runs last
    and its duration includes theirs.
    """

    @app.before_request
    def _start() -> None:
        g.request_id = accept_request_id(request.headers.get(REQUEST_ID_HEADER))
        g.request_id_token = _request_id.set(g.request_id)
        g.request_started = time.perf_counter()

    @app.after_request
    def _log(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id is None:  # a hook before ours answered; still log and tag the response
            request_id = accept_request_id(request.headers.get(REQUEST_ID_HEADER))
        response.headers[REQUEST_ID_HEADER] = request_id
        started = g.get("request_started")
        request_log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "request_id": request_id,
                "fields": {
                    "event": "request",
                    "method": request.method,
                    "route": request.url_rule.rule if request.url_rule else None,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": (
                        None
                        if started is None
                        else round((time.perf_counter() - started) * 1000, 2)
                    ),
                    "remote_addr": request.remote_addr,
                    # Set by API-key authentication once it exists; null until then.
                    "key_name": g.get("api_key_name"),
                },
            },
        )
        return response

    @app.teardown_request
    def _forget(_error: BaseException | None) -> None:
        # Gunicorn's sync workers reuse the thread: the next request must not inherit the id.
        token = g.pop("request_id_token", None)
        if token is not None:
            try:
                _request_id.reset(token)
            except ValueError:  # reset from another context: clearing is what matters
                _request_id.set(None)
