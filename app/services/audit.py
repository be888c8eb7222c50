"""The audit log of control actions: who created, scaled, paused, deleted or assigned what."""

from __future__ import annotations

from typing import Any

from flask import g, has_request_context, request
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEntry

# The longest path an entry keeps.
MAX_PATH = 2000
_COLUMNS = ("key_name", "tenant", "action", "method", "path", "status", "remote_addr")


def request_entry(status: int) -> dict[str, Any] | None:
    """The entry for the current request, answered with `status`; None outside a request (the
    audit log records what callers of the API did)."""
    if not has_request_context():
        return None
    return {
        "key_name": g.get("api_key_name"),
        "tenant": g.get("tenant"),
        "action": request.endpoint,
        "method": request.method,
        "path": request.path[:MAX_PATH],
        "status": status,
        "remote_addr": request.remote_addr,
    }


def insert_sql(source: str) -> str:
    """An INSERT of one entry per row of `source` (a CTE name), for a write that records its own
    entry in its statement; its parameters are `audit_params(entry)` (no entry: no row). Call
    `recorded_in_request()` once that statement has committed, so the request hook does not add
    a second entry."""
    values = ", ".join(f"CAST(:audit_{name} AS {_TYPE[name]})" for name in _COLUMNS)
    return (
        f"INSERT INTO audit_log ({', '.join(_COLUMNS)}) SELECT {values} FROM {source}"
        " WHERE CAST(:audit_action AS text) IS NOT NULL"
    )


_TYPE = {name: "text" for name in _COLUMNS} | {"status": "integer"}


def audit_params(entry: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters of insert_sql() for `entry`."""
    return {f"audit_{name}": entry[name] if entry else None for name in _COLUMNS}


def recorded_in_request() -> None:
    """The current request's entry is committed with its action."""
    if has_request_context():
        g.audit_recorded = True


def pending_in_request() -> bool:
    """Whether the current request's entry is still to be written by the request hook (asked
    once per request: it forgets the answer)."""
    return not g.pop("audit_recorded", False)


def record(
    *,
    key_name: str | None,
    tenant: str | None,
    action: str,
    method: str,
    path: str,
    status: int,
    remote_addr: str | None,
) -> None:
    """Append one entry in its own transaction, so it never rides on the request's.

    The entry is committed durably, like the action it records: an audit log that a crash may
    shorten is not one a security review can rely on, so it keeps its own flush.
    """
    with db.engine.begin() as connection:
        connection.execute(
            AuditEntry.__table__.insert().values(
                key_name=key_name,
                tenant=tenant,
                action=action,
                method=method,
                path=path[:MAX_PATH],
                status=status,
                remote_addr=remote_addr,
            )
        )


def entries(limit: int, before: int | None, tenant: str | None) -> list[AuditEntry]:
    """The newest entries first, optionally only one tenant's."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    if tenant is not None:
        query = query.where(AuditEntry.tenant == tenant)
    return list(db.session.scalars(query))
