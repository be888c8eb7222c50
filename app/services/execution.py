"""Running tasks on the worker pool: claim a chunk, run its handlers, record every outcome.

A chunk costs two statements whatever its size: one UPDATE ... RETURNING claims it (or, for quick
built-ins on a first delivery, one SELECT reads it), and the record statement
(app/services/outcomes.py) moves all outcomes with their counter increments. Both are conditional
on the task's state, so a duplicate message, a late worker or a concurrent manual completion
changes nothing twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from flask import current_app
from sqlalchemy import text

from app.extensions import db
from app.handlers import TaskFailed, TaskInput
from app.models import TASK_ASSIGNED, TASK_COMPLETED, TASK_FAILED, TASK_RUNNING
from app.services import aggregates, mass_action_counts, prepared, workflows
from app.services.aggregates import Finished
from app.services.outcomes import Outcome, record_outcomes
from app.services.payloads import load_payloads
from app.services.plain_reads import fetch_all
from app.services.task_types import catalogue

log = logging.getLogger(__name__)

# A task is claimed only while its bot (if any) is active; a paused bot's tasks wait.
# `(status = ...) IS TRUE` keeps the planner on the primary key: right after a mass-action the
# statistics still say few tasks are assigned, and it would read the whole backlog through
# ix_tasks_open and test each row against the id list (measured: 145 ms instead of 8 ms for a
# 2,000-id chunk behind 50,000 assigned tasks).
# The claimed tasks' mass-action (if any) counts them as running in the same statement.
_CLAIM = (
    """
WITH claimed AS (
    UPDATE tasks t
       SET status = 'running', attempts = t.attempts + 1, started_at = now(),
           lease_expires_at = now() + make_interval(secs => :lease)
     WHERE t.id = ANY(CAST(:ids AS bigint[])) AND (t.status = 'assigned') IS TRUE
       AND (t.bot_id IS NULL
            OR EXISTS (SELECT 1 FROM bots b WHERE b.id = t.bot_id AND b.status = 'active'))
    RETURNING t.id, t.type, t.payload_id, t.slice_index, t.attempts, t.timeout_s, t.retries,
              t.slice_count, t.mass_action_id
)
"""
    + mass_action_counts.started_cte("claimed")
    + "SELECT id, type, payload_id, slice_index, attempts, timeout_s, retries, slice_count"
    + " FROM claimed"
)


# Built-in types whose handlers are pure, in-process and quick. A first delivery of a chunk of them
# is run without a claim: read (_PEEK), run, then one statement moves assigned -> outcome, on the
# attempt the read saw. That writes each task row once instead of twice and commits once per chunk
# (measured: the claim was ~40% of the database time of a 2,000-task echo chunk). Safe because
# the move is conditional (a concurrent duplicate counts once) and running them twice is harmless;
# a redelivered message (its worker died mid-chunk) takes the claim path, so attempts and leases
# still stop a chunk that kills its worker. Downstream calls always take the claim path.
ONE_STEP_TYPES = frozenset(
    {"echo", "data_processing", "mass_data_processing", "distributed_analysis", "reporting"}
)

# Read in autocommit (no transaction to end before the handlers run). A chunk of a few tasks (a
# single assignment's) reads each payload's data along, on the first row of the tasks sharing it:
# one round trip instead of two. A large chunk reads its payloads in a query of their own: the
# join and the window over 2,000 rows cost a 50,000-task mass-action more than the round trip.
_PEEK = """
SELECT t.id, t.type, t.payload_id, t.slice_index, t.attempts + 1, t.timeout_s, t.retries,
       t.slice_count, now(){payload_data}
  FROM tasks t{payload_join}
 WHERE t.id = ANY(CAST(:ids AS bigint[])) AND (t.status = 'assigned') IS TRUE
   AND (t.bot_id IS NULL
        OR EXISTS (SELECT 1 FROM bots b WHERE b.id = t.bot_id AND b.status = 'active'))
"""
_PEEK_WITH_PAYLOADS = _PEEK.format(
    payload_data=",\n       CASE WHEN row_number() OVER (PARTITION BY t.payload_id) = 1"
    " THEN p.data END",
    payload_join=" LEFT JOIN task_payloads p ON p.id = t.payload_id",
)
_PEEK_TASKS = _PEEK.format(payload_data="", payload_join="")


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
    slice_count: int | None = None


def _id_array(task_ids: list[int]) -> str:
    """The ids as one PostgreSQL array literal: a single string for psycopg2 to quote."""
    return "{" + ",".join(map(str, task_ids)) + "}"


def claim(task_ids: list[int], lease: float | None = None) -> list[Claimed]:
    """Take the still-assigned tasks among task_ids, with a lease (by default TASK_LEASE_SECONDS);
    commits."""
    if lease is None:
        lease = current_app.config["SETTINGS"].task_lease_seconds
    rows = db.session.execute(text(_CLAIM), {"ids": _id_array(task_ids), "lease": lease}).all()
    db.session.commit()
    return [Claimed(*row) for row in rows]


def run_one(task: Claimed, data: dict[str, Any], data_dir: Any = None) -> Outcome:
    """Run one claimed task's handler and say how it ended."""
    task_type = catalogue().get(task.type)
    if data_dir is None:
        data_dir = current_app.config["SETTINGS"].data_dir
    started = time.perf_counter()
    try:
        if task_type is None:
            raise TaskFailed(f"unknown task type {task.type!r}")
        result = task_type.run(
            TaskInput(
                task_type=task.type,
                data=data,
                slice_index=task.slice_index,
                data_dir=data_dir,
                timeout=task.timeout,
                retries=task.retries,
                slice_count=task.slice_count,
            )
        )
    except TaskFailed as failure:
        return Outcome(task.id, TASK_FAILED, None, str(failure), task.attempt, _ms_since(started))
    except SoftTimeLimitExceeded:
        # The chunk ran out of time, not this task: leave it to its lease and the reconciler.
        raise
    except Exception as error:
        # A handler bug must fail its own task, not strand the whole chunk as running.
        log.exception("task-%d (%s) raised", task.id, task.type)
        message = f"internal error in {task.type}: {type(error).__name__}"
        return Outcome(task.id, TASK_FAILED, None, message, task.attempt, _ms_since(started))
    return Outcome(task.id, TASK_COMPLETED, result, None, task.attempt, _ms_since(started))


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def run_chunk(task_ids: list[int], redelivered: bool = False) -> dict[str, int]:
    """Claim, run and record one chunk of tasks; returns counts for the log.

    A first delivery of quick built-in types skips the claim (see ONE_STEP_TYPES).
    """
    started = time.monotonic()
    claimed: list[Claimed] = []
    since = None
    payloads: dict[int, dict[str, Any]] | None = None
    if not redelivered:
        # No transaction: none is held while handlers run, and finished_at is the record's.
        few = len(task_ids) <= prepared.FEW_ROWS
        peek = _PEEK_WITH_PAYLOADS if few else _PEEK_TASKS
        rows = fetch_all(peek, {"ids": _id_array(task_ids)}, rows=len(task_ids))
        if rows and all(row[1] in ONE_STEP_TYPES for row in rows):
            claimed, since = [Claimed(*row[:8]) for row in rows], rows[0][8]
            if few:
                payloads = {row[2]: row[9] for row in rows if row[9] is not None}
        elif not rows:
            return {"received": len(task_ids), "claimed": 0, "recorded": 0}
    if since is None:
        claimed = claim(task_ids)
    if not claimed:
        return {"received": len(task_ids), "claimed": 0, "recorded": 0}
    if payloads is None:
        payloads = load_payloads({task.payload_id for task in claimed})
        # End the read: no snapshot is held while the handlers run.
        db.session.rollback()
    data_dir = current_app.config["SETTINGS"].data_dir
    outcomes = [run_one(task, payloads.get(task.payload_id, {}), data_dir) for task in claimed]
    # The aggregate's partial is folded before the record statement locks the mass-action.
    ahead = aggregates.fold_ahead(
        (o.task_id, Finished(task.type, o.state, o.result, o.error, o.duration_ms))
        for task, o in zip(claimed, outcomes, strict=True)
    )
    # Workflow steps and a swarm step's tasks run here too; only their outcomes call the hook.
    if since is None:
        recorded = record_outcomes(
            outcomes, (TASK_RUNNING,), on_workflows=workflows.on_steps_moved, folded_ahead=ahead
        )
    else:
        recorded = record_outcomes(
            outcomes,
            (TASK_ASSIGNED,),
            on_workflows=workflows.on_steps_moved,
            unclaimed_since=since,
            folded_ahead=ahead,
        )
    failed = sum(1 for o in outcomes if o.state == TASK_FAILED)
    # DEBUG: the worker's own line per chunk (workers/tasks.py) says as much at INFO.
    log.debug(
        "chunk done: %d received, %d claimed, %d recorded, %d failed in %.0f ms",
        len(task_ids),
        len(claimed),
        recorded,
        failed,
        (time.monotonic() - started) * 1000,
    )
    return {"received": len(task_ids), "claimed": len(claimed), "recorded": recorded}
