"""/task/{id}: one task or one workflow, by the id the service answered."""

from __future__ import annotations

from flask_smorest import Blueprint

from app.api.schemas import TaskOut, WorkflowOut
from app.errors import NotFound
from app.services import assignments, workflows
from app.services.ids import WORKFLOW_PREFIX, parse_task_id

blp = Blueprint("tasks", __name__, description="Task and workflow status")


@blp.route("/task/<task_id>")
def get_task(task_id):
    """A task (`task-…`) with its result, or a workflow (`wf-…`) with its steps."""
    if task_id.startswith(WORKFLOW_PREFIX):
        return WorkflowOut().dump(workflows.get_workflow(task_id))
    row_id = parse_task_id(task_id)
    if row_id is None:
        raise NotFound(f"Task {task_id!r} not found.")
    task = assignments.get_task(row_id)
    document = TaskOut().dump(task)
    document["data"] = assignments.payload_of(task)
    return document
