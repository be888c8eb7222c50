"""Request and response schemas: the same ones validate input and document /openapi.json.

What a check can state in JSON Schema it states itself through `openapi(settings)` (see
app/api/openapi.py), so the document cannot drift from the check.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import current_app
from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from app.api.openapi import Answer
from app.config import Settings
from app.models import (
    BOT_ACTIVE,
    BOT_PAUSED,
    BOT_RETIRED,
    ENDPOINT_HEALTHY,
    ENDPOINT_UNHEALTHY,
    ENDPOINT_UNKNOWN,
    SOURCE_API,
    SOURCE_ENV,
    TASK_ASSIGNED,
    TASK_CANCELLED,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_RUNNING,
    TASK_WAITING,
)
from app.services import breaker
from app.services.adaptive_limit import AUTO
from app.services.ids import iso, parse_task_id, task_public_id
from app.services.service_defaults import DOWNSTREAM
from app.services.task_types import load_catalogue
from app.tiers import PRIORITY_TIERS, TIERS, canonical_tier

MAX_PAGE = 1000
BOT_STATES = (BOT_ACTIVE, BOT_PAUSED, BOT_RETIRED)
TASK_STATES = (
    TASK_WAITING,
    TASK_ASSIGNED,
    TASK_RUNNING,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_CANCELLED,
)
WORKFLOW_STATES = ("queued", "running", TASK_COMPLETED, TASK_FAILED, TASK_CANCELLED)


class Printable(validate.Validator):
    """No control characters (they break logs, terminals and CSV exports)."""

    _CONTROL = re.compile(r"[\x00-\x1f\x7f]")

    def __call__(self, value: str) -> str:
        if self._CONTROL.search(value):
            raise ValidationError("Must not contain control characters.")
        return value

    def openapi(self, settings: Settings) -> dict[str, Any]:
        return {"pattern": "^[^\\u0000-\\u001f\\u007f]*$"}


_printable = Printable()


class StrictInteger(fields.Integer):
    """An integer given as a JSON number: no strings, floats or booleans."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr, data, **kwargs):
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Concurrency(fields.Field):
    """max_concurrency: a number of calls in flight (1-10000), or "auto" for a learned limit.

    Answers say "auto" for a service whose limit is learned (its `concurrency_auto`).
    """

    MAXIMUM = 10_000

    def _deserialize(self, value: Any, attr, data, **kwargs) -> int | str:
        if value == AUTO:
            return AUTO
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f'Must be a whole number or "{AUTO}".')
        if not 1 <= value <= self.MAXIMUM:
            raise ValidationError(f'Must be between 1 and {self.MAXIMUM}, or "{AUTO}".')
        return value

    def _serialize(self, value: Any, attr, obj, **kwargs) -> int | str | None:
        return AUTO if getattr(obj, "concurrency_auto", False) else value

    def openapi(self, settings: Settings) -> dict[str, Any]:
        return {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": self.MAXIMUM},
                {"type": "string", "enum": [AUTO]},
            ]
        }


class BotCount(StrictInteger):
    """A number of bots, from `minimum` up to the service's capacity (MAX_BOTS)."""

    def __init__(self, minimum: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.minimum = minimum

    def _deserialize(self, value: Any, attr, data, **kwargs) -> int:
        count = super()._deserialize(value, attr, data, **kwargs)
        limit = current_app.config["SETTINGS"].max_bots
        if not self.minimum <= count <= limit:
            raise ValidationError(f"Must be between {self.minimum} and {limit}.")
        return count

    def openapi(self, settings: Settings) -> dict[str, Any]:
        return {"minimum": self.minimum, "maximum": settings.max_bots}


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


class Tier(fields.String):
    """A tier in any case, answered in its canonical spelling."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> str:
        tier = canonical_tier(super()._deserialize(value, attr, data, **kwargs))
        if tier is None:
            raise ValidationError(f"Must be one of: {', '.join(TIERS)} (any case).")
        return tier

    def openapi(self, settings: Settings) -> dict[str, Any]:
        words = "|".join(_any_case(tier) for tier in TIERS)
        return {
            "pattern": f"^\\s*(?:{words})\\s*$",
            "description": f"One of {', '.join(TIERS)}, in any case.",
            "example": TIERS[0],
        }


class TaskTypeName(fields.String):
    """A registered task type (built in or from a plugin), or with `downstream_only` one served
    by an AI service. The service refuses others with 422, listing the known ones; the document
    lists them as an enum."""

    def __init__(self, downstream_only: bool = False, **kwargs: Any) -> None:
        super().__init__(validate=validate.Length(min=1, max=64), **kwargs)
        self.downstream_only = downstream_only

    def openapi(self, settings: Settings) -> dict[str, Any]:
        if self.downstream_only:
            return {"enum": sorted(DOWNSTREAM)}
        # The types of the app being documented: built-ins and its own plugins.
        return {"enum": sorted(load_catalogue(settings.task_type_plugins))}


def Name(**kwargs: Any) -> fields.String:  # noqa: N802 - a field factory reads like a field
    """A human-chosen name: 1-200 printable characters."""
    return fields.String(validate=[validate.Length(min=1, max=200), _printable], **kwargs)


def Capabilities() -> fields.List:  # noqa: N802
    """A list of capability names."""
    return fields.List(
        fields.String(validate=[validate.Length(min=1, max=64), _printable]),
        validate=validate.Length(max=50),
        load_default=list,
        metadata={"example": ["data_processing", "analytics", "reporting"]},
    )


def OneOf(choices, **kwargs: Any) -> fields.String:  # noqa: N802
    """A string from a fixed set: checked on input, an enum in the document either way."""
    return fields.String(validate=validate.OneOf(list(choices)), **kwargs)


# ---- requests ------------------------------------------------------------------------------


class BotCreate(Schema):
    name = Name(required=True)
    tier = Tier(required=True)
    capabilities = Capabilities()


class BotUpdate(Schema):
    status = OneOf([BOT_ACTIVE, BOT_PAUSED], required=True)


class SwarmCreate(Schema):
    name = Name(required=True)
    count = BotCount(minimum=1, required=True)
    tier = Tier(required=True)
    capabilities = Capabilities()


class SwarmUpdate(Schema):
    OPENAPI = {"minProperties": 1}

    count = BotCount(minimum=0)
    status = OneOf([BOT_ACTIVE, BOT_PAUSED])

    @validates_schema
    def _something_to_change(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Give `count`, `status` or both.")


def CallbackUrl() -> fields.Url:  # noqa: N802 - a field factory reads like a field
    """Where to POST a resource's signed summary once it ends (needs CALLBACK_SECRET)."""
    return fields.Url(
        schemes={"http", "https"},
        require_tld=False,
        validate=validate.Length(max=2000),
        metadata={
            "description": "POSTed the signed summary once it ends (X-Orchestrator-Signature)"
        },
    )


class TaskAssign(Schema):
    type = TaskTypeName(required=True, metadata={"example": "data_processing"})
    data = fields.Dict(keys=fields.String(), load_default=dict)
    callback_url = CallbackUrl()


class TaskComplete(Schema):
    result = fields.Raw(allow_none=True, metadata={"description": "What the task answered."})


class Step(Schema):
    type = TaskTypeName(required=True, metadata={"example": "image_generation"})
    params = fields.Dict(keys=fields.String(), load_default=dict)
    name = fields.String(
        validate=[validate.Length(min=1, max=100), _printable],
        metadata={"description": "Unique within the workflow; default `step<N>`."},
    )
    depends_on = fields.List(
        fields.String(validate=validate.Length(min=1, max=100)),
        load_default=list,
        validate=validate.Length(max=100),
        metadata={"description": "Names of earlier steps this one waits for."},
    )
    timeout_s = fields.Float(validate=validate.Range(min=0.1, max=3600))
    retries = StrictInteger(validate=validate.Range(min=0, max=10))
    on_failure = OneOf(["fail_workflow", "continue"], load_default="fail_workflow")
    swarm_id = fields.String(validate=validate.Length(min=1, max=64))


class Orchestrate(Schema):
    tasks = fields.List(
        fields.Nested(Step), required=True, validate=validate.Length(min=1, max=100)
    )
    priority = OneOf(PRIORITY_TIERS, load_default="normal")
    deadline_s = fields.Float(load_default=3600.0, validate=validate.Range(min=1, max=86_400))
    callback_url = CallbackUrl()


class Page(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=MAX_PAGE))
    after = fields.String(validate=validate.Length(max=64))


class BotPage(Page):
    tier = Tier()
    status = OneOf(BOT_STATES)
    swarm_id = fields.String(validate=validate.Length(max=64))
    capability = fields.String(validate=validate.Length(max=64))


class SwarmPage(Page):
    status = OneOf(BOT_STATES)


class TaskPage(Page):
    status = OneOf(TASK_STATES[1:])


class TaskCursor(fields.Field):
    """`after` on a list in task order: the `task-<n>` id of the last item before; loads as the
    row id."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> int:
        row_id = parse_task_id(value) if isinstance(value, str) else None
        if row_id is None:
            raise ValidationError("Must be a task id (`task-<n>`) from a previous page.")
        return row_id

    def openapi(self, settings: Settings) -> dict[str, Any]:
        return {"type": "string", "pattern": "^task-[0-9]{1,18}$", "example": "task-123"}


class ResultPage(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=MAX_PAGE))
    after = TaskCursor()
    status = OneOf(TASK_STATES[1:])


# ---- responses -----------------------------------------------------------------------------


class Timestamp(fields.DateTime):
    """A timezone-aware datetime written as `2024-01-01T00:00:00Z`."""

    def _serialize(self, value, attr, obj, **kwargs):
        # Answers that services build as JSON-ready dicts (stats, health) carry it written already.
        return value if isinstance(value, str) else iso(value)


class TaskId(fields.String):
    """A task row's public id, `task-<n>`."""

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else task_public_id(value)

    def openapi(self, settings: Settings) -> dict[str, Any]:
        return {"pattern": "^task-[0-9]+$", "example": "task-123"}


def TierOut(**kwargs: Any) -> fields.String:  # noqa: N802
    """A tier as answered: always the canonical spelling."""
    return OneOf(TIERS, **kwargs)


def Typed(kind: str, method: str, **kwargs: Any) -> fields.Method:  # noqa: N802
    """A computed field with its JSON type stated for the document."""
    return fields.Method(method, metadata={"type": kind}, **kwargs)


class BotOut(Answer):
    id = fields.String(metadata={"example": "bot-1f2e3d4c5b6a7988"})
    name = fields.String()
    tier = TierOut()
    status = OneOf(BOT_STATES)
    capabilities = fields.List(fields.String())
    swarm_id = fields.String(allow_none=True)
    # The spec's name for completed_tasks (marshmallow allows one field per attribute).
    tasks_completed = fields.Function(lambda bot: bot.completed_tasks, metadata={"type": "integer"})
    total_tasks = fields.Integer()
    pending_tasks = Typed("integer", "_pending")
    completed_tasks = fields.Integer()
    failed_tasks = fields.Integer()
    created_at = Timestamp()
    last_active = Timestamp(allow_none=True)

    def _pending(self, bot) -> int:
        return bot.total_tasks - bot.completed_tasks - bot.failed_tasks - bot.cancelled_tasks


class SwarmOut(Answer):
    id = fields.String(attribute="swarm.id", metadata={"example": "swarm-1f2e3d4c5b6a7988"})
    name = fields.String(attribute="swarm.name")
    bot_count = fields.Integer()
    tier = TierOut(attribute="swarm.tier")
    capabilities = fields.List(fields.String(), attribute="swarm.capabilities")
    active_bots = fields.Integer()
    total_tasks_assigned = fields.Integer(attribute="total_tasks")
    total_tasks_completed = fields.Integer(attribute="completed_tasks")
    total_tasks_failed = fields.Integer(attribute="failed_tasks")
    average_tasks_per_bot = fields.Float()
    status = OneOf(BOT_STATES, attribute="swarm.status")
    created_at = Timestamp(attribute="swarm.created_at")


class SwarmCreated(Answer):
    """POST /swarms: written directly by the handler (50,000 ids); this documents it."""

    id = fields.String(metadata={"example": "swarm-1f2e3d4c5b6a7988"})
    name = fields.String()
    bot_count = fields.Integer()
    tier = TierOut()
    capabilities = fields.List(fields.String())
    bot_ids = fields.List(fields.String())
    status = OneOf(BOT_STATES)
    created_at = Timestamp()


class TaskAssigned(Answer):
    task_id = TaskId()
    bot_id = fields.String()
    task_type = fields.String()
    status = fields.Constant(TASK_ASSIGNED)
    assigned_at = Timestamp()


class MassAssigned(Answer):
    swarm_id = fields.String()
    task_type = fields.String()
    assignments = fields.Integer()
    status = fields.Constant("distributed")
    timestamp = Timestamp(attribute="assigned_at")
    mass_action_id = fields.String(
        metadata={"description": "follow it at GET /mass-actions/{id} (the Location header)"}
    )


MASS_ACTION_STATES = ("queued", "running", TASK_COMPLETED, TASK_FAILED, TASK_CANCELLED)


class MassActionCounts(Answer):
    total = fields.Integer(metadata={"description": "tasks given, one per active bot"})
    assigned = fields.Integer(metadata={"description": "waiting to start"})
    running = fields.Integer()
    completed = fields.Integer()
    failed = fields.Integer()
    cancelled = fields.Integer()


class CallbackOut(Answer):
    """Where a resource's summary is POSTed when it ends, and how the delivery went."""

    url = fields.String()
    state = OneOf(
        ("waiting", "pending", "delivered", "failed"),
        metadata={"description": "waiting: not ended yet; pending: being delivered"},
    )
    attempts = fields.Integer()
    last_status = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    delivered_at = fields.String(allow_none=True)


class LatencyOut(Answer):
    """Handler latencies of the calls a mass-action made to a downstream service."""

    count = fields.Integer(metadata={"description": "calls timed"})
    mean = fields.Float()
    min = fields.Float()
    max = fields.Float()
    p50 = fields.Float()
    p90 = fields.Float()
    p99 = fields.Float()
    percentiles = fields.String(metadata={"description": "how exact the percentiles are"})


class AggregateOut(Answer):
    """Every finished task of a mass-action merged by its task type's merge rule."""

    tasks = fields.Dict(
        keys=fields.String(), values=fields.Integer(), metadata={"description": "ended, by state"}
    )
    failures_by_reason = fields.Dict(keys=fields.String(), values=fields.Integer())
    merged_tasks = fields.Integer(
        metadata={
            "optional": True,
            "description": "data task types: the results merged into `result` (a result without"
            " a summary, such as a manual completion's, is counted but not merged)",
        }
    )
    result = fields.Raw(
        allow_none=True,
        metadata={
            "optional": True,
            "description": "data task types: what one task over every row of the dataset"
            " answers (the task type's own result); distinct counts past 4,096 values are"
            " estimates marked `distinct_approximate`",
        },
    )
    latency_ms = fields.Nested(
        LatencyOut,
        allow_none=True,
        metadata={"optional": True, "description": "task types that call a downstream service"},
    )


class MassActionOut(Answer):
    id = fields.String(attribute="mass_action.id", metadata={"example": "ma-9c1d2e3f4a5b6c7d"})
    swarm_id = fields.String(attribute="mass_action.swarm_id")
    task_type = fields.String(attribute="mass_action.type")
    tier = TierOut(attribute="mass_action.tier")
    status = OneOf(
        MASS_ACTION_STATES,
        metadata={
            "description": "queued, running, then completed; failed when every task failed;"
            " cancelled when any task was cancelled"
        },
    )
    workflow_id = fields.String(
        attribute="mass_action.workflow_id",
        allow_none=True,
        metadata={"description": "set when it runs a workflow step on a swarm"},
    )
    step = fields.Integer(attribute="mass_action.step", allow_none=True)
    counts = fields.Nested(MassActionCounts)
    percent = fields.Float(metadata={"description": "share of the tasks that ended, 0 to 100"})
    tasks_per_second = fields.Float(
        allow_none=True, metadata={"description": "tasks ended per second since the first start"}
    )
    eta_seconds = fields.Float(
        allow_none=True, metadata={"description": "0 once ended; null while the rate is unknown"}
    )
    created_at = Timestamp(attribute="mass_action.created_at")
    started_at = Timestamp(attribute="mass_action.started_at", allow_none=True)
    finished_at = Timestamp(attribute="mass_action.finished_at", allow_none=True)
    cancel_requested_at = Timestamp(attribute="mass_action.cancel_requested_at", allow_none=True)
    aggregate = fields.Nested(
        AggregateOut,
        allow_none=True,
        metadata={
            "description": "every finished task's result merged by the task type's merge rule"
            " (null in lists)"
        },
    )
    results = fields.String(
        attribute="results_path", metadata={"description": "where its results are read"}
    )
    callback = fields.Nested(
        CallbackOut,
        allow_none=True,
        metadata={"description": "Set when the mass-action was created with a callback_url"},
    )


class MassActionResult(Answer):
    """One task of a mass-action: a JSON page item, or one line of the NDJSON stream."""

    task_id = TaskId()
    bot_id = fields.String(allow_none=True)
    slice_index = fields.Integer(allow_none=True)
    status = OneOf(TASK_STATES[1:])
    attempts = fields.Integer()
    result = fields.Raw(allow_none=True, metadata={"description": "What the task answered."})
    error = fields.String(allow_none=True)
    started_at = Timestamp(allow_none=True)
    finished_at = Timestamp(allow_none=True)


class TaskOut(Answer):
    task_id = TaskId(attribute="id")
    kind = fields.Constant("task")
    # Not an enum: a task keeps its type after a plugin that registered it is removed.
    task_type = fields.String(attribute="type")
    status = OneOf(TASK_STATES)
    bot_id = fields.String(allow_none=True)
    swarm_id = fields.String(allow_none=True)
    workflow_id = fields.String(allow_none=True)
    mass_action_id = fields.String(
        allow_none=True, metadata={"description": "the mass-action (`ma-…`) it is one task of"}
    )
    tier = TierOut()
    attempts = fields.Integer()
    result = fields.Raw(allow_none=True, metadata={"description": "What the task answered."})
    error = fields.String(allow_none=True)
    assigned_at = Timestamp()
    started_at = Timestamp(allow_none=True)
    finished_at = Timestamp(allow_none=True)


class TaskDetail(TaskOut):
    """GET /task/{task_id} for a task: the task with the data it was given."""

    data = fields.Dict(
        keys=fields.String(),
        allow_none=True,
        metadata={"description": "The data the task was given."},
    )


class StepOut(TaskOut):
    step = fields.Integer()
    name = fields.String()
    depends_on = fields.List(fields.String())
    duration_ms = Typed("integer", "_duration", allow_none=True)

    def _duration(self, task) -> int | None:
        if task.started_at is None or task.finished_at is None:
            return None
        return round((task.finished_at - task.started_at).total_seconds() * 1000)


class _Steps(fields.List):
    """A workflow's steps, each with its name and dependencies from the workflow's spec."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fields.Nested(StepOut), **kwargs)

    def _serialize(self, value, attr, obj, **kwargs) -> list[dict[str, Any]]:
        names, deps = obj.step_names(), obj.depends_on()
        steps = StepOut().dump(obj.steps, many=True)
        for step in steps:
            step["name"] = names.get(step["step"])
            step["depends_on"] = deps.get(step["step"], [])
            step["mass_action_id"] = obj.mass_actions.get(step["step"])
        return steps


class WorkflowOut(Answer):
    task_id = fields.String(attribute="workflow.id", metadata={"example": "wf-0a1b2c3d4e5f6a7b"})
    kind = fields.Constant("workflow")
    status = OneOf(WORKFLOW_STATES)
    priority = OneOf(PRIORITY_TIERS, attribute="workflow.priority")
    tier = TierOut(attribute="workflow.tier")
    error = fields.String(attribute="workflow.error", allow_none=True)
    created_at = Timestamp(attribute="workflow.created_at")
    deadline_at = Timestamp(attribute="workflow.deadline_at")
    finished_at = Timestamp(attribute="workflow.finished_at", allow_none=True)
    steps = _Steps()
    callback = fields.Nested(
        CallbackOut,
        allow_none=True,
        metadata={"description": "Set when the workflow was created with a callback_url"},
    )


def task_or_workflow(description: str) -> dict[str, Any]:
    """The documented answer of /task/{task_id}: a task or a workflow, told apart by `kind`."""
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [TaskDetail, WorkflowOut],
                    "discriminator": {
                        "propertyName": "kind",
                        "mapping": {
                            "task": "#/components/schemas/TaskDetail",
                            "workflow": "#/components/schemas/WorkflowOut",
                        },
                    },
                }
            }
        },
    }


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
    return Answer.from_dict(
        {
            "items": fields.List(fields.Nested(item)),
            "limit": fields.Integer(),
            cursor: cursor_field
            or fields.String(
                allow_none=True,
                metadata={"description": "`after` for the next page; null at the end"},
            ),
        },
        name=name,
    )


def items_of(item: type[Schema], name: str) -> type[Schema]:
    """The schema of a whole (short, unpaged) list: `{"items": [...]}`."""
    return Answer.from_dict({"items": fields.List(fields.Nested(item))}, name=name)


BotList = list_of(BotOut, "BotList")
SwarmList = list_of(SwarmOut, "SwarmList")
TaskList = list_of(TaskOut, "TaskList")
MassActionList = list_of(MassActionOut, "MassActionList")
MassActionResultList = list_of(MassActionResult, "MassActionResultList")


def page_of(items: list[Any], schema: Schema, limit: int, cursor) -> dict[str, Any]:
    """A list answer: the items and the cursor for the next page (None at the end)."""
    return {
        "items": schema.dump(items, many=True),
        "limit": limit,
        "next_after": cursor(items[-1]) if len(items) == limit else None,
    }


def per_tier(
    member: Callable[[], fields.Field], name: str, order: tuple[str, ...] = TIERS
) -> fields.Nested:
    """An object with one member per tier, in `order`."""
    return fields.Nested(Answer.from_dict({tier: member() for tier in order}, name=name))


# ---- statistics, health, scaling, task types -----------------------------------------------


class BotStats(Answer):
    total_created = fields.Integer(metadata={"description": "bots ever created"})
    active_bots = fields.Integer()
    live_bots = fields.Integer(metadata={"description": "active and paused bots"})
    tasks_executed = fields.Integer(metadata={"description": "tasks completed"})
    tasks_assigned = fields.Integer()
    tasks_failed = fields.Integer()
    # In the spec's order.
    tier_distribution = per_tier(fields.Integer, "TierDistribution", TIERS[::-1])
    swarm_count = fields.Integer()
    capacity_remaining = fields.Integer()
    utilization_percent = fields.Float()
    timestamp = Timestamp()


class QueueHealth(Answer):
    depth = fields.Integer(
        allow_none=True, metadata={"description": "messages; null if Redis is down"}
    )
    oldest_waiting_seconds = fields.Float(allow_none=True)


HEALTH_PARTS = ("postgres", "redis")


class Health(Answer):
    status = OneOf(["healthy", "degraded", "unhealthy"])
    service = fields.Constant("orchestrator")
    redis = OneOf(["connected", "disconnected"])
    postgres = OneOf(["connected", "disconnected"])
    timestamp = Timestamp()
    queues = per_tier(lambda: fields.Nested(QueueHealth), "QueuesHealth")
    last_chunk_completed_seconds_ago = fields.Float(allow_none=True)
    failing = fields.List(
        OneOf(HEALTH_PARTS),
        metadata={
            "optional": True,
            "description": "the parts that do not answer (only when some fail)",
        },
    )


class TierScaling(Answer):
    waiting_tasks = fields.Integer()
    running_tasks = fields.Integer()
    oldest_waiting_seconds = fields.Float(allow_none=True)
    queue_depth = fields.Integer(allow_none=True)
    desired_workers = fields.Integer()


class IoPoolScaling(Answer):
    open_calls = fields.Integer()
    in_flight = fields.Integer(allow_none=True)
    total_limit = fields.Integer()
    calls_per_worker = fields.Integer()
    desired_workers = fields.Integer()


class Scaling(Answer):
    desired_workers = fields.Integer()
    io_pool = fields.Nested(IoPoolScaling)
    tiers = per_tier(lambda: fields.Nested(TierScaling), "TiersScaling")
    per_worker_rate = fields.Float()
    per_worker_rate_source = OneOf(["given", "measured", "default"])
    throughput_per_second = fields.Float(allow_none=True)
    current_workers = fields.Integer(allow_none=True)
    target_drain_seconds = fields.Float()
    min_workers = fields.Integer()
    max_workers = fields.Integer()
    timestamp = Timestamp()


class TaskTypeOut(Answer):
    name = fields.String()
    description = fields.String()
    capability = fields.String(allow_none=True)
    chunk_size = fields.Integer()
    service = fields.String(allow_none=True)
    available = fields.Boolean()


TaskTypeList = items_of(TaskTypeOut, "TaskTypeList")


# ---- service registry ----------------------------------------------------------------------


class UrlPath(validate.Validator):
    """A request path such as `/generate`: starts with `/`, no spaces or control characters."""

    def __call__(self, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValidationError("Must start with '/' and hold no spaces.")
        return _printable(value)

    def openapi(self, settings: Settings) -> dict[str, Any]:
        return {"pattern": "^/[^\\s\\u0000-\\u001f\\u007f]*$"}


class HttpUrl(validate.Validator):
    """What the registry accepts as a URL before its allowlist check (app/services/registry.py)."""

    def __call__(self, value: str) -> str:
        return _printable(value)

    def openapi(self, settings: Settings) -> dict[str, Any]:
        return {
            "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s/?#@:\\u0000-\\u001f\\u007f]+"
            "(:[0-9]{1,5})?(/[^\\s\\u0000-\\u001f\\u007f]*)?$",
            "description": "http(s) URL; its host must pass URL_ALLOWLIST (422 otherwise)",
            "example": "http://image-service:8000",
        }


class ServiceUpdate(Schema):
    """PUT /services/{name}: any of these; the service checks URLs and task types (422)."""

    OPENAPI = {"minProperties": 1}

    urls = fields.List(
        fields.String(validate=[validate.Length(min=1, max=2000), HttpUrl()]),
        validate=validate.Length(min=1, max=10),
        metadata={"uniqueItems": True},
    )
    path = fields.String(validate=[validate.Length(min=1, max=200), UrlPath()])
    health_path = fields.String(validate=[validate.Length(min=1, max=200), UrlPath()])
    timeout_s = fields.Float(validate=validate.Range(min=0.1, max=600))
    task_types = fields.List(TaskTypeName(downstream_only=True), validate=validate.Length(max=50))
    max_concurrency = Concurrency(
        metadata={"description": 'Calls in flight at most, or "auto" to learn the limit.'}
    )
    max_concurrency_ceiling = StrictInteger(
        validate=validate.Range(min=1, max=10_000),
        metadata={"description": 'The most a learned limit may reach (with "auto").'},
    )

    @validates_schema
    def _something_to_change(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Give at least one field to change.")


class BreakerOut(Answer):
    state = OneOf([breaker.CLOSED, breaker.OPEN, breaker.HALF_OPEN])
    consecutive_failures = fields.Integer()
    retry_in_s = fields.Float(allow_none=True)


class EndpointOut(Answer):
    url = fields.String()
    state = OneOf([ENDPOINT_UNKNOWN, ENDPOINT_HEALTHY, ENDPOINT_UNHEALTHY])
    latency_ms = fields.Float(allow_none=True)
    last_probe_at = Timestamp(allow_none=True)
    last_error = fields.String(allow_none=True)
    breaker = fields.Nested(
        BreakerOut, allow_none=True, metadata={"description": "null if Redis is down"}
    )


class AdaptiveOut(Answer):
    limit = fields.Integer()
    ceiling = fields.Integer()
    phase = OneOf(["slow_start", "avoid"])
    baseline_latency_ms = fields.Float(allow_none=True)
    window_latency_ms = fields.Float(allow_none=True)
    samples = fields.Integer()
    drops = fields.Integer()
    cuts = fields.Integer()


class ServiceOut(Answer):
    name = fields.String(metadata={"example": "image"})
    variable = fields.String(allow_none=True)
    urls = fields.List(fields.String())
    path = fields.String()
    health_path = fields.String()
    timeout_s = fields.Float()
    task_types = fields.List(fields.String())
    max_concurrency = Concurrency()
    max_concurrency_ceiling = fields.Integer(
        allow_none=True, metadata={"description": 'With "auto": the learned limit\'s ceiling.'}
    )
    concurrency_limit = fields.Integer(
        allow_none=True,
        metadata={"description": "Calls in flight allowed now (null if Redis is down)."},
    )
    adaptive = fields.Nested(
        AdaptiveOut, allow_none=True, metadata={"description": 'With "auto": what was learned.'}
    )
    in_flight = fields.Integer(allow_none=True)
    source = OneOf([SOURCE_ENV, SOURCE_API])
    updated_at = Timestamp()
    endpoints = fields.List(fields.Nested(EndpointOut))


ServiceList = items_of(ServiceOut, "ServiceList")
