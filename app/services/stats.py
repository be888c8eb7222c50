"""Service-wide statistics from maintained tallies: constant cost however many bots exist."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.extensions import db
from app.models import BOT_ACTIVE, LIVE_BOT_STATES
from app.services.capacity import max_bots
from app.services.ids import iso, utcnow
from app.services.tenancy import current_tenant
from app.tiers import TIERS

# A tenant's totals come from its own bots' counters (service totals are not kept per tenant);
# the partial index on bots.tenant keeps this to the tenant's rows.
_TENANT_TOTALS = """
SELECT 'bots_created', count(*) FROM bots WHERE tenant = :tenant
UNION ALL SELECT 'tasks_completed', coalesce(sum(completed_tasks), 0) FROM bots WHERE tenant = :tenant
UNION ALL SELECT 'tasks_assigned', coalesce(sum(total_tasks), 0) FROM bots WHERE tenant = :tenant
UNION ALL SELECT 'tasks_failed', coalesce(sum(failed_tasks), 0) FROM bots WHERE tenant = :tenant
"""


def bot_stats() -> dict[str, Any]:
    """The figures of GET /bots/stats; a tenant key sees only its tenant's bots and tasks."""
    tenant = current_tenant()
    census = db.session.execute(
        text(
            "SELECT tier, status, sum(n) FROM bot_census"
            " WHERE CAST(:tenant AS text) IS NULL OR tenant = :tenant GROUP BY tier, status"
        ),
        {"tenant": tenant},
    ).all()
    if tenant is None:
        counters = dict(db.session.execute(text("SELECT name, value FROM counters")).all())
    else:
        counters = dict(db.session.execute(text(_TENANT_TOTALS), {"tenant": tenant}).all())
    swarm_count = db.session.execute(
        text(
            "SELECT count(*) FROM swarms WHERE status <> 'retired'"
            " AND (CAST(:tenant AS text) IS NULL OR tenant = :tenant)"
        ),
        {"tenant": tenant},
    ).scalar_one()
    live = sum(int(n) for _, status, n in census if status in LIVE_BOT_STATES)
    distribution = {tier: 0 for tier in TIERS}
    for tier, status, n in census:
        if status in LIVE_BOT_STATES:
            distribution[tier] = distribution.get(tier, 0) + int(n)
    capacity = max_bots()
    return {
        "total_created": int(counters.get("bots_created", 0)),
        "active_bots": sum(int(n) for _, status, n in census if status == BOT_ACTIVE),
        "live_bots": live,
        "tasks_executed": int(counters.get("tasks_completed", 0)),
        "tasks_assigned": int(counters.get("tasks_assigned", 0)),
        "tasks_failed": int(counters.get("tasks_failed", 0)),
        "tier_distribution": {
            "standard": distribution["standard"],
            "advanced": distribution["advanced"],
            "L20": distribution["L20"],
        },
        "swarm_count": int(swarm_count),
        "capacity_remaining": max(capacity - live, 0),
        "utilization_percent": round(live / capacity * 100, 2),
        "timestamp": iso(utcnow()),
    }
