"""Service-wide statistics from maintained tallies: constant cost however many bots exist."""

from __future__ import annotations

from typing import Any

from flask import current_app

from app.models import BOT_ACTIVE, LIVE_BOT_STATES
from app.services.capacity import max_bots
from app.services.counter_shards import TOTALS_SQL
from app.services.ids import iso, utcnow
from app.services.plain_reads import fetch_all
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


_ALL_TOTALS = TOTALS_SQL

# Tallies, totals and the swarm count in one round trip (one query instead of three), as rows
# tagged 'census', 'counter' and 'swarms'.
_STATS = """
SELECT 'census', tier, status, sum(n) FROM bot_census
 WHERE CAST(:tenant AS text) IS NULL OR tenant = :tenant GROUP BY tier, status
UNION ALL
SELECT 'counter', t.name, NULL, t.value FROM ({totals}) AS t(name, value)
UNION ALL
SELECT 'swarms', NULL, NULL, count(*) FROM swarms
 WHERE status <> 'retired' AND (CAST(:tenant AS text) IS NULL OR tenant = :tenant)
UNION ALL
SELECT 'service_live', NULL, NULL, coalesce(sum(n), 0) FROM bot_census
 WHERE status IN ('active', 'paused')
"""


def bot_stats() -> dict[str, Any]:
    """The figures of GET /bots/stats; a tenant key sees only its tenant's bots and tasks."""
    tenant = current_tenant()
    totals = _ALL_TOTALS if tenant is None else _TENANT_TOTALS
    rows = fetch_all(_STATS.format(totals=totals), {"tenant": tenant})
    census = [(tier, status, n) for kind, tier, status, n in rows if kind == "census"]
    counters = {name: value for kind, name, _, value in rows if kind == "counter"}
    swarm_count = next(n for kind, _, _, n in rows if kind == "swarms")
    service_live = int(next(n for kind, _, _, n in rows if kind == "service_live"))
    live = sum(int(n) for _, status, n in census if status in LIVE_BOT_STATES)
    distribution = {tier: 0 for tier in TIERS}
    for tier, status, n in census:
        if status in LIVE_BOT_STATES:
            distribution[tier] = distribution.get(tier, 0) + int(n)
    # Capacity is global: what remains is what this caller can still create, which for a tenant
    # with a quota (TENANT_MAX_BOTS) may be less; utilisation is of the tenant's quota then.
    capacity = max_bots()
    remaining = capacity - service_live
    limit = capacity
    quota = current_app.config["SETTINGS"].tenant_max_bots
    if tenant is not None and quota is not None:
        remaining, limit = min(remaining, quota - live), quota
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
        "capacity_remaining": max(remaining, 0),
        "utilization_percent": round(live / limit * 100, 2),
        "timestamp": iso(utcnow()),
    }
