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
