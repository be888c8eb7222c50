"""Health and the task-type registry."""

from __future__ import annotations

from flask_smorest import Blueprint

from app.api.schemas import Health, TaskTypeList
from app.services import health, task_types

blp = Blueprint("system", __name__, description="Health and task types")


@blp.route("/health")
@blp.doc(summary="Whether PostgreSQL and Redis answer (503 naming the failing part if not)")
@blp.response(200, Health, description="healthy, with queue depth per tier")
@blp.alt_response(503, schema=Health, description="degraded or unhealthy, naming the failing part")
def get_health():
    report, healthy = health.check()
    return report, 200 if healthy else 503


@blp.route("/task-types")
@blp.doc(summary="Every task type: the capability it needs, its chunk size, its service")
@blp.response(200, TaskTypeList, description="Every task type")
def list_task_types():
    return {"items": task_types.describe_all()}
