"""/orchestrate: a workflow of steps across the AI services."""

from __future__ import annotations

from flask_smorest import Blueprint

from app.api.schemas import Orchestrate, WorkflowOut
from app.services import workflows

blp = Blueprint("workflows", __name__, description="Workflows across the AI services")


@blp.route("/orchestrate", methods=["POST"])
@blp.arguments(Orchestrate)
@blp.response(202, WorkflowOut)
def orchestrate(body):
    """Run the steps on the worker pool at the given priority; poll GET /task/{task_id}."""
    steps = [workflows.StepSpec(type=s["type"], params=s["params"]) for s in body["tasks"]]
    return workflows.orchestrate(steps, body["priority"])
