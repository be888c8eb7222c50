"""The tables: PostgreSQL is the system of record for bots, swarms, tasks and workflows.

Bots, swarms and payloads are never deleted (retiring keeps the row), so the 50,000-row inserts
carry no foreign-key checks on them: each would cost a per-row trigger. Workflows are never deleted
either, and a workflow's steps are inserted in the workflow's own transaction, so
tasks.workflow_id has no foreign key (migration 0005). Counters on bots and
swarms change only in SQL (`SET n = n + k`) inside the statements of
app/services; bot_census holds live-bot tallies so that stats never count 50,000 rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db

# Bot states. A retired bot keeps its row (and history) but no longer counts against capacity.
BOT_ACTIVE, BOT_PAUSED, BOT_RETIRED = "active", "paused", "retired"
LIVE_BOT_STATES = (BOT_ACTIVE, BOT_PAUSED)

# Task states: assigned -> running -> completed | failed, or assigned -> cancelled. A workflow
# step whose dependencies have not finished waits in `waiting` until they have.
TASK_WAITING, TASK_ASSIGNED, TASK_RUNNING = "waiting", "assigned", "running"
TASK_COMPLETED, TASK_FAILED, TASK_CANCELLED = "completed", "failed", "cancelled"
OPEN_TASK_STATES = (TASK_ASSIGNED, TASK_RUNNING)
NOT_STARTED_TASK_STATES = (TASK_WAITING, TASK_ASSIGNED)

# Callback delivery states (a resource with a callback_url and no row yet is still running).
CALLBACK_PENDING, CALLBACK_DELIVERED, CALLBACK_FAILED = "pending", "delivered", "failed"

# Workflow states; queued and running are told apart from the steps when read.
WORKFLOW_ACTIVE, WORKFLOW_COMPLETED = "active", "completed"
WORKFLOW_FAILED, WORKFLOW_CANCELLED = "failed", "cancelled"


def _counter() -> Mapped[int]:
    return mapped_column(BigInteger, nullable=False, server_default=text("0"))


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Swarm(db.Model):
    __tablename__ = "swarms"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    tier: Mapped[str] = mapped_column(String(16), nullable=False)
    capabilities: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    tenant: Mapped[str | None] = mapped_column(String(64))
    # Next slice position for bots added by scaling up; positions are never reused.
    next_position: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    created_at: Mapped[datetime] = _created_at()
    total_tasks: Mapped[int] = _counter()
    completed_tasks: Mapped[int] = _counter()
    failed_tasks: Mapped[int] = _counter()
    cancelled_tasks: Mapped[int] = _counter()


class Bot(db.Model):
    __tablename__ = "bots"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    tier: Mapped[str] = mapped_column(String(16), nullable=False)
    capabilities: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    swarm_id: Mapped[str | None] = mapped_column(String(40))
    tenant: Mapped[str | None] = mapped_column(String(64))
    # The bot's slice of a distributed dataset within its swarm.
    position: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _created_at()
    last_active: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    total_tasks: Mapped[int] = _counter()
    completed_tasks: Mapped[int] = _counter()
    failed_tasks: Mapped[int] = _counter()
    cancelled_tasks: Mapped[int] = _counter()

    __table_args__ = (
        Index("ix_bots_swarm_status", "swarm_id", "status"),
        # A tenant key's stats and lists read only that tenant's bots.
        Index("ix_bots_tenant", "tenant", postgresql_where=text("tenant IS NOT NULL")),
        # Half-empty pages: the counter updates of mass-actions and outcomes stay HOT (0005).
        {"postgresql_with": {"fillfactor": 50}},
    )


class BotCensus(db.Model):
    """How many bots each (tenant, swarm, tier, status) holds; '' stands for no tenant, and for
    bots outside any swarm."""

    __tablename__ = "bot_census"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True, server_default=text("''"))
    swarm_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tier: Mapped[str] = mapped_column(String(16), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = _counter()

    # A swarm's tallies are read by swarm id; the primary key leads with the tenant.
    __table_args__ = (Index("ix_bot_census_swarm", "swarm_id"),)


class Counter(db.Model):
    """Service-wide running totals (bots_created, tasks_completed, ...), one row per shard: a
    total is the sum of its shards (app/services/counter_shards.py)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, server_default=text("0"))
    value: Mapped[int] = _counter()


class SwarmCounterShard(db.Model):
    """What single assignments and recorded outcomes add to a swarm's task counters, spread over
    shard rows; a swarm's counter is its own column plus the sum of its shards."""

    __tablename__ = "swarm_counter_shards"

    swarm_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    total_tasks: Mapped[int] = _counter()
    completed_tasks: Mapped[int] = _counter()
    failed_tasks: Mapped[int] = _counter()
    cancelled_tasks: Mapped[int] = _counter()


class TaskPayload(db.Model):
    """A task's input data, stored once and shared by every task of a mass-action."""

    __tablename__ = "task_payloads"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _created_at()


class Workflow(db.Model):
    """An orchestration: steps (tasks) run on the worker pool against downstream services."""

    __tablename__ = "workflows"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    priority: Mapped[str] = mapped_column(String(16), nullable=False)
    tier: Mapped[str] = mapped_column(String(16), nullable=False)
    tenant: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default=text("'active'"))
    # The steps as requested (names, dependencies, options), in step order.
    spec: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    # Where to POST the summary once the workflow ends (app/services/callbacks.py).
    callback_url: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_workflows_active", "deadline_at", postgresql_where=text("status = 'active'")),
    )


class Task(db.Model):
    """One unit of work given to a bot, or one step of a workflow."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    type: Mapped[str] = mapped_column(String(64), nullable=False)
    tier: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    bot_id: Mapped[str | None] = mapped_column(String(40))
    swarm_id: Mapped[str | None] = mapped_column(String(40))
    workflow_id: Mapped[str | None] = mapped_column(String(40))
    step: Mapped[int | None] = mapped_column(Integer)
    payload_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # The task's part of a mass-action's dataset: part slice_index (0-based) of slice_count.
    slice_index: Mapped[int | None] = mapped_column(Integer)
    slice_count: Mapped[int | None] = mapped_column(Integer)
    # The mass-action (`ma-…`) this task is one of; None for single tasks and plain steps. Not
    # indexed: the mass-action knows the id range its tasks were inserted in (0008).
    mass_action_id: Mapped[str | None] = mapped_column(String(40))
    # Per-task execution options (workflow steps); None means the service's defaults.
    timeout_s: Mapped[float | None] = mapped_column(Float)
    retries: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[Any | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    assigned_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_tasks_bot", "bot_id", "id"),
        # Partial: mass-action rows (no workflow) add no entry (0005).
        Index(
            "ix_tasks_workflow",
            "workflow_id",
            "step",
            postgresql_where=text("workflow_id IS NOT NULL"),
        ),
        # Whether any task still uses a payload (retention); a block-range index costs the
        # 50,000-row inserts next to nothing (0009).
        Index(
            "ix_tasks_payload_brin",
            "payload_id",
            postgresql_using="brin",
            postgresql_with={"autosummarize": "on"},
        ),
        # The reconciler's view: only open tasks, so it stays small however long history grows.
        Index(
            "ix_tasks_open",
            "status",
            "tier",
            "id",
            postgresql_where=text("status IN ('assigned', 'running')"),
        ),
    )


class Callback(db.Model):
    """The delivery of one ended resource's summary to its callback_url."""

    __tablename__ = "callbacks"

    resource_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    event: Mapped[str] = mapped_column(String(40), nullable=False)
    summary: Mapped[Any] = mapped_column(JSONB, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created_at()

    # The reconciler's view: deliveries still to make.
    __table_args__ = (
        Index(
            "ix_callbacks_pending", "next_attempt_at", postgresql_where=text("state = 'pending'")
        ),
    )


class MassAction(db.Model):
    """One task for every active bot of a swarm, followed as one thing (`ma-…`).

    Its counters move in the statements that move its tasks (claim, record, cancel, requeue), so
    progress never counts task rows; `assigned` is what the others leave of `total`.
    """

    __tablename__ = "mass_actions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    swarm_id: Mapped[str] = mapped_column(String(40), nullable=False)
    tenant: Mapped[str | None] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64), nullable=False)
    tier: Mapped[str] = mapped_column(String(16), nullable=False)
    payload_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # Set when the mass-action is a workflow step on a swarm.
    workflow_id: Mapped[str | None] = mapped_column(String(40))
    step: Mapped[int | None] = mapped_column(Integer)
    total: Mapped[int] = _counter()
    running: Mapped[int] = _counter()
    completed: Mapped[int] = _counter()
    failed: Mapped[int] = _counter()
    cancelled: Mapped[int] = _counter()
    created_at: Mapped[datetime] = _created_at()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set by the statement whose outcomes bring completed + failed + cancelled to total.
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Its tasks were inserted by one statement: every one of them has an id in this range (others'
    # tasks inserted at the same moment may sit between them).
    first_task_id: Mapped[int | None] = mapped_column(BigInteger)
    last_task_id: Mapped[int | None] = mapped_column(BigInteger)
    # Where to POST the summary once the mass-action ends (app/services/callbacks.py).
    callback_url: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_mass_actions_swarm", "swarm_id", text("created_at DESC"), text("id DESC")),
        Index(
            "ix_mass_actions_unfinished",
            text("created_at DESC"),
            postgresql_where=text("finished_at IS NULL"),
        ),
        Index(
            "ix_mass_actions_workflow",
            "workflow_id",
            "step",
            postgresql_where=text("workflow_id IS NOT NULL"),
        ),
        {"postgresql_with": {"fillfactor": 70}},
    )


class MassActionPartial(db.Model):
    """A merge-rule partial of some of a mass-action's finished tasks (app/services/aggregates)."""

    __tablename__ = "mass_action_partials"

    mass_action_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    partial: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)


class IdempotencyKey(db.Model):
    """The first answer to a caller's POST sent with an Idempotency-Key header, replayed on that
    caller's retries until IDEMPOTENCY_TTL has passed."""

    __tablename__ = "idempotency_keys"
    # The purge finds expired answers by age.
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)

    # Whose key it is: `key:<api key id>`, `admin` (ADMIN_API_KEY) or `addr:<client address>`.
    scope: Mapped[str] = mapped_column(String(100), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    # NULL while the first request is still running.
    status_code: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()


# Where a service's URLs come from: its *_SERVICE_URL variable, until PUT /services/{name} sets them.
SOURCE_ENV, SOURCE_API = "env", "api"

# What the last health probe of a URL said.
ENDPOINT_UNKNOWN, ENDPOINT_HEALTHY, ENDPOINT_UNHEALTHY = "unknown", "healthy", "unhealthy"


class Service(db.Model):
    """A downstream AI service: its URLs in failover order and the task types it serves."""

    __tablename__ = "services"
    __table_args__ = (
        CheckConstraint(
            "NOT max_concurrency_auto OR max_concurrency_ceiling IS NOT NULL",
            name="ck_services_auto_has_ceiling",
        ),
    )

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    urls: Mapped[list[str]] = mapped_column(
        ARRAY(Text), nullable=False, server_default=text("'{}'")
    )
    path: Mapped[str] = mapped_column(Text, nullable=False)
    health_path: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'/health'"))
    timeout_s: Mapped[float] = mapped_column(Float, nullable=False)
    task_types: Mapped[list[str]] = mapped_column(
        ARRAY(Text), nullable=False, server_default=text("'{}'")
    )
    # Calls in flight to this service across every worker; the rest wait for a slot.
    max_concurrency: Mapped[int] = mapped_column(Integer, nullable=False)
    # `max_concurrency: "auto"`: the limit is learned (app/services/adaptive_limit.py), never
    # above the ceiling; max_concurrency keeps the fixed value to return to.
    max_concurrency_auto: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false")
    )
    max_concurrency_ceiling: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(8), nullable=False, server_default=SOURCE_ENV)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class ServiceEndpoint(db.Model):
    """What the last health probe of one URL of a service found."""

    __tablename__ = "service_endpoints"

    service: Mapped[str] = mapped_column(
        ForeignKey("services.name", ondelete="CASCADE"), primary_key=True
    )
    url: Mapped[str] = mapped_column(Text, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False, server_default=ENDPOINT_UNKNOWN)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    last_probe_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)


# API key roles, least to most powerful: each includes what the ones before it may do.
ROLES = ("viewer", "operator", "admin")


class ApiKey(db.Model):
    """A client's key, kept only as a SHA-256 hash; a tenant key sees only its tenant's work."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False, unique=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    tenant: Mapped[str | None] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    # The first characters of the key, so an operator can tell keys apart in `flask keys list`.
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = _created_at()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntry(db.Model):
    """One control action: who did what to which resource, and when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    at: Mapped[datetime] = _created_at()
    key_name: Mapped[str | None] = mapped_column(String(100))
    tenant: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    method: Mapped[str] = mapped_column(String(8), nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    remote_addr: Mapped[str | None] = mapped_column(String(64))
