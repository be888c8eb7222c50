"""Whether the parts the service needs answer."""

from __future__ import annotations

from typing import Any

from flask import current_app
from sqlalchemy import text

from app.extensions import db
from app.services.ids import iso, utcnow


def check() -> tuple[dict[str, Any], bool]:
    """The health report and whether every part is up."""
    postgres = _probe(lambda: db.session.execute(text("SELECT 1")).scalar_one())
    redis_state = _probe(lambda: current_app.extensions["redis"].ping())
    if postgres != "connected":
        db.session.rollback()
    healthy = postgres == "connected" and redis_state == "connected"
    report = {
        "status": "healthy" if healthy else "unhealthy",
        "service": "orchestrator",
        "redis": redis_state,
        "postgres": postgres,
        "timestamp": iso(utcnow()),
    }
    return report, healthy


def _probe(call) -> str:
    try:
        call()
    except Exception:
        return "disconnected"
    return "connected"
