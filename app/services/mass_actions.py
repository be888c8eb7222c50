"""Mass-actions (`ma-…`): one task for every active bot of a swarm, followed as one thing.

A mass-action is a row with its own counters. The statements that move its tasks move them too
(claim: running; record: completed or failed; cancel: cancelled; requeue: back to assigned), so
its progress is a primary-key read at any size; its aggregate is kept as partials merged on read
(app/services/partials.py). Its results are its task rows, read in task order from the id range
it was inserted in, a page at a time or streamed as NDJSON in bounded batches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text

from app import metrics
from app.dispatch import publish_chunks
from app.errors import Conflict, NotFound
from app.extensions import db
from app.models import MassAction, MassActionPartial, Swarm
from app.services import callbacks, mass_action_events, partials, swarms, task_rows
from app.services.ids import MASS_ACTION_PREFIX, iso, new_id, utcnow
from app.services.mass_action_events import ENDED, FinishedMassAction
from app.services.payloads import store_payload
from app.services.task_types import get_task_type, route_of
from app.services.tenancy import current_tenant, visible

# Rows per query when streaming results: bounds the API worker's memory whatever the total.
STREAM_BATCH = 1000

# A mass-action's tasks in one window of task ids, in task order: a primary-key range read within
# the ids its INSERT gave them, `mass_action_id` filtering out any other task inserted at the same
# moment. `result::text` is the stored JSON as text, so it is never parsed and dumped again.
_RESULTS = """
SELECT t.id, t.bot_id, t.slice_index, t.status, t.attempts, t.result::text, t.error,
       to_char(t.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
       to_char(t.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
  FROM tasks t
 WHERE t.id > :low AND t.id <= :high AND t.mass_action_id = :id {status}
 ORDER BY t.id LIMIT :limit
"""


def _json(value: str | None) -> str:
    return "null" if value is None else json.dumps(value)


def _result_line(row: Any) -> str:
    """One task as a JSON object (MassActionResult), written without parsing its stored result."""
    task_id, bot_id, slice_index, status, attempts, result, error, started, finished = row
    return (
        f'{{"task_id": "task-{task_id}", "bot_id": {_json(bot_id)}, '
        f'"slice_index": {"null" if slice_index is None else int(slice_index)}, '
        f'"status": {_json(status)}, "attempts": {int(attempts)}, "result": {result or "null"}, '
        f'"error": {_json(error)}, "started_at": {_json(started)}, "finished_at": {_json(finished)}}}'
    )


@dataclass(frozen=True)
class MassAssignment:
    """What one mass-action created (the 202 of POST /swarms/{id}/tasks)."""

    mass_action_id: str
    swarm_id: str
    task_type: str
    assignments: int
    assigned_at: datetime


@dataclass(frozen=True)
class MassActionView:
    """A mass-action with its progress figures, as GET /mass-actions/{id} shows it."""

    mass_action: MassAction
    now: datetime
    aggregate: dict[str, Any] | None = field(default=None)

    @property
    def counts(self) -> dict[str, int]:
        """Tasks per state."""
        m = self.mass_action
        return {
            "total": m.total,
            "assigned": self.assigned,
            "running": m.running,
            "completed": m.completed,
            "failed": m.failed,
            "cancelled": m.cancelled,
        }

    @property
    def callback(self) -> dict[str, Any] | None:
        """Where the summary goes when the mass-action ends, and how its delivery went."""
        return callbacks.view(self.mass_action.id, self.mass_action.callback_url)

    @property
    def results_path(self) -> str:
        """Where its results are read."""
        return f"/mass-actions/{self.mass_action.id}/results"

    @property
    def ended(self) -> int:
        """Tasks that reached an outcome."""
        m = self.mass_action
        return m.completed + m.failed + m.cancelled

    @property
    def assigned(self) -> int:
        """Tasks waiting to start: what the other counters leave of the total."""
        return max(self.mass_action.total - self.mass_action.running - self.ended, 0)

    @property
    def status(self) -> str:
        """queued, running, completed, failed or cancelled (see mass_action_events.status_of)."""
        m = self.mass_action
        return mass_action_events.status_of(
            total=m.total,
            running=m.running,
            completed=m.completed,
            failed=m.failed,
            cancelled=m.cancelled,
            started=m.started_at is not None,
        )

    @property
    def percent(self) -> float:
        """Share of the tasks that ended, in percent, to two places."""
        total = self.mass_action.total
        return round(self.ended / total * 100, 2) if total else 100.0

    @property
    def tasks_per_second(self) -> float | None:
        """Tasks ended per second since the first one started (None before)."""
        m = self.mass_action
        if m.started_at is None:
            return None
        until = m.finished_at or self.now
        seconds = (until - m.started_at).total_seconds()
        done = m.completed + m.failed
        if seconds <= 0:
            return None if done == 0 else float(done)
        return round(done / seconds, 1)

    @property
    def eta_seconds(self) -> float | None:
        """Seconds until every task ended at the current rate (0 once ended, None unknown)."""
        if self.mass_action.finished_at is not None or self.status in ENDED:
            return 0.0
        rate = self.tasks_per_second
        if not rate:
            return None
        return round((self.mass_action.total - self.ended) / rate, 1)

    def document(self, callback: dict[str, Any] | None) -> dict[str, Any]:
        """The answer of GET /mass-actions/{id}, in the fields and order of its schema
        (MassActionOut), for the read that skips the schema; `callback` is the delivery state."""
        m = self.mass_action
        return {
            "id": m.id,
            "swarm_id": m.swarm_id,
            "task_type": m.type,
            "tier": m.tier,
            "status": self.status,
            "workflow_id": m.workflow_id,
            "step": m.step,
            "counts": self.counts,
            "percent": self.percent,
            "tasks_per_second": self.tasks_per_second,
            "eta_seconds": self.eta_seconds,
            "created_at": iso(m.created_at),
            "started_at": iso(m.started_at),
            "finished_at": iso(m.finished_at),
            "cancel_requested_at": iso(m.cancel_requested_at),
            "aggregate": self.aggregate,
            "results": self.results_path,
            "callback": callback,
        }


# ---- creating ------------------------------------------------------------------------------


def assign_to_swarm(
    swarm_id: str, type_name: str, data: dict[str, Any], callback_url: str | None = None
) -> MassAssignment:
    """Give one task to every active bot of a swarm as a new mass-action; publish after commit.

    With a callback_url, its summary is POSTed there once it ends (app/services/callbacks.py).
    """
    get_task_type(type_name)  # 422 for an unknown type
    if callback_url is not None:
        callbacks.check_url(callback_url)
    swarm = swarms.lock_for_tasks(swarm_id, type_name)
    now = utcnow()
    mass_action, task_ids = start_on_swarm(
        swarm, type_name, store_payload(data), now, callback_url=callback_url
    )
    tier, mass_action_id = swarm.tier, mass_action.id
    db.session.commit()
    metrics.count_assigned(tier, type_name, len(task_ids))
    publish_chunks(task_ids, tier, **route_of(type_name))
    return MassAssignment(
        mass_action_id=mass_action_id,
        swarm_id=swarm_id,
        task_type=type_name,
        assignments=len(task_ids),
        assigned_at=now,
    )


def start_on_swarm(
    swarm: Swarm,
    type_name: str,
    payload_id: int,
    now: datetime,
    workflow_id: str | None = None,
    step: int | None = None,
    callback_url: str | None = None,
) -> tuple[MassAction, list[int]]:
    """The mass-action row and its tasks, one per active bot of the locked swarm; the caller
    commits, then publishes the ids. Without a task it has ended already (announced on commit)."""
    mass_action_id = new_id(MASS_ACTION_PREFIX)
    task_ids = task_rows.insert_for_swarm(
        swarm, type_name, payload_id, now, workflow_id, step, mass_action_id=mass_action_id
    )
    first, last = (min(task_ids), max(task_ids)) if task_ids else (None, None)
    mass_action = MassAction(
        id=mass_action_id,
        swarm_id=swarm.id,
        tenant=swarm.tenant,
        type=type_name,
        tier=swarm.tier,
        payload_id=payload_id,
        workflow_id=workflow_id,
        step=step,
        total=len(task_ids),
        running=0,
        completed=0,
        failed=0,
        cancelled=0,
        created_at=now,
        finished_at=None if task_ids else now,
        first_task_id=first,
        last_task_id=last,
        callback_url=callback_url,
    )
    db.session.add(mass_action)
    db.session.flush()
    mass_action_events.ended_in_transaction(_finished_at_creation(mass_action))
    return mass_action, task_ids


def _finished_at_creation(mass_action: MassAction) -> list[FinishedMassAction]:
    """A mass-action on a swarm without active bots ends as it starts."""
    if mass_action.total:
        return []
    return [
        FinishedMassAction(
            id=mass_action.id,
            swarm_id=mass_action.swarm_id,
            task_type=mass_action.type,
            tier=mass_action.tier,
            status=mass_action_events.COMPLETED,
            total=0,
            completed=0,
            failed=0,
            cancelled=0,
            created_at=mass_action.created_at,
            finished_at=mass_action.created_at,
            workflow_id=mass_action.workflow_id,
        )
    ]


# ---- cancelling ----------------------------------------------------------------------------


def cancel(mass_action_id: str) -> MassActionView:
    """Cancel every task not yet started, in one statement; running tasks finish. Repeating it
    changes nothing; a mass-action that already ended without a cancel is 409."""
    mass_action = get_mass_action(mass_action_id)
    if mass_action.finished_at is not None and mass_action.cancel_requested_at is None:
        raise Conflict(
            f"Mass-action {mass_action_id!r} already ended; nothing is left to cancel.",
            mass_action_status=MassActionView(mass_action, utcnow()).status,
        )
    # Tasks first, the mass-action row after: the order in which the record statement takes
    # them, so a cancel and a chunk being recorded never wait on each other in a circle.
    if mass_action.first_task_id is not None and mass_action.last_task_id is not None:
        task_rows.cancel_waiting_of_mass_action(
            mass_action.id, mass_action.first_task_id, mass_action.last_task_id
        )
    note_cancel_requested("id = :id", {"id": mass_action.id})
    db.session.commit()
    return view_mass_action(mass_action_id)


def note_cancel_requested(where: str, params: dict[str, Any]) -> None:
    """Stamp the first cancel request on the mass-actions matching `where`; the caller commits
    (after it cancelled their tasks: task rows first, mass-action rows after)."""
    db.session.execute(
        text(
            "UPDATE mass_actions SET cancel_requested_at = coalesce(cancel_requested_at, now())"
            f" WHERE {where}"
        ),
        params,
    )


# ---- reading -------------------------------------------------------------------------------


def get_mass_action(mass_action_id: str, *, lock: bool = False) -> MassAction:
    """The mass-action row, or 404 (also another tenant's)."""
    mass_action = db.session.get(MassAction, mass_action_id, with_for_update=lock)
    if mass_action is None or not visible(mass_action.tenant):
        raise NotFound(f"Mass-action {mass_action_id!r} not found.")
    return mass_action


# The mass-action's partials as [[id, partial], ...], read in the same statement as its row.
_STORED_PARTIALS = (
    select(func.json_agg(func.json_build_array(MassActionPartial.id, MassActionPartial.partial)))
    .where(MassActionPartial.mass_action_id == MassAction.id)
    .correlate(MassAction)
    .scalar_subquery()
)


def view_mass_action(mass_action_id: str) -> MassActionView:
    """Progress from the counters and the merged aggregate: one primary-key read, partials
    taken along."""
    row = db.session.execute(
        select(MassAction, _STORED_PARTIALS)
        .where(MassAction.id == mass_action_id)
        # Counters move in SQL: never answer from an object loaded earlier in this session.
        .execution_options(populate_existing=True)
    ).first()
    if row is None or not visible(row[0].tenant):
        raise NotFound(f"Mass-action {mass_action_id!r} not found.")
    mass_action, stored = row
    aggregate = partials.aggregate(mass_action.id, mass_action.type, stored or [])
    return MassActionView(mass_action, utcnow(), aggregate)


def list_for_swarm(swarm_id: str, limit: int, after: str | None) -> list[MassActionView]:
    """A page of a swarm's mass-actions, newest first; `after` is the last id of the page before."""
    swarm = db.session.get(Swarm, swarm_id)
    if swarm is None or not visible(swarm.tenant):
        raise NotFound(f"Swarm {swarm_id!r} not found.")
    query = (
        select(MassAction)
        .where(MassAction.swarm_id == swarm_id)
        .order_by(MassAction.created_at.desc(), MassAction.id.desc())
        .limit(limit)
    )
    if after:
        cursor = db.session.get(MassAction, after)
        if cursor is None or cursor.swarm_id != swarm_id:
            raise NotFound(f"No mass-action {after!r} in swarm {swarm_id!r}.")
        query = query.where(
            (MassAction.created_at < cursor.created_at)
            | ((MassAction.created_at == cursor.created_at) & (MassAction.id < cursor.id))
        )
    now = utcnow()
    return [MassActionView(row, now) for row in db.session.scalars(query)]


def list_unfinished(limit: int) -> list[MassActionView]:
    """The most recent mass-actions still running, newest first (all tenants: the dashboard)."""
    query = (
        select(MassAction)
        .where(MassAction.finished_at.is_(None))
        .order_by(MassAction.created_at.desc())
        .limit(limit)
    )
    if current_tenant() is not None:
        query = query.where(MassAction.tenant == current_tenant())
    now = utcnow()
    return [MassActionView(row, now) for row in db.session.scalars(query)]


def for_workflow(workflow_id: str) -> dict[int, str]:
    """Step number -> mass-action id, for a workflow's steps that ran on a swarm."""
    rows = db.session.execute(
        select(MassAction.step, MassAction.id).where(MassAction.workflow_id == workflow_id)
    ).all()
    return {int(step): mass_action_id for step, mass_action_id in rows if step is not None}


def results_page(
    mass_action_id: str, after: int | None, limit: int, status: str | None
) -> tuple[list[str], int | None]:
    """Up to `limit` result lines (JSON text) in task order after task `after`, and the cursor
    for the next page (None at the end)."""
    mass_action = get_mass_action(mass_action_id)
    rows = _result_rows(mass_action, after or 0, limit, status)
    next_after = rows[-1][0] if len(rows) == limit else None
    return [line for _, line in rows], next_after


def stream_results(mass_action_id: str, after: int | None, status: str | None) -> Iterator[str]:
    """Every result line after task `after`, as NDJSON chunks of STREAM_BATCH lines.

    Checks the mass-action before the first chunk, so a 404 is still an ordinary answer. Each
    batch is its own keyset query: memory stays bounded by one batch, whatever the total.
    """
    mass_action = get_mass_action(mass_action_id)

    def chunks() -> Iterator[str]:
        cursor = after or 0
        while True:
            rows = _result_rows(mass_action, cursor, STREAM_BATCH, status)
            if not rows:
                break
            yield "\n".join(line for _, line in rows) + "\n"
            if len(rows) < STREAM_BATCH:
                break
            cursor = rows[-1][0]
        db.session.rollback()

    return chunks()


def _result_rows(
    mass_action: MassAction, after: int, limit: int, status: str | None
) -> list[tuple[int, str]]:
    """Up to `limit` of its tasks after task `after`, read window by window of task ids.

    Right after a mass-action the planner's statistics do not know its rows yet; asked for the
    whole id range at once it may sort all 50,000 to return 1,000 (measured: 180 ms a page). A
    window of `limit` ids holds a page when the ids are contiguous, as one INSERT leaves them; it
    doubles while a window comes back short (tasks filtered out by `status`, or others' tasks
    inserted at the same moment).
    """
    first, last = mass_action.first_task_id, mass_action.last_task_id
    if first is None or last is None:
        return []
    statement = _RESULTS.format(status="AND t.status = :status" if status else "")
    found: list[tuple[int, str]] = []
    low, window = max(after, first - 1), limit
    while len(found) < limit and low < last:
        high = min(last, low + window)
        params: dict[str, Any] = {
            "id": mass_action.id,
            "low": low,
            "high": high,
            "limit": limit - len(found),
        }
        if status:
            params["status"] = status
        rows = db.session.execute(text(statement), params).all()
        found += [(int(row[0]), _result_line(row)) for row in rows]
        low = rows[-1][0] if len(rows) == params["limit"] else high
        window *= 2
    return found
