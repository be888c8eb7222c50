"""Whether the parts the service needs answer, and whether work is moving."""

from __future__ import annotations

import time
from typing import Any

from flask import current_app

from app.extensions import db
from app.services import queues
from app.services.ids import iso, utcnow
from app.tiers import TIERS

# Written by workers after every chunk, read here to notice a stalled pool.
LAST_CHUNK_KEY = "orchestrator:last_chunk_at"


def check() -> tuple[dict[str, Any], bool]:
    """The health report and whether every part is up."""
    parts: dict[str, str] = {}
    oldest: dict[str, float | None] = {}
    try:
        oldest = queues.oldest_waiting_seconds()
        parts["postgres"] = "connected"
    except Exception:
        db.session.rollback()
        parts["postgres"] = "disconnected"

    depth: dict[str, int] = {}
    last_chunk: float | None = None
    try:
        depth = queues.queue_depths()
        last = current_app.extensions["redis"].get(LAST_CHUNK_KEY)
        last_chunk = float(last) if last else None
        parts["redis"] = "connected"
    except Exception:
        parts["redis"] = "disconnected"

    failing = [name for name, state in parts.items() if state != "connected"]
    status = "healthy" if not failing else ("unhealthy" if len(failing) == 2 else "degraded")
    report: dict[str, Any] = {
        "status": status,
        "service": "orchestrator",
        "redis": parts["redis"],
        "postgres": parts["postgres"],
        "timestamp": iso(utcnow()),
        "queues": {
            tier: {"depth": depth.get(tier), "oldest_waiting_seconds": oldest.get(tier)}
            for tier in TIERS
        },
        "last_chunk_completed_seconds_ago": (
            None if last_chunk is None else round(max(time.time() - last_chunk, 0.0), 3)
        ),
    }
    if failing:
        report["failing"] = failing
    return report, not failing


# A process writes the time of its last chunk at most this often: a write per chunk was a Redis
# round trip per single assignment. The health report's age may be that much older.
NOTE_EVERY_SECONDS = 1.0
_noted_at = 0.0


def note_chunk_completed() -> None:
    """Record that a worker just finished a chunk (best effort: Redis may be down)."""
    global _noted_at
    now = time.time()
    if now - _noted_at < NOTE_EVERY_SECONDS:
        return
    try:
        current_app.extensions["redis"].set(LAST_CHUNK_KEY, f"{now:.3f}")
        _noted_at = now
    except Exception:
        pass
