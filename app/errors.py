"""Domain errors that carry their HTTP status, and the one place that turns errors into JSON."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

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

    @app.errorhandler(ServiceError)
    def _service_error(error: ServiceError):
        response = jsonify(error_body(error.status, error.code, error.message, **error.details))
        if error.status == 503:
            response.headers["Retry-After"] = "5"
        return response, error.status

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        status = error.code or 500
        details: dict[str, Any] = {}
        # flask-smorest/webargs put marshmallow's field messages here.
        messages = getattr(error, "data", {}).get("messages") if hasattr(error, "data") else None
        if messages:
            details["fields"] = messages.get("json", messages)
        message = {
            400: "The request body is not valid JSON.",
            404: "No such resource.",
            405: "Method not allowed on this resource.",
            413: "The request body is too large.",
            415: "The request body must be JSON (Content-Type: application/json).",
            422: "The request is not valid.",
        }.get(status, error.description or error.name)
        code = error.name.lower().replace(" ", "_")
        return jsonify(error_body(status, code, message, **details)), status

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unexpected error")
        return jsonify(error_body(500, "internal_error", "Internal server error.")), 500
