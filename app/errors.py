"""Domain errors that carry their HTTP status, and the one place that turns errors into JSON."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, UnsupportedMediaType

from app.extensions import db

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A refusal the client can act on; subclasses fix the status."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class Invalid(ServiceError):
    status = 422
    code = "invalid"


class OverCapacity(ServiceError):
    status = 409
    code = "over_capacity"


class Unavailable(ServiceError):
    status = 503
    code = "unavailable"


def error_body(status: int, code: str, message: str, **details: Any) -> dict[str, Any]:
    """The JSON shape of every error answer."""
    body: dict[str, Any] = {"error": {"status": status, "code": code, "message": message}}
    if details:
        body["error"].update(details)
    return body


def register_error_handlers(app: Flask) -> None:
    """Answer every error, expected or not, as JSON with the right status."""

    @app.before_request
    def _require_json_body():
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
    def _database_unavailable(error: DBAPIError):
        _rollback_quietly()
        if is_connection_error(error):
            log.warning("database unavailable: %s", str(error.orig).strip().splitlines()[0])
            body = error_body(503, "database_unavailable", "The database is unavailable.")
            return jsonify(body), 503, {"Retry-After": "5"}
        log.exception("database error")
        return jsonify(error_body(500, "internal_error", "Internal server error.")), 500

    @app.errorhandler(ServiceError)
    def _service_error(error: ServiceError):
        response = jsonify(error_body(error.status, error.code, error.message, **error.details))
        if error.status == 503:
            response.headers["Retry-After"] = "5"
        return response, error.status

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        if error.response is not None:
            # Built by whoever raised it, already in our shape: the rate limiter's 429 with
            # Retry-After (app/api/limits.py).
            return error.response
        status = error.code or 500
        details: dict[str, Any] = {}
        # flask-smorest/webargs put marshmallow's field messages here.
        messages = getattr(error, "data", {}).get("messages") if hasattr(error, "data") else None
        fields = messages.get("json", messages) if messages else None
        # Only field -> messages maps; a body that is not JSON at all has no fields to name.
        if isinstance(fields, dict):
            details["fields"] = fields
        message = {
            400: "The request body is not valid JSON.",
            404: "No such resource.",
            405: "Method not allowed on this resource.",
            413: "The request body is too large.",
            415: "The request body must be JSON (Content-Type: application/json).",
            422: "The request is not valid.",
        }.get(status, error.description or error.name)
        code = error.name.lower().replace(" ", "_")
        # Allow on a 405, as RFC 9110 requires.
        headers = [(name, value) for name, value in error.get_headers() if name != "Content-Type"]
        return jsonify(error_body(status, code, message, **details)), status, headers

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        _rollback_quietly()
        log.exception("unexpected error")
        return jsonify(error_body(500, "internal_error", "Internal server error.")), 500


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
