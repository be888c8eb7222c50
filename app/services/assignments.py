"""Giving tasks to bots and swarms, completing them by hand, and cancelling what still waits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from sqlalchemy import select

from app import metrics
from app.dispatch import publish_chunks
from app.errors import Conflict, NotFound
from app.extensions import db
from app.models import (
    BOT_ACTIVE,
    OPEN_TASK_STATES,
    TASK_CANCELLED,
    TASK_COMPLETED,
    Bot,
    Task,
    Workflow,
)
from app.services import audit, plain_reads, task_rows, workflows
from app.services.counter_shards import add_to_swarms_sql, add_to_totals_sql
from app.services.ids import utcnow
from app.services.outcomes import Outcome, record_outcomes
from app.services.payloads import load_payloads
from app.services.task_types import (
    TaskType,
    get_task_type,
    require_capability,
    require_runnable,
    route_of,
)
from app.services.tenancy import current_tenant, visible


@dataclass(frozen=True)
class Assignment:
    """What one assignment created."""

    task_id: int
    bot_id: str
    task_type: str
    assigned_at: datetime


# One assignment in one statement: the bot (active, visible, capable) counts the task, its data
# and row are inserted, the swarm's and the service's shard rows count it, in the lock order of
# app/services/counter_shards.py (the final SELECT reads the shard upserts in that order), and the
# audit log records it. Run alone in autocommit, the statement is its own transaction: one round
# trip to PostgreSQL, committed (and the audit entry with it) when it returns.
_ASSIGN = f"""
WITH bot AS (
    UPDATE bots SET total_tasks = total_tasks + 1
     WHERE id = :bot_id AND status = 'active'
       AND (CAST(:tenant AS text) IS NULL OR tenant = :tenant)
       AND (CAST(:capability AS text) IS NULL OR :capability = ANY(capabilities))
    RETURNING id, tier, swarm_id
), payload AS (
    INSERT INTO task_payloads (data) SELECT CAST(:data AS jsonb) FROM bot RETURNING id
), task AS (
    INSERT INTO tasks (type, tier, status, bot_id, swarm_id, payload_id, assigned_at)
    SELECT :type, bot.tier, 'assigned', bot.id, bot.swarm_id, payload.id, :now FROM bot, payload
    RETURNING id, tier
), per_swarm AS (
    {add_to_swarms_sql("SELECT swarm_id, 1, 0, 0, 0 FROM bot WHERE swarm_id IS NOT NULL")}
    RETURNING 1
), per_total AS (
    {add_to_totals_sql("SELECT 'tasks_assigned', 1 FROM bot")}
    RETURNING 1
), audited AS (
    {audit.insert_sql("bot")}
    RETURNING 1
)
SELECT task.id, task.tier,
       (SELECT count(*) FROM per_swarm) + (SELECT count(*) FROM per_total)
       + (SELECT count(*) FROM audited)
  FROM task
"""
# The answer's status, which the audit entry records.
ASSIGNED_STATUS = 202


def assign_to_bot(
    bot_id: str, type_name: str, data: dict[str, Any], audit_entry: dict[str, Any] | None = None
) -> Assignment:
    """Give one task to one active bot, then publish it; `audit_entry` (the caller's request,
    answered with ASSIGNED_STATUS) is committed with it."""
    task_type = get_task_type(type_name)
    require_runnable(task_type)
    now = utcnow()
    row = plain_reads.fetch_one(
        _ASSIGN,
        {
            "bot_id": bot_id,
            "tenant": current_tenant(),
            "capability": task_type.capability or None,
            "data": json.dumps(data),
            "type": type_name,
            "now": now,
            **audit.audit_params(audit_entry),
        },
    )
    if row is None:
        _refuse(bot_id, task_type)
    task_id, tier, _counted = row
    metrics.count_assigned(tier, type_name)
    publish_chunks([task_id], tier, **{**route_of(type_name), "chunk_size": 1})
    return Assignment(task_id=task_id, bot_id=bot_id, task_type=type_name, assigned_at=now)


def _refuse(bot_id: str, task_type: TaskType) -> NoReturn:
    """Why the bot took no task: 404, 409 or 422, as the assignment's conditions say."""
    bot = db.session.get(Bot, bot_id)
    if bot is None or not visible(bot.tenant):
        raise NotFound(f"Bot {bot_id!r} not found.")
    if bot.status != BOT_ACTIVE:
        raise Conflict(f"Bot {bot_id!r} is {bot.status}; only active bots take tasks.")
    require_capability(task_type, bot.capabilities, f"Bot {bot_id!r}")
    # It changed between the statement and this read (paused and resumed, say).
    raise Conflict(f"Bot {bot_id!r} changed while the task was assigned; try again.")


def complete_task(bot_id: str, task_id: int, result: Any) -> Task:
    """Mark a bot's task completed by hand; a repeat, or a race with the worker, counts once."""
    task = get_bot_task(bot_id, task_id)
    # Held until the record commits: the state it moves from is then known exactly (a worker
    # recording the same task waits, then finds it completed and counts nothing).
    db.session.refresh(task, with_for_update=True)
    if task.status in OPEN_TASK_STATES:
        # A swarm step's task may be completed by hand: its workflow then advances.
        record_outcomes(
            [Outcome(task_id, TASK_COMPLETED, result, None, None)],
            (task.status,),
            on_workflows=workflows.on_steps_moved,
        )
        db.session.refresh(task)
    else:
        db.session.rollback()  # nothing to record: let go of the row at once
    if task.status != TASK_COMPLETED:
        raise Conflict(f"Task is {task.status}; it cannot be completed.", task_status=task.status)
    return task


def get_bot_task(bot_id: str, task_id: int) -> Task:
    """A task of the given bot, or 404."""
    task = db.session.get(Task, task_id)
    if task is None or task.bot_id != bot_id or not visible(_owner(task)):
        raise NotFound(f"Task task-{task_id} of bot {bot_id!r} not found.")
    return task


def cancel_task(task_id: int) -> Task:
    """Cancel a task that has not started; a repeat changes nothing, a started task is 409."""
    task = get_task(task_id)
    if task.workflow_id:
        raise Conflict(f"Task task-{task_id} is a workflow step: cancel its workflow instead.")
    task_rows.cancel_waiting_task(task_id)
    db.session.commit()
    db.session.refresh(task)
    if task.status != TASK_CANCELLED:
        raise Conflict(f"Task task-{task_id} is {task.status}; it cannot be cancelled.")
    return task


def get_task(task_id: int) -> Task:
    """Any task by id, or 404 (also another tenant's)."""
    task = db.session.get(Task, task_id)
    if task is None or not visible(_owner(task)):
        raise NotFound(f"Task task-{task_id} not found.")
    return task


def _owner(task: Task) -> str | None:
    """The tenant of the bot or workflow a task belongs to."""
    if task.bot_id is not None:
        return db.session.scalar(select(Bot.tenant).where(Bot.id == task.bot_id))
    if task.workflow_id is not None:
        return db.session.scalar(select(Workflow.tenant).where(Workflow.id == task.workflow_id))
    return None


def list_bot_tasks(bot_id: str, limit: int, after: int | None, status: str | None) -> list[Task]:
    """A page of a bot's tasks, newest first."""
    bot = db.session.get(Bot, bot_id)
    if bot is None or not visible(bot.tenant):
        raise NotFound(f"Bot {bot_id!r} not found.")
    query = select(Task).where(Task.bot_id == bot_id).order_by(Task.id.desc()).limit(limit)
    if after is not None:
        query = query.where(Task.id < after)
    if status:
        query = query.where(Task.status == status)
    return list(db.session.scalars(query))


def payload_of(task: Task) -> dict[str, Any]:
    """The data the task was given."""
    return load_payloads({task.payload_id}).get(task.payload_id, {})
