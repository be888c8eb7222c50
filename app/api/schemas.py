"""Request and response schemas: the same ones validate input and document /openapi.json."""

from __future__ import annotations

import re
from typing import Any

from flask import current_app
from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from app.models import BOT_ACTIVE, BOT_PAUSED
from app.services.ids import iso, task_public_id
from app.tiers import TIERS, canonical_tier

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PAGE = 1000


def _printable(value: str) -> None:
    if _CONTROL.search(value):
        raise ValidationError("Must not contain control characters.")


class StrictInteger(fields.Integer):
    """An integer given as a JSON number: no strings, floats or booleans."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr, data, **kwargs):
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Tier(fields.String):
    """A tier in any case, answered in its canonical spelling."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> str:
        tier = canonical_tier(super()._deserialize(value, attr, data, **kwargs))
        if tier is None:
            raise ValidationError(f"Must be one of: {', '.join(TIERS)} (any case).")
        return tier


def Name(**kwargs: Any) -> fields.String:  # noqa: N802 - a field factory reads like a field
    """A human-chosen name: 1-200 printable characters."""
    return fields.String(validate=[validate.Length(min=1, max=200), _printable], **kwargs)


def Capabilities() -> fields.List:  # noqa: N802
    """A list of capability names."""
    return fields.List(
        fields.String(validate=[validate.Length(min=1, max=64), _printable]),
        validate=validate.Length(max=50),
        load_default=list,
    )


# ---- requests ------------------------------------------------------------------------------


class BotCreate(Schema):
    name = Name(required=True)
    tier = Tier(required=True)
    capabilities = Capabilities()


class BotUpdate(Schema):
    status = fields.String(required=True, validate=validate.OneOf([BOT_ACTIVE, BOT_PAUSED]))


class SwarmCreate(Schema):
    name = Name(required=True)
    count = StrictInteger(required=True)
    tier = Tier(required=True)
    capabilities = Capabilities()

    @validates_schema
    def _count_within_capacity(self, data: dict[str, Any], **kwargs: Any) -> None:
        limit = current_app.config["SETTINGS"].max_bots
        if "count" in data and not 1 <= data["count"] <= limit:
            raise ValidationError(f"Must be between 1 and {limit}.", "count")


class SwarmUpdate(Schema):
    count = StrictInteger()
    status = fields.String(validate=validate.OneOf([BOT_ACTIVE, BOT_PAUSED]))

    @validates_schema
    def _something_to_change(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Give `count`, `status` or both.")
        limit = current_app.config["SETTINGS"].max_bots
        if "count" in data and not 0 <= data["count"] <= limit:
            raise ValidationError(f"Must be between 0 and {limit}.", "count")


class TaskAssign(Schema):
    type = fields.String(required=True, validate=validate.Length(min=1, max=64))
    data = fields.Dict(keys=fields.String(), load_default=dict)


class TaskComplete(Schema):
    result = fields.Raw(allow_none=True)


class Step(Schema):
    type = fields.String(required=True, validate=validate.Length(min=1, max=64))
    params = fields.Dict(keys=fields.String(), load_default=dict)
    name = fields.String(validate=[validate.Length(min=1, max=100), _printable])
    depends_on = fields.List(
        fields.String(validate=validate.Length(min=1, max=100)),
        load_default=list,
        validate=validate.Length(max=100),
    )
    timeout_s = fields.Float(validate=validate.Range(min=0.1, max=3600))
    retries = StrictInteger(validate=validate.Range(min=0, max=10))
    on_failure = fields.String(
        load_default="fail_workflow", validate=validate.OneOf(["fail_workflow", "continue"])
    )
    swarm_id = fields.String(validate=validate.Length(min=1, max=64))


class Orchestrate(Schema):
    tasks = fields.List(
        fields.Nested(Step), required=True, validate=validate.Length(min=1, max=100)
    )
    priority = fields.String(
        load_default="normal", validate=validate.OneOf(["low", "normal", "high", "critical"])
    )
    deadline_s = fields.Float(load_default=3600.0, validate=validate.Range(min=1, max=86_400))
    callback_url = fields.Url(
        schemes={"http", "https"},
        require_tld=False,
        validate=validate.Length(max=2000),
        metadata={"description": "POSTed the workflow's signed summary once it ends"},
    )


class Page(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=MAX_PAGE))
    after = fields.String(validate=validate.Length(max=64))


class BotPage(Page):
    tier = Tier()
    status = fields.String(validate=validate.OneOf(["active", "paused", "retired"]))
    swarm_id = fields.String(validate=validate.Length(max=64))
    capability = fields.String(validate=validate.Length(max=64))


class SwarmPage(Page):
    status = fields.String(validate=validate.OneOf(["active", "paused", "retired"]))


class TaskPage(Page):
    status = fields.String(
        validate=validate.OneOf(["assigned", "running", "completed", "failed", "cancelled"])
    )


# ---- responses -----------------------------------------------------------------------------


class Timestamp(fields.Field):
    """A timezone-aware datetime written as `2024-01-01T00:00:00Z`."""

    def _serialize(self, value, attr, obj, **kwargs):
        return iso(value)


class TaskId(fields.Field):
    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else task_public_id(value)


class BotOut(Schema):
    id = fields.String()
    name = fields.String()
    tier = fields.String()
    status = fields.String()
    capabilities = fields.List(fields.String())
    swarm_id = fields.String(allow_none=True)
    tasks_completed = fields.Function(lambda bot: bot.completed_tasks)
    total_tasks = fields.Integer()
    pending_tasks = fields.Method("_pending")
    completed_tasks = fields.Integer()
    failed_tasks = fields.Integer()
    created_at = Timestamp()
    last_active = Timestamp()

    def _pending(self, bot) -> int:
        return bot.total_tasks - bot.completed_tasks - bot.failed_tasks - bot.cancelled_tasks


class SwarmOut(Schema):
    id = fields.String(attribute="swarm.id")
    name = fields.String(attribute="swarm.name")
    bot_count = fields.Integer()
    tier = fields.String(attribute="swarm.tier")
    capabilities = fields.List(fields.String(), attribute="swarm.capabilities")
    active_bots = fields.Integer()
    total_tasks_assigned = fields.Integer(attribute="swarm.total_tasks")
    total_tasks_completed = fields.Integer(attribute="swarm.completed_tasks")
    total_tasks_failed = fields.Integer(attribute="swarm.failed_tasks")
    average_tasks_per_bot = fields.Float()
    status = fields.String(attribute="swarm.status")
    created_at = Timestamp(attribute="swarm.created_at")


class SwarmCreated(Schema):
    id = fields.String()
    name = fields.String()
    bot_count = fields.Integer()
    tier = fields.String()
    capabilities = fields.List(fields.String())
    bot_ids = fields.List(fields.String())
    status = fields.String()
    created_at = fields.String()


class TaskAssigned(Schema):
    task_id = TaskId()
    bot_id = fields.String()
    task_type = fields.String()
    status = fields.Constant("assigned")
    assigned_at = Timestamp()


class MassAssigned(Schema):
    swarm_id = fields.String()
    task_type = fields.String()
    assignments = fields.Integer()
    status = fields.Constant("distributed")
    timestamp = Timestamp(attribute="assigned_at")


class TaskOut(Schema):
    task_id = TaskId(attribute="id")
    task_type = fields.String(attribute="type")
    status = fields.String()
    bot_id = fields.String(allow_none=True)
    swarm_id = fields.String(allow_none=True)
    workflow_id = fields.String(allow_none=True)
    tier = fields.String()
    attempts = fields.Integer()
    result = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    assigned_at = Timestamp()
    started_at = Timestamp()
    finished_at = Timestamp()


class StepOut(TaskOut):
    step = fields.Integer()
    name = fields.String()
    depends_on = fields.List(fields.String())
    duration_ms = fields.Method("_duration")

    def _duration(self, task) -> int | None:
        if task.started_at is None or task.finished_at is None:
            return None
        return round((task.finished_at - task.started_at).total_seconds() * 1000)


class CallbackOut(Schema):
    """Where a resource's summary is POSTed when it ends, and how the delivery went."""

    url = fields.String()
    state = fields.String(
        metadata={"description": "waiting (not ended), pending, delivered or failed"}
    )
    attempts = fields.Integer()
    last_status = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    delivered_at = fields.String(allow_none=True)


class WorkflowOut(Schema):
    task_id = fields.String(attribute="workflow.id")
    kind = fields.Constant("workflow")
    status = fields.String()
    priority = fields.String(attribute="workflow.priority")
    tier = fields.String(attribute="workflow.tier")
    error = fields.String(attribute="workflow.error", allow_none=True)
    created_at = Timestamp(attribute="workflow.created_at")
    deadline_at = Timestamp(attribute="workflow.deadline_at")
    finished_at = Timestamp(attribute="workflow.finished_at")
    steps = fields.Method("_steps")
    callback = fields.Nested(CallbackOut, allow_none=True)

    def _steps(self, view) -> list[dict[str, Any]]:
        names, deps = view.step_names(), view.depends_on()
        steps = StepOut().dump(view.steps, many=True)
        for step in steps:
            step["name"] = names.get(step["step"])
            step["depends_on"] = deps.get(step["step"], [])
        return steps


class ErrorDetail(Schema):
    """The `error` object of every refusal; domain errors add their own details."""

    class Meta:
        unknown = INCLUDE  # known_types, capacity_remaining, missing_variable, ...

    status = fields.Integer(required=True)
    code = fields.String(required=True)
    message = fields.String(required=True)
    field_messages = fields.Dict(data_key="fields", metadata={"description": "per field"})


class ErrorResponse(Schema):
    """Every error answer (app/errors.py): what /openapi.json documents for 4xx and 5xx."""

    error = fields.Nested(ErrorDetail, required=True)


def list_of(
    item: type[Schema],
    name: str,
    cursor: str = "next_after",
    cursor_field: fields.Field | None = None,
) -> type[Schema]:
    """The schema of a page of `item`s (see page_of), for /openapi.json."""
    return Schema.from_dict(
        {
            "items": fields.List(fields.Nested(item)),
            "limit": fields.Integer(),
            cursor: cursor_field or fields.String(allow_none=True),
        },
        name=name,
    )


BotList = list_of(BotOut, "BotList")
SwarmList = list_of(SwarmOut, "SwarmList")
TaskList = list_of(TaskOut, "TaskList")


def page_of(items: list[Any], schema: Schema, limit: int, cursor) -> dict[str, Any]:
    """A list answer: the items and the cursor for the next page (None at the end)."""
    return {
        "items": schema.dump(items, many=True),
        "limit": limit,
        "next_after": cursor(items[-1]) if len(items) == limit else None,
    }


# ---- service registry ----------------------------------------------------------------------


class ServiceUpdate(Schema):
    """PUT /services/{name}: any of these; the service checks URLs and task types (422)."""

    urls = fields.List(
        fields.String(validate=[validate.Length(min=1, max=2000), _printable]),
        validate=validate.Length(min=1, max=10),
    )
    path = fields.String(validate=[validate.Length(min=1, max=200), _printable])
    health_path = fields.String(validate=[validate.Length(min=1, max=200), _printable])
    timeout_s = fields.Float(validate=validate.Range(min=0.1, max=600))
    task_types = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)), validate=validate.Length(max=50)
    )
    max_concurrency = StrictInteger(validate=validate.Range(min=1, max=10_000))

    @validates_schema
    def _something_to_change(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Give at least one field to change.")


class BreakerOut(Schema):
    state = fields.String()
    consecutive_failures = fields.Integer()
    retry_in_s = fields.Float(allow_none=True)


class EndpointOut(Schema):
    url = fields.String()
    state = fields.String()
    latency_ms = fields.Float(allow_none=True)
    last_probe_at = Timestamp()
    last_error = fields.String(allow_none=True)
    breaker = fields.Nested(BreakerOut, allow_none=True)


class ServiceOut(Schema):
    name = fields.String()
    variable = fields.String(allow_none=True)
    urls = fields.List(fields.String())
    path = fields.String()
    health_path = fields.String()
    timeout_s = fields.Float()
    task_types = fields.List(fields.String())
    max_concurrency = fields.Integer()
    in_flight = fields.Integer(allow_none=True)
    source = fields.String()
    updated_at = Timestamp()
    endpoints = fields.List(fields.Nested(EndpointOut))
