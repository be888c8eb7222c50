"""/task/{id}: one task or one workflow, by the id the service answered."""

from __future__ import annotations

from flask_smorest import Blueprint

from app.api.schemas import TaskDetail, WorkflowOut, task_or_workflow
from app.errors import NotFound
from app.services import assignments, workflows
from app.services.ids import WORKFLOW_PREFIX, parse_task_id

blp = Blueprint("tasks", __name__, description="Task and workflow status")


def _row_id(task_id: str) -> int:
    row_id = parse_task_id(task_id)
    if row_id is None:
        raise NotFound(f"Task {task_id!r} not found.")
    return row_id


TASK_OR_WORKFLOW = task_or_workflow(
    "A task (`task-…`, `kind` task, with its `data`) or a workflow (`wf-…`, `kind` workflow)"
)


def _task_document(task) -> dict:
    document = TaskDetail().dump(task)
    document["data"] = assignments.payload_of(task)
    return document


@blp.route("/task/<task_id>", methods=["GET"])
@blp.doc(responses={"200": TASK_OR_WORKFLOW})
def get_task(task_id):
    """A task (`task-…`) with its data and result, or a workflow (`wf-…`) with its steps."""
    if task_id.startswith(WORKFLOW_PREFIX):
        return WorkflowOut().dump(workflows.get_workflow(task_id))
    return _task_document(assignments.get_task(_row_id(task_id)))


@blp.route("/task/<task_id>", methods=["DELETE"])
@blp.doc(responses={"200": TASK_OR_WORKFLOW})
def cancel_task(task_id):
    """Cancel a workflow or a task that has not started; started work runs to its end."""
    if task_id.startswith(WORKFLOW_PREFIX):
        return WorkflowOut().dump(workflows.cancel_workflow(task_id))
    return _task_document(assignments.cancel_task(_row_id(task_id)))


@blp.route("/task/<task_id>/cancel", methods=["POST"])
@blp.doc(responses={"200": TASK_OR_WORKFLOW})
def cancel_task_by_post(task_id):
    """The same as DELETE /task/{task_id}, for clients that cannot send DELETE."""
    return cancel_task(task_id)
