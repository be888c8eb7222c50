"""How much work waits per tier: messages in the broker, and the oldest task not yet started."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import text

from app.extensions import db
from app.tiers import TIERS, io_queue_for, queue_for

# The oldest waiting task per tier, found through the open-tasks index by id rather than a scan.
_OLDEST_WAITING = """
SELECT tiers.tier,
       (SELECT extract(epoch FROM now() - assigned_at) FROM tasks
         WHERE status = 'assigned' AND tier = tiers.tier ORDER BY id LIMIT 1)
  FROM unnest(CAST(:tiers AS text[])) AS tiers(tier)
"""


def oldest_waiting_seconds() -> dict[str, float | None]:
    """Per tier, how long its oldest assigned task has waited (None when none waits)."""
    rows = db.session.execute(text(_OLDEST_WAITING), {"tiers": list(TIERS)}).all()
    return {tier: None if age is None else round(float(age), 3) for tier, age in rows}


def queue_depths() -> dict[str, int]:
    """Per tier, the messages waiting in its Celery queues: the tier's own and its I/O queue
    (calls to AI services). Raises when Redis is down."""
    with current_app.extensions["redis"].pipeline() as pipe:
        for tier in TIERS:
            pipe.llen(queue_for(tier))
            pipe.llen(io_queue_for(tier))
        lengths = pipe.execute()
    return {tier: int(lengths[2 * i]) + int(lengths[2 * i + 1]) for i, tier in enumerate(TIERS)}
