"""Domain errors that carry their HTTP status, and the one place that turns errors into JSON."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, UnsupportedMediaType

from app.extensions import db

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A refusal the client can act on; subclasses fix the status and the code.

    One code per kind of refusal: every place that refuses for the same reason raises the same
    class, so clients can branch on `code` (the catalogue is `ERROR_CODES` below).
    """

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, **details: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


class Unauthorized(ServiceError):
    """No API key, or one that is unknown or revoked."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(
            message, headers={"WWW-Authenticate": 'Bearer realm="orchestrator"'}, **details
        )


class Forbidden(ServiceError):
    """A valid key whose role or tenant may not do this."""

    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class OverCapacity(ServiceError):
    status = 409
    code = "over_capacity"


class InProgress(ServiceError):
    """The first request with this Idempotency-Key has not answered yet."""

    status = 409
    code = "in_progress"


class Invalid(ServiceError):
    """A value the API does not accept: a field, a query parameter, a header."""

    status = 422
    code = "invalid"


class TooDeep(ServiceError):
    """A JSON document nested deeper than MAX_JSON_DEPTH."""

    status = 422
    code = "too_deep"


class KeyReused(ServiceError):
    """An Idempotency-Key sent again with a different request."""

    status = 422
    code = "idempotency_key_reused"


class Unavailable(ServiceError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, headers={"Retry-After": "5"}, **details)


class DatabaseUnavailable(Unavailable):
    code = "database_unavailable"


# Errors raised by Flask, werkzeug, flask-smorest (marshmallow) and flask-limiter, by status. A
# marshmallow refusal is the same kind as `Invalid`, so it gets the same code.
HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_entity_too_large",
    415: "unsupported_media_type",
    422: Invalid.code,
    429: "rate_limited",
}
HTTP_MESSAGES: dict[int, str] = {
    400: "The request body is not valid JSON.",
    404: "No such resource.",
    405: "Method not allowed on this resource.",
    413: "The request body is too large.",
    415: "The request body must be JSON (Content-Type: application/json).",
    422: "The request is not valid.",
}
INTERNAL_ERROR = "internal_error"


DOMAIN_ERRORS: tuple[type[ServiceError], ...] = (
    ServiceError,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    OverCapacity,
    InProgress,
    Invalid,
    TooDeep,
    KeyReused,
    Unavailable,
    DatabaseUnavailable,
)


def error_codes() -> dict[str, int]:
    """Every code an error answer may carry, with its status (for documentation and tests)."""
    codes = {cls.code: cls.status for cls in DOMAIN_ERRORS}
    codes.update({code: status for status, code in HTTP_CODES.items()})
    codes[INTERNAL_ERROR] = 500
    return codes


def _body(status: int, code: str, message: str, **details: Any) -> dict[str, Any]:
    # The JSON shape of every error answer; nothing outside this module builds it.
    body: dict[str, Any] = {"error": {"status": status, "code": code, "message": message}}
    if details:
        body["error"].update(details)
    return body


def render(error: ServiceError) -> Response:
    """The JSON answer for a domain error, with its status and headers."""
    response = jsonify(_body(error.status, error.code, error.message, **error.details))
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def register_error_handlers(app: Flask) -> None:
    """Answer every error, expected or not, as JSON with the right status."""

    @app.before_request
    def _require_json_body() -> None:
        # A body sent as form data or text would otherwise be read as "no body" and give
        # misleading field errors.
        if request.method in ("POST", "PUT", "PATCH") and request.content_length:
            if not request.is_json:
                raise UnsupportedMediaType()

    @app.teardown_appcontext
    def _end_session_quietly(_error: BaseException | None) -> None:
        # Runs before Flask-SQLAlchemy's own teardown (teardowns run in reverse order). If
        # PostgreSQL went away after the answer was made, rolling back the request's session
        # raises; that must not turn a finished answer into a bare 500.
        try:
            db.session.remove()
        except DBAPIError:
            log.warning("database connection lost while ending the request's session")
            db.session.registry.clear()

    @app.errorhandler(DBAPIError)
    def _database_error(error: DBAPIError) -> Response:
        _rollback_quietly()
        if is_connection_error(error):
            log.warning("database unavailable: %s", str(error.orig).strip().splitlines()[0])
            return render(DatabaseUnavailable("The database is unavailable."))
        log.exception("database error")
        return _internal_error()

    @app.errorhandler(ServiceError)
    def _service_error(error: ServiceError) -> Response:
        return render(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        details: dict[str, Any] = {}
        # flask-smorest/webargs put marshmallow's field messages here.
        messages = getattr(error, "data", {}).get("messages") if hasattr(error, "data") else None
        fields = messages.get("json", messages) if messages else None
        # Only field -> messages maps; a body that is not JSON at all has no fields to name.
        if isinstance(fields, dict):
            details["fields"] = fields
        if status == 429:
            # flask-limiter's breach: the description is the limit ("5 per 1 second"); the
            # Retry-After and X-RateLimit-* headers are added with every answer (app/api/limits.py).
            message = f"Rate limit exceeded ({error.description}); see Retry-After."
        else:
            message = HTTP_MESSAGES.get(status, error.description or error.name)
        code = HTTP_CODES.get(status, error.name.lower().replace(" ", "_"))
        response = jsonify(_body(status, code, message, **details))
        response.status_code = status
        # Allow on a 405, as RFC 9110 requires.
        for name, value in error.get_headers():
            if name != "Content-Type":
                response.headers.add(name, value)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        _rollback_quietly()
        log.exception("unexpected error")
        return _internal_error()


def _internal_error() -> Response:
    # Generic on purpose: the trace is in the log, never in the answer.
    response = jsonify(_body(500, INTERNAL_ERROR, "Internal server error."))
    response.status_code = 500
    return response


def is_connection_error(error: DBAPIError) -> bool:
    """Whether a database error means "PostgreSQL is unreachable", not "the query is wrong"."""
    if error.connection_invalidated:
        return True
    text = str(error.orig).lower()
    return any(
        marker in text
        for marker in (
            "could not connect",
            "connection refused",
            "server closed the connection",
            "terminating connection",
            "connection timed out",
            "timeout expired",
            "the database system is",
            "canceling statement due to statement timeout",
            "connection already closed",
            "ssl connection has been closed",
        )
    )


def _rollback_quietly() -> None:
    # The connection may be the thing that failed; the answer must still go out.
    try:
        db.session.rollback()
    except Exception:
        log.debug("rollback after an error failed too", exc_info=True)
