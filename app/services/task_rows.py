"""Set-based statements on task rows: insert a swarm's tasks, cancel waiting ones, find them again.

Each function is one statement with a fixed shape, run in the caller's transaction: the service
that calls it owns the unit of work, commits it, and only then publishes (`publish`), so a
worker never receives an id whose row it cannot see.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from app.dispatch import publish_chunks
from app.extensions import db
from app.models import Swarm
from app.services import mass_action_counts
from app.services.outcomes import MOVED_COLUMNS, add_to_counters_sql, counted, run_counted
from app.services.task_types import route_of

# One task row per active bot of the swarm, and the bots' totals, in one statement. Bot k of n
# (by position) takes part k of n of a dataset: retired or paused bots leave no gap. The bots are
# locked in id order first, as every statement locking several bots does (counter_shards.py).
_INSERT_FOR_SWARM = """
WITH locked AS (
    SELECT id FROM bots WHERE swarm_id = :swarm_id AND status = 'active' ORDER BY id FOR UPDATE
), targets AS (
    UPDATE bots b SET total_tasks = b.total_tasks + 1
      FROM locked l
     WHERE b.id = l.id
    RETURNING b.id, b.position
)
INSERT INTO tasks (type, tier, status, bot_id, swarm_id, payload_id, slice_index, slice_count,
                   assigned_at, workflow_id, step, mass_action_id)
SELECT :type, :tier, 'assigned', id, :swarm_id, :payload_id,
       CAST(row_number() OVER (ORDER BY position) - 1 AS int), CAST(count(*) OVER () AS int),
       :now, :workflow_id, :step, :mass_action_id
  FROM targets ORDER BY position
RETURNING id
"""

_COUNT_ASSIGNED = add_to_counters_sql("VALUES ('tasks_assigned', CAST(:n AS bigint))")

_CANCEL = "UPDATE tasks SET status = 'cancelled', finished_at = now() WHERE status = 'assigned'"
_RETURNING = f" RETURNING {MOVED_COLUMNS}"
_CANCEL_TASK = counted(_CANCEL + " AND id = :task_id" + _RETURNING)
_CANCEL_OF_BOTS = counted(_CANCEL + " AND bot_id = ANY(:bot_ids)" + _RETURNING)
_CANCEL_OF_SWARM = counted(_CANCEL + " AND swarm_id = :swarm_id" + _RETURNING)
# Its tasks lie in the id range of its INSERT: a primary-key range, filtered by mass-action.
_CANCEL_OF_MASS_ACTION = counted(
    _CANCEL + " AND id BETWEEN :first AND :last AND mass_action_id = :mass_action_id" + _RETURNING
)

_WAITING = "SELECT tier, type, array_agg(id ORDER BY id) FROM tasks WHERE status = 'assigned'"
_WAITING_BY_ID = _WAITING + " AND id = ANY(:task_ids) GROUP BY tier, type"
_WAITING_OF_BOTS = _WAITING + " AND bot_id = ANY(:bot_ids) GROUP BY tier, type"


@dataclass(frozen=True)
class Waiting:
    """Assigned tasks of one tier and type, to publish after the transaction that read them."""

    tier: str
    type: str
    task_ids: list[int]


def insert_for_swarm(
    swarm: Swarm,
    type_name: str,
    payload_id: int,
    now: datetime,
    workflow_id: str | None = None,
    step: int | None = None,
    *,
    mass_action_id: str,
) -> list[int]:
    """One task per active bot of a locked swarm, counted, all of one mass-action; the caller
    commits and publishes."""
    rows = db.session.execute(
        text(_INSERT_FOR_SWARM),
        {
            "swarm_id": swarm.id,
            "type": type_name,
            "tier": swarm.tier,
            "payload_id": payload_id,
            "now": now,
            "workflow_id": workflow_id,
            "step": step,
            "mass_action_id": mass_action_id,
        },
    )
    task_ids = [row[0] for row in rows]
    swarm.total_tasks = Swarm.total_tasks + len(task_ids)
    db.session.execute(text(_COUNT_ASSIGNED), {"n": len(task_ids)})
    return task_ids


def cancel_waiting_task(task_id: int) -> int:
    """Cancel the task if it has not started, counting it; 0 or 1. The caller commits."""
    return run_counted(_CANCEL_TASK, {"task_id": task_id})


def cancel_waiting_of_bots(bot_ids: list[str]) -> int:
    """Cancel these bots' tasks that have not started, counting them. The caller commits."""
    if not bot_ids:
        return 0
    return run_counted(_CANCEL_OF_BOTS, {"bot_ids": bot_ids})


def cancel_waiting_of_swarm(swarm_id: str) -> int:
    """Cancel the swarm's tasks that have not started, counting them. The caller commits."""
    return run_counted(_CANCEL_OF_SWARM, {"swarm_id": swarm_id})


def cancel_waiting_of_mass_action(mass_action_id: str, first: int, last: int) -> int:
    """Cancel every task of the mass-action not yet started (its tasks' ids are in first..last),
    in one statement, counting them (bots, swarm, totals and the mass-action's own counters).
    The caller commits."""
    return run_counted(
        _CANCEL_OF_MASS_ACTION, {"mass_action_id": mass_action_id, "first": first, "last": last}
    )


def waiting_by_id(task_ids: list[int]) -> list[Waiting]:
    """Those of task_ids still assigned, grouped for publishing."""
    if not task_ids:
        return []
    return _groups(_WAITING_BY_ID, {"task_ids": task_ids})


def waiting_of_bots(bot_ids: list[str]) -> list[Waiting]:
    """These bots' assigned tasks, grouped for publishing."""
    if not bot_ids:
        return []
    return _groups(_WAITING_OF_BOTS, {"bot_ids": bot_ids})


def _groups(statement: str, params: dict[str, list[int] | list[str]]) -> list[Waiting]:
    rows = db.session.execute(text(statement), params).all()
    return [Waiting(tier, type_name, list(ids)) for tier, type_name, ids in rows]


# Their mass-actions (if any) stop counting them as running in the same statement.
_REQUEUE = (
    """
WITH requeued AS (
    UPDATE tasks SET status = 'assigned', lease_expires_at = NULL, started_at = NULL
     WHERE id = ANY(:ids) AND status = 'running'
    RETURNING mass_action_id
)
"""
    + mass_action_counts.requeued_cte("requeued")
    + "SELECT count(*) FROM requeued"
)


def requeue_running(task_ids: list[int]) -> int:
    """Put running tasks back to assigned (keeping their attempts); the caller commits and
    publishes."""
    if not task_ids:
        return 0
    return int(db.session.execute(text(_REQUEUE), {"ids": task_ids}).scalar_one())


def publish(waiting: list[Waiting]) -> int:
    """Publish the groups again, each in its type's chunks (after the commit); how many tasks."""
    for group in waiting:
        publish_chunks(group.task_ids, group.tier, **route_of(group.type))
    return sum(len(group.task_ids) for group in waiting)
