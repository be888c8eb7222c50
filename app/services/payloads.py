"""Task input data, stored once and shared by every task of a mass-action."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.extensions import db
from app.models import TaskPayload


def store_payload(data: dict[str, Any]) -> int:
    """Store a task's data once; returns its id."""
    payload = TaskPayload(data=data)
    db.session.add(payload)
    db.session.flush()
    return payload.id


def load_payloads(payload_ids: set[int]) -> dict[int, dict[str, Any]]:
    """Several payloads by id, in one query."""
    rows = db.session.execute(
        text("SELECT id, data FROM task_payloads WHERE id = ANY(:ids)"),
        {"ids": list(payload_ids)},
    )
    return {payload_id: data for payload_id, data in rows}
