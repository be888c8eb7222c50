"""Giving tasks to bots and swarms, completing them by hand, and cancelling what still waits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text

from app import metrics
from app.dispatch import publish_chunks
from app.errors import Conflict, NotFound
from app.extensions import db
from app.models import (
    BOT_ACTIVE,
    OPEN_TASK_STATES,
    TASK_ASSIGNED,
    TASK_CANCELLED,
    TASK_COMPLETED,
    Bot,
    Task,
    Workflow,
)
from app.services import task_rows, workflows
from app.services.ids import utcnow
from app.services.outcomes import Outcome, add_to_counters_sql, record_outcomes
from app.services.payloads import load_payloads, store_payload
from app.services.task_types import (
    get_task_type,
    require_capability,
    require_runnable,
    route_of,
)
from app.services.tenancy import visible


@dataclass(frozen=True)
class Assignment:
    """What one assignment created."""

    task_id: int
    bot_id: str
    task_type: str
    assigned_at: datetime


def assign_to_bot(bot_id: str, type_name: str, data: dict[str, Any]) -> Assignment:
    """Give one task to one active bot, then publish it."""
    task_type = get_task_type(type_name)
    bot = db.session.get(Bot, bot_id, with_for_update=True)
    if bot is None or not visible(bot.tenant):
        raise NotFound(f"Bot {bot_id!r} not found.")
    if bot.status != BOT_ACTIVE:
        raise Conflict(f"Bot {bot_id!r} is {bot.status}; only active bots take tasks.")
    require_capability(task_type, bot.capabilities, f"Bot {bot_id!r}")
    require_runnable(task_type)
    now = utcnow()
    task = Task(
        type=type_name,
        tier=bot.tier,
        status=TASK_ASSIGNED,
        bot_id=bot.id,
        swarm_id=bot.swarm_id,
        payload_id=store_payload(data),
        slice_index=None,
        assigned_at=now,
    )
    db.session.add(task)
    bot.total_tasks = Bot.total_tasks + 1
    if bot.swarm_id:
        db.session.execute(
            text("UPDATE swarms SET total_tasks = total_tasks + 1 WHERE id = :id"),
            {"id": bot.swarm_id},
        )
    db.session.execute(text(add_to_counters_sql("VALUES ('tasks_assigned', 1)")))
    db.session.flush()
    task_id, tier = task.id, task.tier
    db.session.commit()
    metrics.count_assigned(tier, type_name)
    publish_chunks([task_id], tier, **{**route_of(type_name), "chunk_size": 1})
    return Assignment(task_id=task_id, bot_id=bot_id, task_type=type_name, assigned_at=now)


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
