"""The audit log of control actions: who created, scaled, paused, deleted or assigned what."""

from __future__ import annotations

from sqlalchemy import select

from app.extensions import db
from app.models import AuditEntry


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

    The action it records has committed (durably) already; its entry does not wait for its own
    WAL flush (synchronous_commit off for this transaction only), which halves the fsyncs of a
    write request. A PostgreSQL crash within a fraction of a second may lose the last entries,
    never leave half of one, and never lose the action.
    """
    with db.engine.begin() as connection:
        connection.exec_driver_sql("SET LOCAL synchronous_commit TO off")
        connection.execute(
            AuditEntry.__table__.insert().values(
                key_name=key_name,
                tenant=tenant,
                action=action,
                method=method,
                path=path[:2000],
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
