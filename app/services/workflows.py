"""Workflows (POST /orchestrate): a DAG of steps run on the pool against the AI services.

State lives in PostgreSQL. A step waits until its dependencies have completed; when a step
finishes, `advance` releases its dependents in the same transaction that records the outcome,
and they are published after the commit, so a lost worker or broker never strands a workflow
(the reconciler re-publishes whatever is released but not running).

A step's `params` may refer to a dependency's result with `{"$ref": "steps.<name>.result.<path>"}`
(path parts separated by dots; digits index lists).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select, text

from app import metrics
from app.dispatch import publish_chunks
from app.errors import Conflict, Invalid, NotFound, ServiceError
from app.extensions import db
from app.models import (
    NOT_STARTED_TASK_STATES,
    TASK_ASSIGNED,
    TASK_CANCELLED,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_RUNNING,
    TASK_WAITING,
    WORKFLOW_ACTIVE,
    WORKFLOW_CANCELLED,
    WORKFLOW_COMPLETED,
    WORKFLOW_FAILED,
    Task,
    Workflow,
)
from app.services import callbacks, mass_actions, swarms
from app.services.ids import iso, new_id, utcnow
from app.services.outcomes import MOVED_COLUMNS, counted, run_counted
from app.services.payloads import load_payloads, store_payload
from app.services.task_types import get_task_type, require_runnable, route_of
from app.services.tenancy import current_tenant, visible
from app.tiers import PRIORITY_TIERS

FAIL_WORKFLOW, CONTINUE = "fail_workflow", "continue"
REF_KEY = "$ref"

# Ends steps that never started (cancelled, or failed with an error), counted like any outcome.
_END_STEPS = counted(
    """
    UPDATE tasks SET status = :to_state, error = :error, finished_at = now()
     WHERE workflow_id = :workflow_id AND status = ANY(:states) AND step = ANY(:steps)
    RETURNING """
    + MOVED_COLUMNS
)


# A swarm step's mass-action: its counters say when every task has ended, and how.
_SWARM_STEP_MASS_ACTION = """
SELECT id, total, completed, failed, cancelled, finished_at FROM mass_actions
 WHERE workflow_id = :workflow_id AND step = :step
"""

# The aggregated result: every numeric top-level field of the tasks' results, summed.
_SWARM_STEP_TOTALS = """
SELECT field.key, sum(CAST(field.value AS numeric))
  FROM tasks t, jsonb_each(t.result) AS field
 WHERE t.workflow_id = :workflow_id AND t.step = :step AND t.bot_id IS NOT NULL
   AND t.status = 'completed' AND jsonb_typeof(t.result) = 'object'
   AND jsonb_typeof(field.value) = 'number'
 GROUP BY field.key
"""

_FINISH_SWARM_STEP = counted(
    """
    UPDATE tasks SET status = :state, result = CAST(:result AS jsonb), error = :error,
                     finished_at = now()
     WHERE id = :id AND status = 'running'
    RETURNING """
    + MOVED_COLUMNS
)

_CANCEL_SWARM_STEPS = counted(
    """
    UPDATE tasks SET status = 'cancelled', finished_at = now()
     WHERE workflow_id = :workflow_id AND bot_id IS NULL AND status = 'running'
       AND lease_expires_at IS NULL
    RETURNING """
    + MOVED_COLUMNS
)


@dataclass(frozen=True)
class StepSpec:
    """One requested step."""

    type: str
    params: dict[str, Any]
    name: str | None = None
    depends_on: list[str] = field(default_factory=list)
    timeout_s: float | None = None
    retries: int | None = None
    on_failure: str = FAIL_WORKFLOW
    # Run the step as a mass-action on this swarm; it completes when all its tasks have.
    swarm_id: str | None = None


@dataclass(frozen=True)
class Release:
    """Tasks a workflow made ready, to publish once the transaction that made them commits."""

    task_ids: list[int]
    type: str
    tier: str


@dataclass(frozen=True)
class WorkflowView:
    """A workflow with its steps."""

    workflow: Workflow
    steps: list[Task]
    # Step number -> the mass-action a swarm step runs as.
    mass_actions: dict[int, str] = field(default_factory=dict)

    @property
    def callback(self) -> dict[str, Any] | None:
        """Where the summary goes when the workflow ends, and how its delivery went."""
        return callbacks.view(self.workflow.id, self.workflow.callback_url)

    @property
    def status(self) -> str:
        """queued, running, completed, failed or cancelled."""
        if self.workflow.status != WORKFLOW_ACTIVE:
            return self.workflow.status
        if all(step.status in NOT_STARTED_TASK_STATES for step in self.steps):
            return "queued"
        return "running"

    def step_names(self) -> dict[int, str]:
        """Step index -> name."""
        return {index: spec["name"] for index, spec in enumerate(self.workflow.spec)}

    def depends_on(self) -> dict[int, list[str]]:
        """Step index -> names it waits for."""
        return {index: spec["depends_on"] for index, spec in enumerate(self.workflow.spec)}


# ---- creating ------------------------------------------------------------------------------


def orchestrate(
    steps: list[StepSpec], priority: str, deadline_s: float, callback_url: str | None = None
) -> WorkflowView:
    """Check the DAG, record the workflow and its steps, publish the steps with no dependencies.

    With a callback_url, the workflow's summary is POSTed there once it ends (callbacks.py).
    """
    spec = _checked_spec(steps)
    if callback_url is not None:
        callbacks.check_url(callback_url)
    for step in steps:
        require_runnable(get_task_type(step.type))
        if step.swarm_id:
            swarms.lock_for_tasks(step.swarm_id, step.type)
    tier = PRIORITY_TIERS[priority]
    now = utcnow()
    workflow = Workflow(
        id=new_id("wf"),
        priority=priority,
        tier=tier,
        tenant=current_tenant(),
        status=WORKFLOW_ACTIVE,
        spec=spec,
        deadline_at=now + timedelta(seconds=deadline_s),
        created_at=now,
        callback_url=callback_url,
    )
    db.session.add(workflow)
    tasks = [
        Task(
            type=step.type,
            tier=tier,
            status=TASK_WAITING if step.depends_on else TASK_ASSIGNED,
            workflow_id=workflow.id,
            step=index,
            payload_id=store_payload(step.params),
            timeout_s=step.timeout_s,
            retries=step.retries,
            assigned_at=now,
            attempts=0,
        )
        for index, step in enumerate(steps)
    ]
    db.session.add_all(tasks)
    db.session.flush()
    ready = [_start(task, spec) for task in tasks if task.status == TASK_ASSIGNED]
    db.session.commit()
    publish_steps(ready)
    return WorkflowView(workflow, tasks, mass_actions.for_workflow(workflow.id))


def _start(step: Task, spec: list[dict[str, Any]]) -> Release:
    """Hand a ready step to the pool: itself, or for a swarm step one task per active bot."""
    swarm_id = spec[_number(step)].get("swarm_id")
    if not swarm_id:
        return Release([step.id], step.type, step.tier)
    swarm = swarms.lock_for_tasks(swarm_id, step.type)
    now = utcnow()
    _, ids = mass_actions.start_on_swarm(
        swarm, step.type, step.payload_id, now, step.workflow_id, step.step
    )
    # The step itself is never published: it is running while its tasks are, and `advance`
    # completes it once the last of them ends.
    step.status, step.started_at = TASK_RUNNING, now
    return Release(ids, step.type, swarm.tier)


def _checked_spec(steps: list[StepSpec]) -> list[dict[str, Any]]:
    names = [step.name or f"step{index + 1}" for index, step in enumerate(steps)]
    if len(set(names)) != len(names):
        raise Invalid("Step names must be unique.", field="tasks")
    known = set(names)
    for name, step in zip(names, steps, strict=True):
        unknown = [dep for dep in step.depends_on if dep not in known]
        if unknown:
            raise Invalid(f"Step {name!r} depends on unknown steps: {', '.join(unknown)}.")
        for ref in _refs_in(step.params):
            target = _ref_step(ref)
            if target not in step.depends_on:
                raise Invalid(
                    f"Step {name!r} refers to {ref!r}, but {target!r} is not in its depends_on."
                )
    cycle = _find_cycle({name: step.depends_on for name, step in zip(names, steps, strict=True)})
    if cycle:
        raise Invalid(f"The steps form a cycle: {' -> '.join(cycle)}.")
    return [
        {
            "name": name,
            "type": step.type,
            "depends_on": list(step.depends_on),
            "on_failure": step.on_failure,
            "swarm_id": step.swarm_id,
        }
        for name, step in zip(names, steps, strict=True)
    ]


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle in the dependency graph as a list of names, or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        if name in visiting:
            return visiting[visiting.index(name) :] + [name]
        if name in done:
            return None
        visiting.append(name)
        for dep in graph[name]:
            found = visit(dep)
            if found:
                return found
        visiting.pop()
        done.add(name)
        return None

    for name in graph:
        found = visit(name)
        if found:
            return found
    return None


# ---- references ----------------------------------------------------------------------------


def _refs_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        if set(value) == {REF_KEY} and isinstance(value[REF_KEY], str):
            return [value[REF_KEY]]
        return [ref for item in value.values() for ref in _refs_in(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in _refs_in(item)]
    return []


def _ref_step(ref: str) -> str:
    parts = ref.split(".")
    if len(parts) < 3 or parts[0] != "steps" or parts[2] != "result":
        raise Invalid(f"Bad reference {ref!r}: write steps.<name>.result[.<path>].")
    return parts[1]


class UnresolvedReference(Exception):
    """A reference points at nothing in its step's result."""


def resolve_refs(value: Any, results: dict[str, Any]) -> Any:
    """A copy of value with every {"$ref": ...} replaced by the referenced result."""
    if isinstance(value, dict):
        if set(value) == {REF_KEY} and isinstance(value[REF_KEY], str):
            return _lookup(value[REF_KEY], results)
        return {key: resolve_refs(item, results) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve_refs(item, results) for item in value]
    return value


def _lookup(ref: str, results: dict[str, Any]) -> Any:
    _, name, _, *path = ref.split(".")
    current = results.get(name)
    for part in path:
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise UnresolvedReference(f"reference {ref!r} not found in the result of {name!r}")
    return copy.deepcopy(current)


# ---- advancing -----------------------------------------------------------------------------


def on_steps_moved(workflow_ids: list[str]) -> Callable[[], None]:
    """The record statement's hook (outcomes.record_outcomes): advance these workflows in its
    transaction; the returned call publishes what they released, after the commit."""
    released = advance(workflow_ids)
    return lambda: publish_steps(released)


def advance(workflow_ids: list[str]) -> list[Release]:
    """Release steps whose dependencies completed, skip those that can no longer run, finish
    swarm steps whose tasks all ended, and settle finished workflows. Runs inside the caller's
    transaction; returns what to publish after it commits."""
    released: list[Release] = []
    workflows = db.session.scalars(
        select(Workflow)
        .where(Workflow.id.in_(workflow_ids), Workflow.status == WORKFLOW_ACTIVE)
        .order_by(Workflow.id)
        .with_for_update()
    ).all()
    for workflow in workflows:
        released.extend(_advance_one(workflow))
    return released


def _advance_one(workflow: Workflow) -> list[Release]:
    steps = _steps_of(workflow.id)
    spec = workflow.spec
    for step in steps:
        if step.status == TASK_RUNNING and spec[_number(step)].get("swarm_id"):
            _finish_swarm_step_if_done(step)
    by_name = {spec[_number(step)]["name"]: step for step in steps}
    fatal = [
        s for s in steps if s.status == TASK_FAILED and spec[_number(s)]["on_failure"] != CONTINUE
    ]
    if fatal:
        first = fatal[0]
        _cancel_unstarted(workflow.id)
        _settle(
            workflow,
            WORKFLOW_FAILED,
            f"step {spec[_number(first)]['name']!r} failed: {first.error}",
        )
        return []

    released: list[Release] = []
    ended = False
    results = {name: step.result for name, step in by_name.items() if step.status == TASK_COMPLETED}
    for step in steps:
        if step.status != TASK_WAITING:
            continue
        deps = [by_name[name] for name in spec[_number(step)]["depends_on"]]
        if any(dep.status in (TASK_FAILED, TASK_CANCELLED) for dep in deps):
            _end_steps(
                workflow.id, [_number(step)], TASK_CANCELLED, "a dependency did not complete"
            )
            ended = True
        elif all(dep.status == TASK_COMPLETED for dep in deps):
            try:
                released.append(_release(step, results, spec))
            except (UnresolvedReference, ServiceError) as error:
                _end_steps(workflow.id, [_number(step)], TASK_FAILED, str(error))
                ended = True
    if ended:
        # An ended step can fail the workflow or end its own dependents: look again.
        db.session.expire_all()
        return released + _advance_one(workflow)

    states = {step.status for step in steps}
    if not states & {TASK_WAITING, TASK_ASSIGNED, TASK_RUNNING}:
        _settle(workflow, WORKFLOW_COMPLETED, None)
    return released


def _release(step: Task, results: dict[str, Any], spec: list[dict[str, Any]]) -> Release:
    params = load_payloads({step.payload_id})[step.payload_id]
    resolved = resolve_refs(params, results)
    if resolved != params:
        step.payload_id = store_payload(resolved)
    step.status = TASK_ASSIGNED
    step.assigned_at = utcnow()
    return _start(step, spec)


def _number(step: Task) -> int:
    """A workflow step's position in its workflow's spec."""
    assert step.step is not None, f"task-{step.id} is not a workflow step"
    return step.step


def _steps_of(workflow_id: str) -> list[Task]:
    """The workflow's own step rows (a swarm step's tasks carry its step number and a bot)."""
    return list(
        db.session.scalars(
            select(Task)
            .where(Task.workflow_id == workflow_id, Task.bot_id.is_(None))
            .order_by(Task.step)
        )
    )


def _finish_swarm_step_if_done(step: Task) -> None:
    # The mass-action's counters moved in the statement that recorded its tasks (this
    # transaction's, or one committed before it): a primary-key read, not a count of tasks.
    counts = db.session.execute(
        text(_SWARM_STEP_MASS_ACTION), {"workflow_id": step.workflow_id, "step": step.step}
    ).one_or_none()
    if counts is None or counts.finished_at is None:
        return
    totals: dict[str, Any] = dict(
        db.session.execute(
            text(_SWARM_STEP_TOTALS), {"workflow_id": step.workflow_id, "step": step.step}
        ).all()
    )
    result = {
        "tasks": counts.total,
        "completed": counts.completed,
        "failed": counts.failed,
        "cancelled": counts.cancelled,
        "totals": {key: float(value) if value % 1 else int(value) for key, value in totals.items()},
        "mass_action_id": counts.id,
    }
    every_task_failed = counts.total > 0 and counts.failed == counts.total
    db.session.flush()
    run_counted(
        _FINISH_SWARM_STEP,
        {
            "id": step.id,
            "state": TASK_FAILED if every_task_failed else TASK_COMPLETED,
            "result": json.dumps(result),
            "error": "every task of the swarm step failed" if every_task_failed else None,
        },
    )
    db.session.expire(step)


def _end_steps(workflow_id: str, steps: list[int], to_state: str, error: str | None) -> None:
    db.session.flush()
    run_counted(
        _END_STEPS,
        {
            "workflow_id": workflow_id,
            "steps": steps,
            "states": list(NOT_STARTED_TASK_STATES),
            "to_state": to_state,
            "error": error,
        },
    )


def _cancel_unstarted(workflow_id: str) -> None:
    """Cancel every step (and swarm-step task) not started; swarm steps in progress end too."""
    steps = [_number(step) for step in _steps_of(workflow_id)]
    _end_steps(workflow_id, steps, TASK_CANCELLED, None)
    run_counted(_CANCEL_SWARM_STEPS, {"workflow_id": workflow_id})


def _settle(workflow: Workflow, status: str, error: str | None) -> None:
    workflow.status = status
    workflow.error = error
    workflow.finished_at = utcnow()
    if workflow.callback_url:
        callbacks.resource_finished(
            workflow.id, workflow.callback_url, "workflow.finished", _summary(workflow)
        )


# The steps as they stand inside the transaction that ends the workflow.
_STEP_SUMMARY = """
SELECT step, type, status, error, result FROM tasks
 WHERE workflow_id = :workflow_id AND bot_id IS NULL ORDER BY step
"""


def _summary(workflow: Workflow) -> dict[str, Any]:
    """What a workflow's callback tells: its end, and each step's outcome."""
    db.session.flush()
    names = {index: spec["name"] for index, spec in enumerate(workflow.spec)}
    steps = [
        {
            "name": names.get(step),
            "type": type_name,
            "status": status,
            "error": error,
            "result": result,
        }  # fmt: skip
        for step, type_name, status, error, result in db.session.execute(
            text(_STEP_SUMMARY), {"workflow_id": workflow.id}
        )
    ]
    return {
        "id": workflow.id,
        "kind": "workflow",
        "status": workflow.status,
        "priority": workflow.priority,
        "error": workflow.error,
        "created_at": iso(workflow.created_at),
        "finished_at": iso(workflow.finished_at),
        "steps": steps,
    }


def publish_steps(released: list[Release]) -> None:
    """Publish released steps (after the commit that released them)."""
    for release in released:
        metrics.count_assigned(release.tier, release.type, len(release.task_ids))
        publish_chunks(release.task_ids, release.tier, **route_of(release.type))


# ---- reading and cancelling ----------------------------------------------------------------


def get_workflow(workflow_id: str) -> WorkflowView:
    """The workflow with its steps, or 404 (also another tenant's)."""
    workflow = db.session.get(Workflow, workflow_id)
    if workflow is None or not visible(workflow.tenant):
        raise NotFound(f"Task {workflow_id!r} not found.")
    return WorkflowView(workflow, _steps_of(workflow_id), mass_actions.for_workflow(workflow_id))


def cancel_workflow(workflow_id: str) -> WorkflowView:
    """Cancel durably: steps not yet started never start. Repeating it changes nothing."""
    workflow = db.session.get(Workflow, workflow_id, with_for_update=True)
    if workflow is None or not visible(workflow.tenant):
        raise NotFound(f"Task {workflow_id!r} not found.")
    if workflow.status == WORKFLOW_ACTIVE:
        _cancel_unstarted(workflow_id)
        mass_actions.note_cancel_requested("workflow_id = :id", {"id": workflow_id})
        _settle(workflow, WORKFLOW_CANCELLED, "cancelled by request")
        db.session.commit()
    elif workflow.status != WORKFLOW_CANCELLED:
        db.session.rollback()
        raise Conflict(f"Workflow {workflow_id!r} already {workflow.status}.")
    return get_workflow(workflow_id)


def expire_overdue() -> int:
    """Fail active workflows past their deadline, cancelling their unstarted steps."""
    overdue = db.session.scalars(
        select(Workflow)
        .where(Workflow.status == WORKFLOW_ACTIVE, Workflow.deadline_at < utcnow())
        .with_for_update(skip_locked=True)
    ).all()
    for workflow in overdue:
        _cancel_unstarted(workflow.id)
        _settle(workflow, WORKFLOW_FAILED, "deadline exceeded")
    db.session.commit()
    return len(overdue)
