"""The MAX_BOTS limit, enforced atomically across concurrent requests."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import text

from app.errors import OverCapacity
from app.extensions import db
from app.services import census

# Any constant works; it names the lock that serialises every change to the number of live bots.
_CAPACITY_LOCK = 5003_0001


def max_bots() -> int:
    """The configured capacity."""
    return current_app.config["SETTINGS"].max_bots


def reserve(count: int, tenant: str | None = None) -> None:
    """Take the capacity lock for this transaction and refuse if `count` more bots do not fit,
    in the service's capacity or in the tenant's quota (TENANT_MAX_BOTS).

    The lock is held until commit, so two concurrent creations can never both see room that only
    one of them fits in.
    """
    db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CAPACITY_LOCK})
    remaining = max_bots() - census.live_bots()
    if count > remaining:
        raise OverCapacity(
            f"Not enough capacity for {count} more bots: {remaining} of {max_bots()} remain.",
            capacity_remaining=max(remaining, 0),
            requested=count,
        )
    quota = current_app.config["SETTINGS"].tenant_max_bots
    if tenant is not None and quota is not None:
        tenant_remaining = quota - census.live_bots(tenant)
        if count > tenant_remaining:
            raise OverCapacity(
                f"Tenant {tenant!r} has room for {max(tenant_remaining, 0)} more bots of its "
                f"quota of {quota}; {count} were asked for.",
                capacity_remaining=max(tenant_remaining, 0),
                requested=count,
            )
