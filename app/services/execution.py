"""Running tasks on the worker pool: claim a chunk, run its handlers, record every outcome.

A chunk costs two statements whatever its size: one UPDATE ... RETURNING claims it, one statement
records all outcomes with their counter increments. Both are conditional on the task's state, so a
duplicate message, a late worker or a concurrent manual completion changes nothing twice.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from flask import current_app
from psycopg2.errors import DeadlockDetected
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.extensions import db
from app.handlers import TaskFailed, TaskInput
from app.models import TASK_COMPLETED, TASK_FAILED, TASK_RUNNING
from app.services import workflows
from app.services.payloads import load_payloads
from app.services.tally import TALLY_CTES
from app.services.task_types import TASK_TYPES

log = logging.getLogger(__name__)

# A task is claimed only while its bot (if any) is active; a paused bot's tasks wait.
_CLAIM = """
UPDATE tasks t
   SET status = 'running', attempts = t.attempts + 1, started_at = now(),
       lease_expires_at = now() + make_interval(secs => :lease)
 WHERE t.id = ANY(:ids) AND t.status = 'assigned'
   AND (t.bot_id IS NULL
        OR EXISTS (SELECT 1 FROM bots b WHERE b.id = t.bot_id AND b.status = 'active'))
RETURNING t.id, t.type, t.payload_id, t.slice_index, t.attempts, t.timeout_s, t.retries
"""

_RECORD = (
    """
WITH outcome AS (
    SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:states AS text[]),
                         CAST(:results AS text[]), CAST(:errors AS text[]),
                         CAST(:attempts AS int[])) AS o(id, state, result, error, attempt)
), moved AS (
    UPDATE tasks t
       SET status = o.state, result = CAST(o.result AS jsonb), error = o.error,
           finished_at = now(), lease_expires_at = NULL
      FROM outcome o
     WHERE t.id = o.id AND t.status = ANY(:from_states)
       AND (o.attempt IS NULL OR t.attempts = o.attempt)
    RETURNING t.bot_id, t.swarm_id, t.status, t.workflow_id
)
"""
    + TALLY_CTES
    + "SELECT count(*), array_remove(array_agg(DISTINCT workflow_id), NULL) FROM moved"
)


@dataclass(frozen=True)
class Claimed:
    """A task this worker now holds."""

    id: int
    type: str
    payload_id: int
    slice_index: int | None
    attempt: int
    timeout: float | None
    retries: int | None


@dataclass(frozen=True)
class Outcome:
    """How one task ended. `attempt` None means: whichever attempt holds it (manual completion)."""

    task_id: int
    state: str
    result: Any
    error: str | None
    attempt: int | None


def claim(task_ids: list[int]) -> list[Claimed]:
    """Take the still-assigned tasks among task_ids, with a lease; commits."""
    lease = current_app.config["SETTINGS"].task_lease_seconds
    rows = db.session.execute(text(_CLAIM), {"ids": task_ids, "lease": lease}).all()
    db.session.commit()
    return [Claimed(*row) for row in rows]


def record_outcomes(outcomes: list[Outcome], from_states: tuple[str, ...]) -> int:
    """Move tasks to their outcome and count them, in one statement; commits.

    Only tasks still in from_states (and, for a worker, still on the same attempt) move, so the
    counters never count a task twice. Workflow steps that became ready are released in the same
    transaction and published after it. Returns how many moved.
    """
    params = {
        "ids": [o.task_id for o in outcomes],
        "states": [o.state for o in outcomes],
        "results": [None if o.result is None else json.dumps(o.result) for o in outcomes],
        "errors": [o.error for o in outcomes],
        "attempts": [o.attempt for o in outcomes],
        "from_states": list(from_states),
    }
    for attempt in range(3):
        try:
            moved, workflow_ids = db.session.execute(text(_RECORD), params).one()
            released = workflows.advance(workflow_ids) if workflow_ids else []
            db.session.commit()
            workflows.publish_steps(released)
            return int(moved)
        except OperationalError as error:
            db.session.rollback()
            # Two chunks touching the same bots in different orders; the loser simply retries.
            if not isinstance(error.orig, DeadlockDetected) or attempt == 2:
                raise
            log.warning("deadlock recording %d outcomes; retrying", len(outcomes))
    raise AssertionError("unreachable")


def run_one(task: Claimed, data: dict[str, Any]) -> Outcome:
    """Run one claimed task's handler and say how it ended."""
    task_type = TASK_TYPES.get(task.type)
    try:
        if task_type is None:
            raise TaskFailed(f"unknown task type {task.type!r}")
        result = task_type.run(
            TaskInput(
                task_type=task.type,
                data=data,
                slice_index=task.slice_index,
                data_dir=current_app.config["SETTINGS"].data_dir,
                timeout=task.timeout,
                retries=task.retries,
            )
        )
    except TaskFailed as failure:
        return Outcome(task.id, TASK_FAILED, None, str(failure), task.attempt)
    except Exception as error:
        # A handler bug must fail its own task, not strand the whole chunk as running.
        log.exception("task-%d (%s) raised", task.id, task.type)
        message = f"internal error in {task.type}: {type(error).__name__}"
        return Outcome(task.id, TASK_FAILED, None, message, task.attempt)
    return Outcome(task.id, TASK_COMPLETED, result, None, task.attempt)


def run_chunk(task_ids: list[int]) -> dict[str, int]:
    """Claim, run and record one chunk of tasks; returns counts for the log."""
    started = time.monotonic()
    claimed = claim(task_ids)
    if not claimed:
        return {"received": len(task_ids), "claimed": 0, "recorded": 0}
    payloads = load_payloads({task.payload_id for task in claimed})
    outcomes = [run_one(task, payloads.get(task.payload_id, {})) for task in claimed]
    recorded = record_outcomes(outcomes, from_states=(TASK_RUNNING,))
    failed = sum(1 for o in outcomes if o.state == TASK_FAILED)
    log.info(
        "chunk done: %d received, %d claimed, %d recorded, %d failed in %.0f ms",
        len(task_ids),
        len(claimed),
        recorded,
        failed,
        (time.monotonic() - started) * 1000,
    )
    return {"received": len(task_ids), "claimed": len(claimed), "recorded": recorded}

