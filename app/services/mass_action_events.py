"""When a mass-action ends: its outcome, and who wants to hear about it.

A mass-action ends in the statement whose moves bring completed + failed + cancelled to its total
(or at creation, when it has no task at all). That statement's transaction notes it here
(`ended_in_transaction`); once the transaction commits, the duration is observed for Prometheus
and every listener registered with `on_mass_action_finished` is called once per mass-action, in
that process (a rolled-back transaction announces nothing). Exactly one statement ends a
mass-action, so it is announced once.

A listener runs after the commit, outside any transaction of the session: one that needs the
database opens its own (`db.engine.begin()`), or better, publishes a Celery task by name. One that
raises is logged and skipped; the outcome is committed whatever it does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from app import metrics
from app.extensions import db

log = logging.getLogger(__name__)

# A mass-action's status: queued and running while tasks remain, then one of the last three.
QUEUED, RUNNING = "queued", "running"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
ENDED = (COMPLETED, FAILED, CANCELLED)


def status_of(
    *, total: int, running: int, completed: int, failed: int, cancelled: int, started: bool
) -> str:
    """The status its counters say. Once every task ended: cancelled when any task was
    cancelled (by a cancel, or its bot retired), failed when every task failed, completed
    otherwise (failures, if some, are in the counts)."""
    if completed + failed + cancelled < total:
        return RUNNING if started or running or completed or failed or cancelled else QUEUED
    if cancelled:
        return CANCELLED
    if failed and not completed:
        return FAILED
    return COMPLETED


@dataclass(frozen=True)
class FinishedMassAction:
    """A mass-action that just ended, as its listeners see it."""

    id: str
    swarm_id: str
    task_type: str
    tier: str
    status: str
    total: int
    completed: int
    failed: int
    cancelled: int
    created_at: datetime
    finished_at: datetime
    workflow_id: str | None = None

    @property
    def duration_seconds(self) -> float:
        """From creation to the end."""
        return max((self.finished_at - self.created_at).total_seconds(), 0.0)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> FinishedMassAction:
        """From the columns of a mass_actions row (as returned by the statement that ended it)."""
        return cls(
            id=row["id"],
            swarm_id=row["swarm_id"],
            task_type=row["type"],
            tier=row["tier"],
            status=status_of(
                total=int(row["total"]),
                running=0,
                completed=int(row["completed"]),
                failed=int(row["failed"]),
                cancelled=int(row["cancelled"]),
                started=True,
            ),
            total=int(row["total"]),
            completed=int(row["completed"]),
            failed=int(row["failed"]),
            cancelled=int(row["cancelled"]),
            created_at=_moment(row["created_at"]),
            finished_at=_moment(row["finished_at"]),
            workflow_id=row.get("workflow_id"),
        )


Listener = Callable[[FinishedMassAction], None]
_LISTENERS: list[Listener] = []


def on_mass_action_finished(listener: Listener) -> Listener:
    """Register `listener` to be called once for every mass-action that ends (usable as a
    decorator). It runs after the commit that ended the mass-action, in that process."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)
    return listener


def remove_listener(listener: Listener) -> None:
    """Stop calling `listener`."""
    if listener in _LISTENERS:
        _LISTENERS.remove(listener)


_PENDING = "mass_actions_ended"


def ended_in_transaction(finished: list[FinishedMassAction]) -> None:
    """Note mass-actions the current transaction ended: announced after it commits."""
    if finished:
        db.session().info.setdefault(_PENDING, []).extend(finished)


@event.listens_for(Session, "after_commit")
def _announce_committed(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending:
        announce(pending)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_PENDING, None)


def announce(finished: list[FinishedMassAction]) -> None:
    """Tell metrics and every listener that these mass-actions ended (after their commit)."""
    for mass_action in finished:
        metrics.observe_mass_action(
            mass_action.task_type,
            mass_action.tier,
            mass_action.status,
            mass_action.duration_seconds,
        )
        for listener in list(_LISTENERS):
            try:
                listener(mass_action)
            except Exception:
                log.exception("listener %r failed for mass-action %s", listener, mass_action.id)


def _moment(value: Any) -> datetime:
    # json_build_object writes timestamptz as ISO text.
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
