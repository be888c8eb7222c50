"""Service-wide statistics from maintained tallies: constant cost however many bots exist."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.extensions import db
from app.models import BOT_ACTIVE, LIVE_BOT_STATES
from app.services.capacity import max_bots
from app.services.ids import iso, utcnow
from app.tiers import TIERS


def bot_stats() -> dict[str, Any]:
    """The figures of GET /bots/stats."""
    census = db.session.execute(
        text("SELECT tier, status, sum(n) FROM bot_census GROUP BY tier, status")
    ).all()
    counters = dict(db.session.execute(text("SELECT name, value FROM counters")).all())
    swarm_count = db.session.execute(
        text("SELECT count(*) FROM swarms WHERE status <> 'retired'")
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
