"""Workflows (POST /orchestrate): steps run in parallel on the pool, each against its service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from app.dispatch import publish_chunks
from app.errors import NotFound
from app.extensions import db
from app.models import (
    TASK_ASSIGNED,
    TASK_CANCELLED,
    TASK_FAILED,
    TASK_RUNNING,
    Task,
    Workflow,
)
from app.services.assignments import store_payload
from app.services.ids import new_id, utcnow
from app.services.task_types import get_task_type, require_runnable
from app.tiers import PRIORITY_TIERS


@dataclass(frozen=True)
class StepSpec:
    """One requested step."""

    type: str
    params: dict[str, Any]


@dataclass(frozen=True)
class WorkflowView:
    """A workflow with its steps and the status they add up to."""

    workflow: Workflow
    steps: list[Task]

    @property
    def status(self) -> str:
        """queued, running, completed, failed or cancelled, from the steps' states."""
        states = {step.status for step in self.steps}
        if states <= {TASK_ASSIGNED}:
            return "queued"
        if states & {TASK_ASSIGNED, TASK_RUNNING}:
            return "running"
        if TASK_FAILED in states:
            return "failed"
        if states == {TASK_CANCELLED}:
            return "cancelled"
        return "completed"


def orchestrate(steps: list[StepSpec], priority: str) -> WorkflowView:
    """Record a workflow and its steps, then publish every step to the priority's tier queue."""
    for step in steps:
        require_runnable(get_task_type(step.type))
    tier = PRIORITY_TIERS[priority]
    now = utcnow()
    workflow = Workflow(id=new_id("wf"), priority=priority, tier=tier, created_at=now)
    db.session.add(workflow)
    tasks = [
        Task(
            type=step.type,
            tier=tier,
            status=TASK_ASSIGNED,
            workflow_id=workflow.id,
            step=index,
            payload_id=store_payload(step.params),
            assigned_at=now,
            attempts=0,
        )
        for index, step in enumerate(steps)
    ]
    db.session.add_all(tasks)
    db.session.flush()
    db.session.commit()
    for task in tasks:
        publish_chunks([task.id], tier, 1)
    return WorkflowView(workflow, tasks)


def get_workflow(workflow_id: str) -> WorkflowView:
    """The workflow with its steps, or 404."""
    workflow = db.session.get(Workflow, workflow_id)
    if workflow is None:
        raise NotFound(f"Task {workflow_id!r} not found.")
    steps = db.session.scalars(
        select(Task).where(Task.workflow_id == workflow_id).order_by(Task.step)
    ).all()
    return WorkflowView(workflow, list(steps))
