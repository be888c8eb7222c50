"""Celery tasks: fixed dotted names, thin bodies that call one service."""

from __future__ import annotations

import logging
import time
from typing import Any

from app.dispatch import CALL_CHUNK, CALLBACK_QUEUE, DELIVER_CALLBACK, EXECUTE_CHUNK, RECONCILE
from app.extensions import db
from app.services import (
    callbacks,
    calls,
    execution,
    health,
    idempotency,
    reconciler,
    registry,
    retention,
)
from workers.celery_app import celery

PROBE_SERVICES = "orchestrator.probe_services"
PURGE_RETENTION = "orchestrator.purge_retention"
PURGE_IDEMPOTENCY_KEYS = "orchestrator.purge_idempotency_keys"

log = logging.getLogger(__name__)


@celery.task(name=EXECUTE_CHUNK, bind=True)
def execute_chunk(self, task_ids: list[int]) -> dict[str, int]:
    """Claim, run and record one chunk of tasks."""
    # Set by the broker when a worker died holding this message: take the safe (claim) path.
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    started = time.monotonic()
    outcome: dict[str, Any] = {"outcome": "error"}
    try:
        report = execution.run_chunk(task_ids, redelivered=redelivered)
        outcome = {"outcome": "recorded", **report}
        health.note_chunk_completed()
        return report
    finally:
        db.session.remove()
        # One line per chunk; the request id comes from the message (see AppContextTask).
        log.info(
            "chunk %s",
            outcome["outcome"],
            extra={
                "fields": {
                    "event": "chunk",
                    "task_count": len(task_ids),
                    "redelivered": redelivered,
                    **outcome,
                    "duration_ms": round((time.monotonic() - started) * 1000, 2),
                }
            },
        )


@celery.task(name=CALL_CHUNK)
def call_chunk(task_ids: list[int], tier: str, call_type: str) -> dict[str, int]:
    """Run a chunk of calls to one downstream service in the I/O pool (`-P threads`)."""
    started = time.monotonic()
    report: dict[str, Any] = {}
    try:
        report = calls.run_call_chunk(task_ids, tier, call_type)
        return report
    finally:
        db.session.remove()
        log.info(
            "calls %s",
            call_type,
            extra={
                "fields": {
                    "event": "calls",
                    "task_count": len(task_ids),
                    **report,
                    "duration_ms": round((time.monotonic() - started) * 1000, 2),
                }
            },
        )


@celery.task(name=RECONCILE)
def reconcile() -> dict[str, Any]:
    """Recover expired leases and re-publish stranded tasks."""
    try:
        return reconciler.reconcile().__dict__
    finally:
        db.session.remove()


@celery.task(name=PROBE_SERVICES)
def probe_services() -> dict[str, int]:
    """Probe every downstream URL's health path and store state, latency and time."""
    try:
        return registry.probe_all()
    finally:
        db.session.remove()


@celery.task(name=PURGE_IDEMPOTENCY_KEYS)
def purge_idempotency_keys() -> int:
    """Delete Idempotency-Key answers older than IDEMPOTENCY_TTL, in short batches."""
    try:
        return idempotency.purge_expired()
    finally:
        db.session.remove()


@celery.task(name=DELIVER_CALLBACK, bind=True, max_retries=None)
def deliver_callback(self, resource_id: str) -> str:
    """POST an ended resource's signed summary to its callback_url; a failure retries later."""
    try:
        attempt = callbacks.deliver(resource_id)
    finally:
        db.session.remove()
    if attempt.retry_in is not None:
        # A countdown on the broker, not a sleep: the worker process is free meanwhile.
        raise self.retry(countdown=attempt.retry_in, queue=CALLBACK_QUEUE)
    return attempt.state


@celery.task(name=PURGE_RETENTION)
def purge_retention() -> dict[str, Any]:
    """Delete finished tasks, ended workflows, old audit entries and unused payloads."""
    try:
        return retention.purge().__dict__
    finally:
        db.session.remove()
