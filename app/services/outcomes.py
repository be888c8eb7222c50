"""How tasks end, and the one rule for counting it: the record statement and its tallies.

Every statement that moves tasks into a terminal state exposes the moved rows as a CTE named
`moved`; TALLY_CTES then adds the same amounts to each bot, its swarm and the service totals in
that same statement, so counts commit with the outcome or not at all. `record_outcomes` is the
statement a worker (and a manual completion, and the reconciler) uses; `counted` builds the
others (cancelling, ending workflow steps) around the same tallies.

Workflows sit above this module (they move tasks with `counted` statements), so the record
statement does not advance them itself: its caller passes the hook (`workflows.on_steps_moved`),
called only when the moved tasks belong to a workflow. A plain mass-action's chunk carries no
workflow id and never calls it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg2.errors import DeadlockDetected
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app import metrics
from app.errors import is_connection_error
from app.extensions import db
from app.models import TASK_RUNNING
from app.services import mass_action_counts, prepared
from app.services.aggregates import Folded
from app.services.counter_shards import add_to_swarms_sql, add_to_totals_sql

log = logging.getLogger(__name__)

# How long a worker keeps retrying to record finished tasks while PostgreSQL is unreachable.
DATABASE_OUTAGE_PATIENCE_SECONDS = 60.0

# Reads `moved`'s (bot_id, swarm_id, status) and adds the amounts where they belong. The
# mass-action counters follow it in each statement (mass_action_counts.ended_cte). Rows are taken
# in the order of app/services/counter_shards.py: the bots by id (bots_locked, read before
# per_bot changes any), then the swarms' and the service's shard rows, in key order; the
# statement's final SELECT reads TALLIED_SQL after the mass-action summary so that they run in
# that order.
TALLY_CTES = f"""
, bots_locked AS (
    SELECT b.id FROM bots b WHERE b.id IN (SELECT bot_id FROM moved) ORDER BY b.id FOR UPDATE
)
, per_bot AS (
    UPDATE bots b
       SET completed_tasks = b.completed_tasks + x.completed,
           failed_tasks = b.failed_tasks + x.failed,
           cancelled_tasks = b.cancelled_tasks + x.cancelled,
           last_active = CASE WHEN x.completed + x.failed > 0 THEN now() ELSE b.last_active END
      FROM (SELECT bot_id,
                   count(*) FILTER (WHERE status = 'completed') AS completed,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status = 'cancelled') AS cancelled
              FROM moved WHERE bot_id IS NOT NULL GROUP BY bot_id) x
     WHERE b.id = x.bot_id AND (SELECT count(*) FROM bots_locked) >= 0
    RETURNING 1
)
, per_swarm AS (
    {
    add_to_swarms_sql(
        "SELECT swarm_id, 0,"
        " count(*) FILTER (WHERE status = 'completed'),"
        " count(*) FILTER (WHERE status = 'failed'),"
        " count(*) FILTER (WHERE status = 'cancelled')"
        " FROM moved WHERE swarm_id IS NOT NULL GROUP BY swarm_id"
    )
}
    RETURNING 1
)
, per_total AS (
    {add_to_totals_sql("SELECT 'tasks_' || status, count(*) FROM moved GROUP BY status")}
    RETURNING 1
)
"""

# For the final SELECT, after the mass-action summary: runs the tallies in lock order.
TALLIED_SQL = (
    "(SELECT count(*) FROM per_bot) + (SELECT count(*) FROM per_swarm)"
    " + (SELECT count(*) FROM per_total)"
)


# What every `move` of counted() returns: TALLY_CTES reads the first three, the mass-action
# counters (app/services/mass_action_counts.py) the last two.
MOVED_COLUMNS = "bot_id, swarm_id, status, mass_action_id"


def counted(move: str) -> str:
    """A statement running `move` as the `moved` CTE, tallying it; run it with run_counted.

    `move` is an UPDATE of tasks RETURNING MOVED_COLUMNS that moves no running task of a
    mass-action (cancels and steps that never ran; a workflow's own step rows belong to none).
    Built once, at import.
    """
    return (
        f"WITH moved AS ({move})"
        + TALLY_CTES
        + mass_action_counts.ended_cte(was_running="0")
        + f"SELECT count(*), {mass_action_counts.ENDED_SUMMARY_SQL}, {TALLIED_SQL} FROM moved"
    )


def run_counted(statement: str, params: dict[str, Any]) -> int:
    """Run a counted() statement in the caller's transaction; how many tasks it moved."""
    moved, mass_actions, _tallied = db.session.execute(text(statement), params).one()
    mass_action_counts.note_moved(mass_actions)
    return int(moved)


def add_to_counters_sql(pairs: str) -> str:
    """An upsert adding `(name, amount)` pairs (a VALUES list or SELECT) to the totals."""
    return add_to_totals_sql(pairs)


# ---- the record statement ------------------------------------------------------------------


def _record_statement(*, claimed: bool) -> str:
    """The statement that moves a chunk's tasks to their outcomes and counts them.

    The outcomes arrive as one JSON document (see _outcomes_json): one string parameter instead
    of five arrays whose every element psycopg2 would quote in Python. Claimed tasks must still be
    on the attempt the worker claimed; tasks run straight from `assigned` (execution's
    ONE_STEP_TYPES) count their attempt and start time here instead.

    It answers one row: how many moved, the workflows they belong to (for the hook), and the
    summary metrics.record_moved counts: (tier, type, status, start_s, finish_s, n) per group.
    Tasks of one chunk share their assignment, start and finish times, so a chunk of 2,000 is
    normally one group.
    """
    if claimed:
        also_set, attempt_now = "", "t.attempts"
    else:
        also_set = ", attempts = t.attempts + 1, started_at = CAST(:started_at AS timestamptz)"
        attempt_now = "t.attempts + 1"
    return (
        f"""
WITH outcome AS (
    SELECT * FROM jsonb_to_recordset(CAST(:outcomes AS jsonb))
        AS o(id bigint, state text, result jsonb, error text, attempt int)
), moved AS (
    UPDATE tasks t
       SET status = o.state, result = o.result, error = o.error,
           finished_at = now(), lease_expires_at = NULL{also_set}
      FROM outcome o
     WHERE t.id = o.id AND (t.status = ANY(:from_states)) IS TRUE
       AND (o.attempt IS NULL OR {attempt_now} = o.attempt)
    RETURNING t.bot_id, t.swarm_id, t.status, t.workflow_id,
              t.tier, t.type, t.assigned_at, t.started_at, t.finished_at,
              t.id, t.mass_action_id
)
"""
        + TALLY_CTES
        + mass_action_counts.ended_cte(
            was_running="CASE WHEN CAST(:from_running AS boolean) THEN count(*) ELSE 0 END"
        )
        + f"""
SELECT count(*),
       array_remove(array_agg(DISTINCT workflow_id), NULL),
       (SELECT json_agg(json_build_array(tier, type, status, start_s, finish_s, n)) FROM (
            SELECT tier, type, status, extract(epoch FROM started_at - assigned_at) AS start_s,
                   extract(epoch FROM finished_at - assigned_at) AS finish_s, count(*) AS n
              FROM moved GROUP BY 1, 2, 3, 4, 5) AS g),
       {mass_action_counts.ENDED_SUMMARY_SQL},
       {TALLIED_SQL},
       (SELECT json_agg(json_build_array(mass_action_id, ids)) FROM (
            SELECT mass_action_id, array_agg(id) AS ids FROM moved
             WHERE mass_action_id IS NOT NULL GROUP BY mass_action_id) AS ma)
  FROM moved
"""
    )


_RECORD = _record_statement(claimed=True)
_RECORD_UNCLAIMED = _record_statement(claimed=False)


@dataclass(frozen=True)
class Outcome:
    """How one task ended. `attempt` None means: whichever attempt holds it (manual completion)."""

    task_id: int
    state: str
    result: Any
    error: str | None
    attempt: int | None
    # How long its handler ran, for the merge rules' latency figures; None when not measured.
    duration_ms: float | None = None


# Called inside the record's transaction with the workflows whose tasks moved; returns what to
# run once that transaction commits (publishing the steps it released).
WorkflowHook = Callable[[list[str]], Callable[[], None]]


def _outcomes_json(outcomes: list[Outcome]) -> str:
    """The outcomes as a JSON array of objects for jsonb_to_recordset; absent keys read as NULL."""
    rows = []
    for o in outcomes:
        row: dict[str, Any] = {"id": o.task_id, "state": o.state}
        if o.result is not None:
            row["result"] = o.result
        if o.error is not None:
            row["error"] = o.error
        if o.attempt is not None:
            row["attempt"] = o.attempt
        rows.append(row)
    return json.dumps(rows)


def record_outcomes(
    outcomes: list[Outcome],
    from_states: tuple[str, ...],
    *,
    on_workflows: WorkflowHook,
    unclaimed_since: Any = None,
    folded_ahead: Sequence[Folded] = (),
) -> int:
    """Move tasks to their outcome and count them, in one statement; commits.

    Only tasks still in from_states (and, for a worker, still on the same attempt) move, so the
    counters never count a task twice. With `unclaimed_since` (tasks run straight from
    `assigned`), the move also counts the attempt and sets started_at. When moved tasks belong
    to workflows, `on_workflows` advances them in the same transaction and what it releases runs
    after the commit. `folded_ahead`: the outcomes' aggregate partials, folded before the
    statement takes its locks (aggregates.fold_ahead). Returns how many moved.
    """
    if len(from_states) != 1:
        # The mass-action counters must know whether the moved tasks were running.
        raise ValueError(f"record_outcomes moves tasks from one state, not {from_states}")
    params = {
        "outcomes": _outcomes_json(outcomes),
        "from_states": list(from_states),
        "from_running": from_states[0] == TASK_RUNNING,
    }
    statement = _RECORD
    if unclaimed_since is not None:
        statement, params["started_at"] = _RECORD_UNCLAIMED, unclaimed_since
    deadline = time.monotonic() + DATABASE_OUTAGE_PATIENCE_SECONDS
    deadlocks = 0
    while True:
        try:
            row: Any = prepared.execute(
                db.session.connection(), statement, params, rows=len(outcomes)
            ).one()
            moved, workflow_ids, summary, mass_actions, _tallied, moved_ids = row
            if mass_actions:
                by_id = {outcome.task_id: outcome for outcome in outcomes}
                mass_action_counts.note_moved(mass_actions, moved_ids, by_id, folded_ahead)
            after_commit = on_workflows(workflow_ids) if workflow_ids else None
            db.session.commit()
            metrics.record_moved(summary)
            if after_commit is not None:
                after_commit()
            return int(moved)
        except OperationalError as error:
            db.session.rollback()
            if isinstance(error.orig, DeadlockDetected) and deadlocks < 2:
                # Two chunks touching the same bots in different orders; the loser retries.
                deadlocks += 1
                metrics.count_retry("record_outcomes", "deadlock")
                log.warning("deadlock recording %d outcomes; retrying", len(outcomes))
            elif is_connection_error(error) and time.monotonic() < deadline:
                # Hold on to finished work while PostgreSQL restarts rather than drop it and
                # wait for the lease to expire.
                metrics.count_retry("record_outcomes", "connection")
                log.warning("database unavailable recording %d outcomes; retrying", len(outcomes))
                time.sleep(1.0)
            else:
                raise
