"""The audit log of control actions: who created, scaled, paused, deleted or assigned what."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.extensions import db
from app.models import AuditEntry

# The longest path an entry keeps.
MAX_PATH = 2000
_COLUMNS = ("key_name", "tenant", "action", "method", "path", "status", "remote_addr")
_TYPE = {name: "text" for name in _COLUMNS} | {"status": "integer"}


def insert_sql(source: str) -> str:
    """An INSERT of one entry per row of `source` (a CTE name), for a write that records its own
    entry in its statement; its parameters are `audit_params(entry)` (no entry: no row). The
    request hook must then be told (app/api/audit.py: recorded_with_action), so it does not
    add a second entry."""
    values = ", ".join(f"CAST(:audit_{name} AS {_TYPE[name]})" for name in _COLUMNS)
    return (
        f"INSERT INTO audit_log ({', '.join(_COLUMNS)}) SELECT {values} FROM {source}"
        " WHERE CAST(:audit_action AS text) IS NOT NULL"
    )


def audit_params(entry: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters of insert_sql() for `entry`."""
    return {f"audit_{name}": entry[name] if entry else None for name in _COLUMNS}


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
    """Append one entry in its own transaction, so it never rides on the request's (a write that
    is one statement carries its entry in that statement instead: insert_sql).

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
