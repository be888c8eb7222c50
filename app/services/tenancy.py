"""Which tenant the current caller acts for.

A key limited to a tenant sees only that tenant's bots, swarms, tasks and workflows; anything else
is answered as if it did not exist (404). Keys without a tenant, and workers, see everything.
"""

from __future__ import annotations

from flask import g, has_request_context


def current_tenant() -> str | None:
    """The tenant of the request's API key, or None (all tenants)."""
    if not has_request_context():
        return None
    return g.get("tenant")


def visible(owner: str | None) -> bool:
    """Whether a resource owned by `owner` may be shown to the current caller."""
    tenant = current_tenant()
    return tenant is None or owner == tenant


def census_key(tenant: str | None) -> str:
    """How a tenant is written in the bot census ('' for none)."""
    return tenant or ""
