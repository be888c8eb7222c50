"""Celery tasks: fixed dotted names, thin bodies that call one service."""

from __future__ import annotations

from typing import Any

from app.dispatch import EXECUTE_CHUNK, RECONCILE
from app.extensions import db
from app.services import execution, health, reconciler
from workers.celery_app import celery


@celery.task(name=EXECUTE_CHUNK)
def execute_chunk(task_ids: list[int]) -> dict[str, int]:
    """Claim, run and record one chunk of tasks."""
    try:
        report = execution.run_chunk(task_ids)
        health.note_chunk_completed()
        return report
    finally:
        db.session.remove()


@celery.task(name=RECONCILE)
def reconcile() -> dict[str, Any]:
    """Recover expired leases and re-publish stranded tasks."""
    try:
        return reconciler.reconcile().__dict__
    finally:
        db.session.remove()
