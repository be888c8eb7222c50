"""Forgetting old work: finished tasks and workflows, audit entries, payloads no task uses.

Every figure the API shows is a counter on its own row (bots, swarms, the service totals, a
mass-action's counts), moved when its tasks moved, and a mass-action's aggregate is kept as its
own partials, so deleting the task rows later changes none of them. Beat runs `purge` hourly (or `flask purge`):

- tasks outside workflows, finished (completed, failed or cancelled) before TASK_RETENTION_DAYS;
- workflows ended before then, with their steps, their swarm steps' tasks and their callbacks;
- audit entries older than AUDIT_RETENTION_DAYS;
- payloads that no task refers to any more.

Deletes run in batches of BATCH rows, each its own short transaction choosing rows with FOR
UPDATE SKIP LOCKED, so nothing is locked for long and a worker recording outcomes never waits on
the purge; a pass stops after PASS_SECONDS and the next one carries on. What a pass deleted is
logged and added to counters that GET /metrics shows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import text

from app.extensions import db
from app.services.ids import utcnow
from app.services.outcomes import add_to_counters_sql

log = logging.getLogger(__name__)

BATCH = 5000
PASS_SECONDS = 120.0
# Counter names (in `counters`) that /metrics reads.
DELETED_PREFIX = "retention_deleted_"
LAST_RUN = "retention_last_run_epoch"
_PAYLOAD_CURSOR = "retention_payload_cursor"

# Tasks are numbered in the order they were assigned: the first one assigned after the cutoff
# bounds the rows any pass needs to look at (a task cannot finish before it was assigned).
_FIRST_AT_OR_AFTER = "SELECT id, assigned_at FROM tasks WHERE id >= :id ORDER BY id LIMIT 1"

_DELETE_TASKS = """
WITH doomed AS (
    SELECT id FROM tasks
     WHERE id > :after AND id < :before AND workflow_id IS NULL
       AND status IN ('completed', 'failed', 'cancelled') AND finished_at < :cutoff
     ORDER BY id LIMIT :batch
       FOR UPDATE SKIP LOCKED
)
DELETE FROM tasks t USING doomed WHERE t.id = doomed.id
RETURNING t.id, t.payload_id
"""

_ENDED_WORKFLOWS = """
SELECT id FROM workflows
 WHERE status <> 'active' AND finished_at < :cutoff
 ORDER BY finished_at LIMIT :limit
   FOR UPDATE SKIP LOCKED
"""

_DELETE_WORKFLOW_TASKS = "DELETE FROM tasks WHERE workflow_id = ANY(:ids) RETURNING payload_id"

_OLDEST_AUDIT = "SELECT id, at FROM audit_log ORDER BY id LIMIT :batch"

# A payload goes once no task row names it, nor a mass-action (which keeps its data after its
# tasks are gone). The BRIN index on tasks.payload_id answers the first without reading the
# table (payload ids grow with the task ids that use them).
_DELETE_UNUSED_PAYLOADS = """
DELETE FROM task_payloads p
 WHERE p.id = ANY(:ids)
   AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.payload_id = p.id)
   AND p.id NOT IN (SELECT payload_id FROM mass_actions WHERE payload_id = ANY(:ids))
"""

_OLD_PAYLOADS = """
SELECT id FROM task_payloads WHERE id > :after AND created_at < :cutoff ORDER BY id LIMIT :batch
"""


@dataclass
class Report:
    """What one pass deleted."""

    tasks: int = 0
    workflows: int = 0
    audit: int = 0
    payloads: int = 0
    seconds: float = 0.0


def purge(now: datetime | None = None) -> Report:
    """One retention pass; returns what it deleted."""
    settings = current_app.config["SETTINGS"]
    now = now or utcnow()
    started = time.monotonic()
    deadline = started + PASS_SECONDS
    report = Report()
    payloads: set[int] = set()
    if settings.task_retention_days:
        cutoff = now - timedelta(days=settings.task_retention_days)
        report.tasks = _purge_tasks(cutoff, payloads, deadline)
        report.workflows = _purge_workflows(cutoff, payloads, deadline)
        report.payloads = _purge_payloads(sorted(payloads)) + _sweep_payloads(cutoff, deadline)
    if settings.audit_retention_days:
        report.audit = _purge_audit(now - timedelta(days=settings.audit_retention_days), deadline)
    report.seconds = round(time.monotonic() - started, 3)
    _count(report, now)
    log.info(
        "retention: deleted %d tasks, %d workflows, %d audit entries, %d payloads in %.1f s",
        report.tasks,
        report.workflows,
        report.audit,
        report.payloads,
        report.seconds,
        extra={"fields": {"event": "retention", **asdict(report)}},
    )
    return report


def totals() -> dict[str, Any]:
    """What every pass so far deleted, by kind, and when the last one ran (epoch seconds)."""
    rows: dict[str, int] = dict(
        db.session.execute(
            text(
                "SELECT name, sum(value) FROM counters WHERE name LIKE 'retention_%' GROUP BY name"
            )
        ).all()
    )
    deleted = {
        kind: int(rows.get(DELETED_PREFIX + kind, 0))
        for kind in ("tasks", "workflows", "audit", "payloads")
    }
    return {"deleted": deleted, "last_run_epoch": rows.get(LAST_RUN)}


def _purge_tasks(cutoff: datetime, payloads: set[int], deadline: float) -> int:
    before = _first_task_assigned_after(cutoff)
    deleted, after = 0, 0
    while time.monotonic() < deadline:
        rows = db.session.execute(
            text(_DELETE_TASKS),
            {"after": after, "before": before, "cutoff": cutoff, "batch": BATCH},
        ).all()
        db.session.commit()
        deleted += len(rows)
        payloads.update(payload_id for _, payload_id in rows)
        if len(rows) < BATCH:
            break
        after = max(task_id for task_id, _ in rows)
    return deleted


def _first_task_assigned_after(cutoff: datetime) -> int:
    """An id below which every task was assigned before the cutoff (a binary search on ids)."""
    bounds = db.session.execute(text("SELECT min(id), max(id) FROM tasks")).one()
    if bounds[0] is None:
        return 0
    low, high = int(bounds[0]), int(bounds[1]) + 1
    while low < high:
        middle = (low + high) // 2
        row = db.session.execute(text(_FIRST_AT_OR_AFTER), {"id": middle}).one_or_none()
        if row is None or row.assigned_at >= cutoff:
            high = middle
        else:
            low = int(row.id) + 1
    db.session.commit()
    return low


def _purge_workflows(cutoff: datetime, payloads: set[int], deadline: float) -> int:
    deleted = 0
    # A workflow's rows go together: a few hundred workflows (and their steps) at a time.
    limit = max(1, BATCH // 50)
    while time.monotonic() < deadline:
        ids = [row[0] for row in db.session.execute(
            text(_ENDED_WORKFLOWS), {"cutoff": cutoff, "limit": limit}
        )]  # fmt: skip
        if not ids:
            db.session.commit()
            break
        payloads.update(
            row[0] for row in db.session.execute(text(_DELETE_WORKFLOW_TASKS), {"ids": ids})
        )
        db.session.execute(
            text("DELETE FROM callbacks WHERE resource_id = ANY(:ids)"), {"ids": ids}
        )
        db.session.execute(text("DELETE FROM workflows WHERE id = ANY(:ids)"), {"ids": ids})
        db.session.commit()
        deleted += len(ids)
        if len(ids) < limit:
            break
    return deleted


def _purge_payloads(candidates: list[int]) -> int:
    deleted = 0
    for start in range(0, len(candidates), BATCH):
        result = db.session.execute(
            text(_DELETE_UNUSED_PAYLOADS), {"ids": candidates[start : start + BATCH]}
        )
        deleted += result.rowcount  # type: ignore[attr-defined]  # a CursorResult
        db.session.commit()
    return deleted


def _sweep_payloads(cutoff: datetime, deadline: float) -> int:
    """Old payloads whose tasks are long gone (or that a workflow step stopped using), each
    looked at once: a cursor in `counters` remembers how far the sweep got."""
    after = int(
        db.session.execute(
            text("SELECT coalesce(max(value), 0) FROM counters WHERE name = :name"),
            {"name": _PAYLOAD_CURSOR},
        ).scalar_one()
    )
    deleted = 0
    while time.monotonic() < deadline:
        ids = [row[0] for row in db.session.execute(
            text(_OLD_PAYLOADS), {"after": after, "cutoff": cutoff, "batch": BATCH}
        )]  # fmt: skip
        if not ids:
            break
        deleted += _purge_payloads(ids)
        db.session.execute(
            text(
                "INSERT INTO counters (name, value) VALUES (:name, :value)"
                " ON CONFLICT (name, shard) DO UPDATE SET value = excluded.value"
            ),
            {"name": _PAYLOAD_CURSOR, "value": ids[-1]},
        )
        db.session.commit()
        after = ids[-1]
        if len(ids) < BATCH:
            break
    db.session.commit()
    return deleted


def _purge_audit(cutoff: datetime, deadline: float) -> int:
    # Entries are numbered in time order: delete from the oldest until one is young enough.
    deleted = 0
    while time.monotonic() < deadline:
        rows = db.session.execute(text(_OLDEST_AUDIT), {"batch": BATCH}).all()
        old = [row.id for row in rows if row.at < cutoff]
        if old:
            db.session.execute(text("DELETE FROM audit_log WHERE id = ANY(:ids)"), {"ids": old})
        db.session.commit()
        deleted += len(old)
        if len(old) < len(rows) or len(rows) < BATCH:
            break
    return deleted


def _count(report: Report, now: datetime) -> None:
    pairs = [(DELETED_PREFIX + kind, getattr(report, kind))
             for kind in ("tasks", "workflows", "audit", "payloads")]  # fmt: skip
    values = ", ".join(f"('{name}', {int(amount)})" for name, amount in pairs)
    db.session.execute(text(add_to_counters_sql(f"VALUES {values}")))
    db.session.execute(
        text(
            "INSERT INTO counters (name, value) VALUES (:name, :value)"
            " ON CONFLICT (name, shard) DO UPDATE SET value = excluded.value"
        ),
        {"name": LAST_RUN, "value": int(now.timestamp())},
    )
    db.session.commit()
