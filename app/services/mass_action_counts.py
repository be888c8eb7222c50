"""A mass-action's counters, moved by the same statements that move its tasks.

Three kinds of statement move a mass-action's tasks, and each carries one of the CTEs below:

- a claim (assigned -> running): STARTED_CTE adds to `running` and sets `started_at`;
- a requeue of an expired lease (running -> assigned): REQUEUED_CTE takes from `running`;
- every move to an outcome (the record statement, and outcomes.counted's cancels and step ends):
  ended_cte adds to `completed`, `failed` or `cancelled`, takes what was running from `running`,
  and sets `finished_at` in the statement whose moves bring the ended tasks to the total.

So `GET /mass-actions/{id}` reads one row, never a count over task rows, and the counts commit
with the moves or not at all. A chunk touches its mass-action's row once. Every one of these
statements takes the task rows first and the mass-action rows right after them (the final SELECT
reads per_mass_action, so PostgreSQL runs it before the tallies it does not read; checked by
holding a swarm row and seeing the mass-action row already taken), so they all lock in one order.

After such a statement, `note_moved` (in its transaction) writes the aggregate partials of what
moved and remembers which mass-actions ended, for mass_action_events to announce after the commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from app.services import mass_action_events, partials
from app.services.aggregates import Finished, Folded
from app.services.mass_action_events import FinishedMassAction


def _per_mass_action(source: str) -> str:
    return (
        f"(SELECT mass_action_id, count(*) AS n FROM {source}"
        " WHERE mass_action_id IS NOT NULL GROUP BY mass_action_id)"
    )


def started_cte(source: str) -> str:
    """A CTE adding the tasks of `source` (a CTE returning mass_action_id) to `running`."""
    return f"""
, mass_actions_started AS (
    UPDATE mass_actions m
       SET running = m.running + x.n, started_at = coalesce(m.started_at, now())
      FROM {_per_mass_action(source)} x
     WHERE m.id = x.mass_action_id
)
"""


def requeued_cte(source: str) -> str:
    """A CTE taking the tasks of `source` (back to assigned) from `running`."""
    return f"""
, mass_actions_requeued AS (
    UPDATE mass_actions m SET running = m.running - x.n
      FROM {_per_mass_action(source)} x
     WHERE m.id = x.mass_action_id
)
"""


def ended_cte(was_running: str) -> str:
    """The CTE counting `moved`'s (mass_action_id, status) into their mass-actions.

    `was_running` is the SQL, per group, of how many of the moved tasks were running before
    (the record statement knows the state it moves from; cancels only move tasks not started).
    """
    return f"""
, per_mass_action AS (
    UPDATE mass_actions m
       SET completed = m.completed + x.completed,
           failed = m.failed + x.failed,
           cancelled = m.cancelled + x.cancelled,
           running = m.running - x.was_running,
           started_at = CASE WHEN x.completed + x.failed > x.was_running
                             THEN coalesce(m.started_at, now()) ELSE m.started_at END,
           finished_at = CASE WHEN m.completed + m.failed + m.cancelled + x.ended >= m.total
                              THEN coalesce(m.finished_at, now()) ELSE m.finished_at END
      FROM (SELECT mass_action_id,
                   count(*) FILTER (WHERE status = 'completed') AS completed,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
                   {was_running} AS was_running,
                   count(*) AS ended
              FROM moved WHERE mass_action_id IS NOT NULL GROUP BY mass_action_id) x
     WHERE m.id = x.mass_action_id
    RETURNING m.id, m.swarm_id, m.type, m.tier, m.workflow_id, m.total, m.completed, m.failed,
              m.cancelled, m.created_at, m.finished_at, x.cancelled AS cancelled_now,
              (m.completed + m.failed + m.cancelled = m.total
               AND m.completed + m.failed + m.cancelled - x.ended < m.total) AS ended_now
)
"""


# For the final SELECT: the rows per_mass_action changed, as one JSON array (NULL for none).
ENDED_SUMMARY_SQL = "(SELECT json_agg(p) FROM per_mass_action p)"


class Ended(Protocol):
    """What note_moved reads of one task's outcome (outcomes.Outcome)."""

    @property
    def state(self) -> str: ...
    @property
    def result(self) -> Any: ...
    @property
    def error(self) -> str | None: ...
    @property
    def duration_ms(self) -> float | None: ...


def note_moved(
    rows: list[dict[str, Any]] | None,
    moved_ids: Iterable[list[Any]] | None = None,
    outcomes: Mapping[int, Ended] | None = None,
    folded_ahead: Iterable[Folded] = (),
) -> None:
    """After a statement carrying ended_cte, in its transaction: write the partials of what it
    moved, and keep the mass-actions it ended, to be announced once the transaction commits.

    `rows` is its ENDED_SUMMARY_SQL; for the record statement, `moved_ids` are its
    (mass-action id, task ids) pairs and `outcomes` the outcomes by task id, and `folded_ahead`
    the partials its caller folded before it (aggregates.fold_ahead), used when exactly those
    tasks moved. Cancellations are counted from the rows.
    """
    if not rows:
        return
    ids_of = {mass_action_id: task_ids for mass_action_id, task_ids in moved_ids or ()}
    ready = {(f.task_type, f.task_ids): f.partial for f in folded_ahead}
    by_task = outcomes or {}
    groups: list[tuple[str, str, list[Finished]]] = []
    ready_rows: list[tuple[str, dict[str, Any]]] = []
    for row in rows:
        type_ = row["type"]
        partial = ready.get((type_, frozenset(ids_of.get(row["id"], ()))))
        if partial is not None and not row["cancelled_now"]:
            ready_rows.append((row["id"], partial))
            continue
        tasks = [
            Finished(type_, o.state, o.result, o.error, o.duration_ms)
            for o in (by_task[task_id] for task_id in ids_of.get(row["id"], ()))
        ]
        if row["cancelled_now"]:
            tasks += [Finished(type_, "cancelled", None, None)] * int(row["cancelled_now"])
        groups.append((row["id"], type_, tasks))
    partials.insert(ready_rows)
    partials.write(groups)
    mass_action_events.ended_in_transaction(
        [FinishedMassAction.from_row(row) for row in rows if row["ended_now"]]
    )
