"""Putting stranded work back in motion: PostgreSQL says what should run, Redis only carries it.

Run periodically by Celery beat (and by `flask reconcile`). It
- hands tasks whose lease expired (their worker died) back to the queue, or fails them for good
  once they used up their attempts, so a poison task never blocks the rest;
- re-publishes assigned tasks that no message carries any more (Redis flushed or restarted),
  but only for a tier whose queue is empty, so a large healthy backlog is never multiplied.

A marker key in Redis tells a flushed or restarted Redis (our Redis keeps nothing on disk) from a
slow queue: when it is gone, every waiting task is re-published at once instead of after
REPUBLISH_AFTER_SECONDS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import text

from app.dispatch import publish_chunks
from app.extensions import db
from app.models import TASK_FAILED, TASK_RUNNING
from app.services import callbacks, calls, task_rows, workflows
from app.services.outcomes import Outcome, record_outcomes
from app.services.task_types import route_of
from app.tiers import TIERS, queue_for

log = logging.getLogger(__name__)

BROKER_MARKER_KEY = "orchestrator:broker_marker"

# An assigned task younger than this is presumed to be on its way to a worker.
REPUBLISH_AFTER_SECONDS = 30
REPUBLISH_LIMIT = 200_000

_EXPIRED = """
SELECT id, attempts, coalesce(error, 'lease expired') FROM tasks
 WHERE status = 'running' AND lease_expires_at < now()
 ORDER BY id LIMIT 10000 FOR UPDATE SKIP LOCKED
"""

_STRANDED = """
SELECT t.type, array_agg(t.id ORDER BY t.id) FROM (
    SELECT t.id, t.type FROM tasks t
      LEFT JOIN bots b ON b.id = t.bot_id
     WHERE t.status = 'assigned' AND t.tier = :tier
       AND t.assigned_at < now() - make_interval(secs => :age)
       AND (t.bot_id IS NULL OR b.status = 'active')
     ORDER BY t.id LIMIT :limit
) t GROUP BY t.type
"""


@dataclass(frozen=True)
class Report:
    """What one pass did."""

    requeued: int
    failed: int
    republished: int
    overdue_workflows: int
    # Callback deliveries published again (their message was lost).
    callbacks: int = 0


def reconcile() -> Report:
    """One pass over expired leases and stranded assigned tasks."""
    overdue = workflows.expire_overdue()
    requeued, failed = _recover_expired_leases()
    min_age = 0 if _broker_was_reset() else REPUBLISH_AFTER_SECONDS
    republished = sum(_republish_stranded(tier, min_age) for tier in TIERS)
    redelivered = callbacks.republish_stale(min_age)
    # Lines whose holders died (their slots expired) get a worker to drain them again.
    calls.wake_waiting()
    report = Report(
        requeued=requeued,
        failed=failed,
        republished=republished,
        overdue_workflows=overdue,
        callbacks=redelivered,
    )
    if requeued or failed or republished or overdue or redelivered:
        log.info("reconcile: %s", report)
    return report


def _recover_expired_leases() -> tuple[int, int]:
    max_attempts = current_app.config["SETTINGS"].max_task_attempts
    rows = db.session.execute(text(_EXPIRED)).all()
    retry = [task_id for task_id, attempts, _ in rows if attempts < max_attempts]
    give_up = [
        Outcome(task_id, TASK_FAILED, None, f"gave up after {attempts} attempts: {error}", None)
        for task_id, attempts, error in rows
        if attempts >= max_attempts
    ]
    requeued: list[task_rows.Waiting] = []
    if retry:
        task_rows.requeue_running(retry)
        requeued = task_rows.waiting_by_id(retry)
    db.session.commit()
    failed = 0
    if give_up:
        failed = record_outcomes(give_up, (TASK_RUNNING,), on_workflows=workflows.on_steps_moved)
    task_rows.publish(requeued)
    return len(retry), failed


def _broker_was_reset() -> bool:
    try:
        created = current_app.extensions["redis"].set(BROKER_MARKER_KEY, "1", nx=True)
    except Exception:
        return False
    if created:
        log.warning("reconcile: broker marker missing (Redis new, flushed or restarted)")
    return bool(created)


def _republish_stranded(tier: str, min_age: float) -> int:
    # A tier's tasks wait in its queue, and calls also in the I/O queue and their service's
    # waiting line (app/services/calls.py): while any of them holds work, nothing is stranded.
    try:
        cpu_backlog = current_app.extensions["redis"].llen(queue_for(tier))
        io_backlog = calls.backlog(tier)
    except Exception as error:
        log.warning("reconcile: cannot read the %s queues (%s); skipping them", tier, error)
        return 0
    if cpu_backlog and io_backlog:
        return 0
    rows = db.session.execute(
        text(_STRANDED), {"tier": tier, "age": min_age, "limit": REPUBLISH_LIMIT}
    ).all()
    db.session.commit()
    total = 0
    for type_name, ids in rows:
        route = route_of(type_name)
        if io_backlog if route.get("call_type") else cpu_backlog:
            continue
        publish_chunks(ids, tier, **route)
        total += len(ids)
    return total
