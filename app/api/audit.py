"""/audit: the log of control actions, for admins; and the hook that writes it."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, g, request
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate
from sqlalchemy.exc import DBAPIError

from app.api.schemas import MAX_PAGE, Timestamp, list_of
from app.services import audit

log = logging.getLogger(__name__)

blp = Blueprint("audit", __name__, description="Audit log of control actions (admin)")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class AuditPage(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=MAX_PAGE))
    before = fields.Integer(validate=validate.Range(min=1))


class AuditOut(Schema):
    id = fields.Integer()
    at = Timestamp()
    key_name = fields.String(allow_none=True)
    tenant = fields.String(allow_none=True)
    action = fields.String()
    method = fields.String()
    path = fields.String()
    status = fields.Integer()
    remote_addr = fields.String(allow_none=True)


AuditList = list_of(AuditOut, "AuditList", "next_before", fields.Integer(allow_none=True))


@blp.route("/audit", methods=["GET"])
@blp.arguments(AuditPage, location="query")
@blp.alt_response(200, schema=AuditList, description="Newest first", success=True)
def list_audit(query):
    """Newest first; page with `before` (the last id seen)."""
    items = audit.entries(query["limit"], query.get("before"), tenant=None)
    return {
        "items": AuditOut().dump(items, many=True),
        "limit": query["limit"],
        "next_before": items[-1].id if len(items) == query["limit"] else None,
    }


def request_entry(status: int) -> dict[str, Any]:
    """The audit entry of the current request, answered with `status`."""
    return {
        "key_name": g.get("api_key_name"),
        "tenant": g.get("tenant"),
        "action": request.endpoint,
        "method": request.method,
        "path": request.path[: audit.MAX_PATH],
        "status": status,
        "remote_addr": request.remote_addr,
    }


def recorded_with_action() -> None:
    """The current request's entry was committed with its action (app/services/audit.py:
    insert_sql); the hook below adds none."""
    g.audit_recorded = True


def register_audit(app: Flask) -> None:
    """Record every successful write (create, scale, pause, delete, assign, registry change),
    each in its own transaction; a write that commits its entry in its own statement (a single
    assignment) is left alone."""

    @app.after_request
    def _record(response):
        # Asked of every request, so the mark never outlives it.
        pending = not g.pop("audit_recorded", False)
        if (
            pending
            and request.method in WRITE_METHODS
            and request.endpoint
            and response.status_code < 400
        ):
            entry = request_entry(response.status_code)
            try:
                audit.record(**entry)
            except DBAPIError:
                # The action is done and committed; PostgreSQL went away just after. Answer it,
                # and keep the entry in the log instead.
                log.error("audit entry not stored (database unavailable): %s", entry)
        return response
