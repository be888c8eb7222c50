"""Telling a caller that something it started has ended: one signed POST of its summary.

Any resource (a workflow `wf-…`, a mass-action `ma-…`) may be created with a `callback_url`,
checked then (`check_url`: the URL guard of the service registry, and a configured
CALLBACK_SECRET). In the transaction that ends the resource, its service calls
`resource_finished` with the summary to send: that stores a `callbacks` row in state `pending`,
and once the transaction commits the delivery is published (`orchestrator.deliver_callback`).
Workflows do so when they settle; a mass-action is heard through mass_action_events, after the
commit that ended it, with its counts and merged aggregate.

A delivery (`deliver`) POSTs

    {"event": ..., "resource_id": ..., "delivery_id": ..., "attempt": n, "timestamp": ...,
     "summary": {...}}

with `X-Orchestrator-Signature: sha256=<hex HMAC-SHA256 of the body with CALLBACK_SECRET>`. The
timestamp is inside the signed body, so a receiver can refuse old or replayed deliveries; the
delivery id stays the same across attempts, so it can also drop a repeat. A failed attempt (no
answer, a 5xx, 408 or 429) is tried again later with exponential backoff, scheduled as a Celery
countdown (never a sleep), up to MAX_ATTEMPTS; any other 4xx, or the last attempt, ends it as
`failed`. A 2xx ends it as `delivered`, and it is never sent again. Each attempt is claimed with a
conditional UPDATE, so a duplicated message cannot send twice, and the reconciler re-publishes a
pending delivery whose message was lost.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any

import requests
from flask import current_app
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from app.clients import ssrf
from app.dispatch import publish_callback
from app.errors import Invalid
from app.extensions import db
from app.models import CALLBACK_DELIVERED, CALLBACK_FAILED, CALLBACK_PENDING, Callback
from app.services import aggregates, mass_action_events
from app.services.ids import iso, utcnow
from app.services.mass_action_events import FinishedMassAction

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 10
# Seconds before attempt n + 1: 1, 2, 4, ... capped at 5 minutes (about 17 minutes in all).
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0
# An attempt holds its row this long: a second message for it waits rather than sends again.
ATTEMPT_LEASE_SECONDS = 60
CONNECT_TIMEOUT_SECONDS = 3.0
READ_TIMEOUT_SECONDS = 10.0
# Statuses worth another attempt; any other 4xx will not change by asking again.
_RETRY_STATUSES = {408, 425, 429}
SIGNATURE_HEADER = "X-Orchestrator-Signature"

_SESSION_KEY = "callbacks_to_publish"

_CLAIM = """
UPDATE callbacks
   SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => :lease)
 WHERE resource_id = :id AND state = 'pending' AND next_attempt_at <= now()
RETURNING url, event, summary, attempts
"""

# Once per resource: a second end (there is none) or a repeated announcement adds nothing.
_INSERT_PENDING = (
    "INSERT INTO callbacks (resource_id, url, event, summary, state, next_attempt_at)"
    " VALUES (:id, :url, :event, CAST(:summary AS jsonb), 'pending', now())"
    " ON CONFLICT (resource_id) DO NOTHING"
)

_STALE = """
SELECT resource_id FROM callbacks
 WHERE state = 'pending' AND next_attempt_at < now() - make_interval(secs => :age)
 ORDER BY next_attempt_at LIMIT 1000
"""


@dataclass(frozen=True)
class Attempt:
    """How one delivery attempt went; `retry_in` seconds when it should be tried again."""

    state: str
    status: int | None = None
    error: str | None = None
    retry_in: float | None = None


def check_url(url: str) -> None:
    """Refuse (422) a callback URL the service may not call, or any while no secret signs them."""
    if not current_app.config["SETTINGS"].callback_secret:
        raise Invalid(
            "callback_url needs CALLBACK_SECRET to be configured: deliveries are signed with it.",
            field="callback_url",
        )
    try:
        check_url_safe(url)
    except ssrf.UnsafeURL as error:
        raise Invalid(f"callback_url refused: {error}.", field="callback_url") from None


def check_url_safe(url: str) -> list[Any]:
    """The URL registry's guard (app/clients/ssrf.py) with the service's allowlist."""
    allowlist = ssrf.Allowlist.parse(list(current_app.config["SETTINGS"].url_allowlist))
    return ssrf.check_url(url, allowlist)


def resource_finished(resource_id: str, url: str, event_name: str, summary: dict[str, Any]) -> None:
    """Store the summary to deliver (in the caller's transaction); published after it commits."""
    db.session.execute(
        text(_INSERT_PENDING),
        {"id": resource_id, "url": url, "event": event_name, "summary": json.dumps(summary)},
    )
    db.session().info.setdefault(_SESSION_KEY, []).append(resource_id)


def view(resource_id: str, url: str | None) -> dict[str, Any] | None:
    """The delivery state a resource shows: None without a callback_url."""
    if url is None:
        return None
    row = db.session.execute(
        select(Callback).where(Callback.resource_id == resource_id),
        execution_options={"populate_existing": True},
    ).scalar_one_or_none()
    return describe(url, row)


def describe(url: str | None, delivery: Any) -> dict[str, Any] | None:
    """The delivery state of a resource with this callback_url, from its `callbacks` row (or any
    object with that row's url, state, attempts, last_status, last_error and delivered_at; None
    while the resource has not ended)."""
    if url is None:
        return None
    if delivery is None:
        return {"url": url, "state": "waiting", "attempts": 0, "last_status": None,
                "last_error": None, "delivered_at": None}  # fmt: skip
    return {
        "url": delivery.url,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "delivered_at": iso(delivery.delivered_at) if delivery.delivered_at else None,
    }


def sign(body: bytes, secret: str) -> str:
    """The signature header's value for a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(resource_id: str) -> Attempt:
    """One delivery attempt of a pending callback (the worker's task body); commits."""
    row = db.session.execute(
        text(_CLAIM), {"id": resource_id, "lease": ATTEMPT_LEASE_SECONDS}
    ).one_or_none()
    db.session.commit()
    if row is None:  # delivered, given up, not due yet, or another worker holds this attempt
        return Attempt(state="skipped")
    url, event_name, summary, attempt = row
    outcome = _post(url, _body(resource_id, event_name, summary, attempt))
    if outcome.state == CALLBACK_DELIVERED:
        _record(resource_id, CALLBACK_DELIVERED, outcome, delivered=True)
        return outcome
    if outcome.retry_in is not None and attempt < MAX_ATTEMPTS:
        delay = min(BACKOFF_BASE_SECONDS * 2 ** (attempt - 1), BACKOFF_CAP_SECONDS)
        _record(resource_id, CALLBACK_PENDING, outcome, retry_in=delay)
        log.warning("callback %s attempt %d failed (%s); again in %.0f s", resource_id, attempt,
                    outcome.error, delay)  # fmt: skip
        return Attempt(CALLBACK_PENDING, outcome.status, outcome.error, retry_in=delay)
    _record(resource_id, CALLBACK_FAILED, outcome)
    log.warning("callback %s given up after %d attempts: %s", resource_id, attempt, outcome.error)
    return Attempt(CALLBACK_FAILED, outcome.status, outcome.error)


def republish_stale(age_seconds: float = 30.0) -> int:
    """Publish again pending deliveries overdue by `age_seconds` (their message was lost)."""
    ids = [row[0] for row in db.session.execute(text(_STALE), {"age": age_seconds})]
    db.session.commit()
    for resource_id in ids:
        publish_callback(resource_id)
    return len(ids)


def _body(resource_id: str, event_name: str, summary: Any, attempt: int) -> tuple[bytes, str]:
    """The body to sign and send, and the timestamp it carries."""
    timestamp = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
    document = {
        "event": event_name,
        "resource_id": resource_id,
        "delivery_id": resource_id,
        "attempt": attempt,
        "timestamp": timestamp,
        "summary": summary,
    }
    return json.dumps(document, separators=(",", ":")).encode(), timestamp


def _post(url: str, signed: tuple[bytes, str]) -> Attempt:
    body, timestamp = signed
    secret = current_app.config["SETTINGS"].callback_secret
    if not secret:
        return Attempt(CALLBACK_FAILED, error="CALLBACK_SECRET is no longer configured")
    try:
        # Checked again on every attempt, on the address actually connected to.
        target, headers = ssrf.pinned(url, check_url_safe(url))
    except ssrf.UnsafeURL as error:
        return Attempt(CALLBACK_FAILED, error=f"URL refused: {error}")
    headers.update(
        {
            "Content-Type": "application/json",
            "User-Agent": "orchestrator-callbacks/1",
            SIGNATURE_HEADER: sign(body, secret),
            "X-Orchestrator-Timestamp": timestamp,
        }
    )
    try:
        answer = requests.post(
            target,
            data=body,
            headers=headers,
            timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
            allow_redirects=False,
        )
    except requests.RequestException as error:
        return Attempt(CALLBACK_PENDING, error=f"{type(error).__name__}: {error}"[:300], retry_in=0)
    if 200 <= answer.status_code < 300:
        return Attempt(CALLBACK_DELIVERED, status=answer.status_code)
    refusal = f"answered {answer.status_code}"
    if answer.status_code >= 500 or answer.status_code in _RETRY_STATUSES:
        return Attempt(CALLBACK_PENDING, status=answer.status_code, error=refusal, retry_in=0)
    return Attempt(CALLBACK_FAILED, status=answer.status_code, error=refusal)


def _record(
    resource_id: str,
    state: str,
    outcome: Attempt,
    *,
    delivered: bool = False,
    retry_in: float | None = None,
) -> None:
    db.session.execute(
        text(
            "UPDATE callbacks SET state = :state, last_status = :status, last_error = :error,"
            " delivered_at = CASE WHEN :delivered THEN now() ELSE delivered_at END,"
            " next_attempt_at = CASE WHEN :retry IS NULL THEN next_attempt_at"
            "   ELSE now() + make_interval(secs => CAST(:retry AS double precision)) END"
            " WHERE resource_id = :id"
        ),
        {
            "id": resource_id,
            "state": state,
            "status": outcome.status,
            "error": outcome.error,
            "delivered": delivered,
            "retry": retry_in,
        },
    )
    db.session.commit()


@mass_action_events.on_mass_action_finished
def _mass_action_finished(finished: FinishedMassAction) -> None:
    """A mass-action ended (announced after its commit): deliver its summary if it asked."""
    # Announced outside any transaction of the session: read and write on a connection of its
    # own, one short transaction.
    with db.engine.begin() as connection:
        url = connection.execute(
            text("SELECT callback_url FROM mass_actions WHERE id = :id"), {"id": finished.id}
        ).scalar_one_or_none()
        if not url:
            return
        stored = connection.execute(
            text("SELECT partial FROM mass_action_partials WHERE mass_action_id = :id"),
            {"id": finished.id},
        ).scalars()
        summary = {
            "id": finished.id,
            "kind": "mass_action",
            "swarm_id": finished.swarm_id,
            "task_type": finished.task_type,
            "tier": finished.tier,
            "status": finished.status,
            "counts": {
                "total": finished.total,
                "completed": finished.completed,
                "failed": finished.failed,
                "cancelled": finished.cancelled,
            },
            "created_at": iso(finished.created_at),
            "finished_at": iso(finished.finished_at),
            "workflow_id": finished.workflow_id,
            "aggregate": aggregates.merge(finished.task_type, list(stored)),
        }
        connection.execute(
            text(_INSERT_PENDING),
            {
                "id": finished.id,
                "url": url,
                "event": "mass_action.finished",
                "summary": json.dumps(summary),
            },  # fmt: skip
        )
    publish_callback(finished.id)


@event.listens_for(Session, "after_commit")
def _publish_after_commit(session: Session) -> None:
    # The row is committed: a worker that receives the id will find it.
    for resource_id in session.info.pop(_SESSION_KEY, []):
        publish_callback(resource_id)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_SESSION_KEY, None)
