"""/orchestrate: a workflow of steps across the AI services."""

from __future__ import annotations

from flask_smorest import Blueprint

from app.api.openapi import link, links
from app.api.schemas import Orchestrate, WorkflowOut
from app.services import workflows

blp = Blueprint("workflows", __name__, description="Workflows across the AI services")


@blp.route("/orchestrate", methods=["POST"])
@blp.arguments(Orchestrate)
@blp.response(202, WorkflowOut)
@links(
    202,
    GetWorkflow=link("get_task", "Poll the workflow", task_id="$response.body#/task_id"),
    CancelWorkflow=link("cancel_task", "Cancel it", task_id="$response.body#/task_id"),
)
def orchestrate(body):
    """Run the steps (a DAG) on the worker pool at the given priority; poll GET /task/{task_id}."""
    steps = [
        workflows.StepSpec(
            type=step["type"],
            params=step["params"],
            name=step.get("name"),
            depends_on=step["depends_on"],
            timeout_s=step.get("timeout_s"),
            retries=step.get("retries"),
            on_failure=step["on_failure"],
            swarm_id=step.get("swarm_id"),
        )
        for step in body["tasks"]
    ]
    return workflows.orchestrate(
        steps, body["priority"], body["deadline_s"], body.get("callback_url")
    )
