"""The figures of the swarm dashboard (/dashboard), from tallies and a few small queries.

Nothing here counts bot or task rows: bots come from `bot_census`, totals from `counters`, swarm
progress from the 20 most recent swarms' own counters, running mass-actions from theirs (through
the partial index of unfinished ones), queue depths from health.check().

Throughput: `counters.tasks_completed` only ever grows, so each /dashboard/data call adds a
sample (time, value) to a Redis sorted set, at most one a second however many viewers poll,
trimmed to the last five minutes and MAX_SAMPLES entries and expiring when nobody watches.
Completions per 10-second bucket are the rises between consecutive samples, spread evenly over
the time between them. Buckets no sample pair covers (before anyone opened the dashboard) are
null, not zero: the dashboard only knows what it watched.
"""

from __future__ import annotations

import logging
import time
from itertools import pairwise
from typing import Any

from flask import current_app
from sqlalchemy import text

from app.extensions import db
from app.models import LIVE_BOT_STATES
from app.services import health, mass_actions, registry
from app.services.capacity import max_bots
from app.services.counter_shards import TOTALS_SQL, swarm_counters_sql, swarm_shards_join
from app.services.ids import iso, utcnow
from app.tiers import TIERS

log = logging.getLogger(__name__)

SAMPLES_KEY = "orchestrator:dashboard:tasks_completed"
SAMPLE_LOCK_KEY = "orchestrator:dashboard:sampled"
WINDOW_S = 300
BUCKET_S = 10
MAX_SAMPLES = 400
RECENT_SWARMS = 20
RECENT_MASS_ACTIONS = 20
BOT_STATUSES = ("active", "paused", "retired")

_RECENT_SWARMS = f"""
SELECT s.id, s.name, s.tier, s.status, {swarm_counters_sql("s")}, s.created_at
  FROM (SELECT * FROM swarms ORDER BY created_at DESC, id DESC LIMIT :limit) s
       {swarm_shards_join("s")}
 ORDER BY s.created_at DESC, s.id DESC
"""


def snapshot() -> dict[str, Any]:
    """Everything the dashboard shows, as one JSON-ready document (samples throughput too)."""
    census = db.session.execute(
        text("SELECT tier, status, sum(n) FROM bot_census GROUP BY tier, status")
    ).all()
    counters = {name: int(value) for name, value in db.session.execute(text(TOTALS_SQL)).all()}
    bots = {tier: dict.fromkeys(BOT_STATUSES, 0) for tier in TIERS}
    for tier, status, n in census:
        bots.setdefault(tier, dict.fromkeys(BOT_STATUSES, 0))[status] = int(n)
    live = sum(
        n for by_status in bots.values() for s, n in by_status.items() if s in LIVE_BOT_STATES
    )
    capacity = max_bots()
    report, _healthy = health.check()
    return {
        "generated_at": iso(utcnow()),
        "capacity": {
            "max_bots": capacity,
            "live_bots": live,
            "remaining": max(capacity - live, 0),
            "utilization_percent": round(live / capacity * 100, 2) if capacity else 0.0,
        },
        "bots": bots,
        "tasks": {
            "assigned": counters.get("tasks_assigned", 0),
            "completed": counters.get("tasks_completed", 0),
            "failed": counters.get("tasks_failed", 0),
        },
        "swarms": recent_swarms(),
        "mass_actions": running_mass_actions(),
        "throughput": throughput(counters.get("tasks_completed", 0)),
        "queues": report["queues"],
        "health": {
            "status": report["status"],
            "postgres": report["postgres"],
            "redis": report["redis"],
            "last_chunk_completed_seconds_ago": report["last_chunk_completed_seconds_ago"],
        },
        "services": downstream_services(),
    }


def recent_swarms(limit: int = RECENT_SWARMS) -> list[dict[str, Any]]:
    """The most recent swarms with live bot counts and task progress."""
    rows = db.session.execute(text(_RECENT_SWARMS), {"limit": limit}).mappings().all()
    tallies: dict[str, dict[str, int]] = {}
    if rows:
        for swarm_id, status, n in db.session.execute(
            text(
                "SELECT swarm_id, status, sum(n) FROM bot_census WHERE swarm_id = ANY(:ids)"
                " GROUP BY swarm_id, status"
            ),
            {"ids": [row["id"] for row in rows]},
        ):
            tallies.setdefault(swarm_id, {})[status] = int(n)
    swarms = []
    for row in rows:
        by_status = tallies.get(row["id"], {})
        assigned = int(row["total_tasks"])
        completed = int(row["completed_tasks"])
        failed = int(row["failed_tasks"])
        swarms.append(
            {
                "id": row["id"],
                "name": row["name"],
                "tier": row["tier"],
                "status": row["status"],
                "bot_count": sum(by_status.get(s, 0) for s in LIVE_BOT_STATES),
                "active_bots": by_status.get("active", 0),
                "assigned": assigned,
                "completed": completed,
                "failed": failed,
                "cancelled": int(row["cancelled_tasks"]),
                # Share of all tasks ever given to the swarm that completed.
                "progress": round(completed / assigned, 4) if assigned else 0.0,
                "created_at": iso(row["created_at"]),
            }
        )
    return swarms


def running_mass_actions(limit: int = RECENT_MASS_ACTIONS) -> list[dict[str, Any]]:
    """The most recent mass-actions still running, with their progress (their own counters)."""
    items = []
    for view in mass_actions.list_unfinished(limit):
        m = view.mass_action
        items.append(
            {
                "id": m.id,
                "swarm_id": m.swarm_id,
                "task_type": m.type,
                "tier": m.tier,
                "status": view.status,
                **view.counts,
                "percent": view.percent,
                "tasks_per_second": view.tasks_per_second,
                "eta_seconds": view.eta_seconds,
                "created_at": iso(m.created_at),
            }
        )
    return items


def throughput(completed_total: int, now: float | None = None) -> dict[str, Any]:
    """Sample the completed-task counter and return completions per bucket (see the module doc)."""
    now = time.time() if now is None else now
    samples: list[tuple[float, int]] = []
    try:
        redis = current_app.extensions["redis"]
        # One sample a second across every viewer and gunicorn worker.
        if redis.set(SAMPLE_LOCK_KEY, "1", nx=True, px=1000):
            with redis.pipeline() as pipe:
                pipe.zadd(SAMPLES_KEY, {f"{now:.6f}:{completed_total}": now})
                pipe.zremrangebyscore(SAMPLES_KEY, "-inf", now - WINDOW_S - BUCKET_S)
                pipe.zremrangebyrank(SAMPLES_KEY, 0, -MAX_SAMPLES - 1)
                pipe.expire(SAMPLES_KEY, WINDOW_S + BUCKET_S)
                pipe.execute()
        for member, _score in redis.zrange(SAMPLES_KEY, 0, -1, withscores=True):
            moment, value = member.decode().split(":")
            samples.append((float(moment), int(value)))
    except Exception as error:  # Redis down: the rest of the dashboard still answers
        log.warning("dashboard throughput unavailable: %s", error)
        return {
            "available": False,
            "bucket_seconds": BUCKET_S,
            "window_seconds": WINDOW_S,
            "buckets": [],
            "completions_last_minute": None,
        }
    buckets = completions_per_bucket(samples, now)
    last_minute = [b for b in buckets[-60 // BUCKET_S :] if b is not None]
    return {
        "available": True,
        "bucket_seconds": BUCKET_S,
        "window_seconds": WINDOW_S,
        # Oldest first; bucket i covers [now - WINDOW_S + i*BUCKET_S, ... + BUCKET_S).
        "buckets": buckets,
        "completions_last_minute": round(sum(last_minute)) if last_minute else None,
    }


def completions_per_bucket(
    samples: list[tuple[float, int]], now: float, window_s: int = WINDOW_S, bucket_s: int = BUCKET_S
) -> list[float | None]:
    """Counter rises between samples, spread evenly over their interval, per bucket (oldest first).

    A counter that went down (tables emptied, a restored backup) counts as no completions.
    """
    count = window_s // bucket_s
    start = now - window_s
    totals: list[float | None] = [None] * count
    for (t0, v0), (t1, v1) in pairwise(sorted(samples)):
        if t1 <= t0:
            continue
        rise = max(v1 - v0, 0)
        first = max(int((t0 - start) // bucket_s), 0)
        last = min(int((t1 - start) // bucket_s), count - 1)
        for i in range(first, last + 1):
            low = start + i * bucket_s
            overlap = min(t1, low + bucket_s) - max(t0, low)
            if overlap > 0:
                totals[i] = (totals[i] or 0.0) + rise * overlap / (t1 - t0)
    return [None if total is None else round(total, 1) for total in totals]


def downstream_services() -> dict[str, Any]:
    """The registry's services and their URLs' health, or why there are none to show."""
    try:
        views = registry.list_services()
    except Exception as error:  # the dashboard must render even when the registry cannot
        db.session.rollback()
        log.warning("dashboard could not read the service registry: %s", error)
        return {"available": False, "items": [], "message": "service registry unavailable"}
    items = []
    for view in views:
        states = [endpoint.state for endpoint in view.endpoints]
        open_breakers = sum(
            1 for e in view.endpoints if e.breaker is not None and e.breaker.state != "closed"
        )
        items.append(
            {
                "name": view.name,
                "configured": bool(view.urls),
                "urls": len(view.urls),
                "healthy": states.count("healthy"),
                "unhealthy": states.count("unhealthy"),
                "unknown": states.count("unknown"),
                "open_breakers": open_breakers,
                "in_flight": view.in_flight,
                "state": _service_state(view.urls, states, open_breakers),
            }
        )
    return {
        "available": True,
        "items": items,
        "message": None if items else "no services registered",
    }


def _service_state(urls: list[str], states: list[str], open_breakers: int) -> str:
    if not urls:
        return "not configured"
    if open_breakers or "unhealthy" in states:
        return "unhealthy" if states.count("healthy") == 0 else "degraded"
    if states and all(state == "healthy" for state in states):
        return "healthy"
    return "unknown"
