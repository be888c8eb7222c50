"""Celery settings for the execution pool (used by the API's publisher and by every worker).

create_app() loads this module, then `from_settings(settings)` for what depends on the app's
settings (app/dispatch.py:init_celery); nothing here reads the environment.

Messages only say "these task ids are ready"; the rows in PostgreSQL are the truth, so results
are not stored in Redis and a lost message is re-published by the reconciler.
"""

from typing import Any

from kombu import Queue

from app.config import Settings
from app.tiers import IO_QUEUES, TIER_QUEUES

broker_connection_retry_on_startup = True
# Publishing must not hang a request when Redis is down: fail fast, the reconciler re-publishes.
# (Publishing is bounded by the transport options below and the publish retry policy.)
broker_connection_timeout = 2
# Only workers and beat read this: they must outlive a Redis restart, so they reconnect forever.
# With a finite number the worker's main process exits a second or two into an outage.
broker_connection_max_retries = None
broker_transport_options = {
    # Consume queues in the order given to `-Q` (L20 first): BRPOP returns from the first
    # non-empty key.
    "queue_order_strategy": "priority",
    "socket_timeout": 5,
    "socket_connect_timeout": 2,
    "max_retries": 1,
}

task_queues = [Queue(name) for name in TIER_QUEUES + IO_QUEUES]
task_default_queue = "standard"

task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
result_backend = None

# At-least-once delivery; the claim statement makes a duplicate delivery harmless.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

beat_schedule = {
    "reconcile": {"task": "orchestrator.reconcile", "schedule": 15.0},
    # On the L20 queue so a standard backlog cannot delay it; a probe older than the next is
    # worthless, so it expires instead of piling up while no worker runs.
    "probe-services": {
        "task": "orchestrator.probe_services",
        "schedule": 30.0,
        "options": {"queue": "L20", "expires": 25},
    },
    # Answers expire after IDEMPOTENCY_TTL (a day by default): a pass every ten minutes keeps
    # the table to about TTL + 10 min of answers. A pass that waited behind a backlog that long
    # is replaced by the next one.
    "purge-idempotency-keys": {
        "task": "orchestrator.purge_idempotency_keys",
        "schedule": 600.0,
        "options": {"expires": 540},
    },
    # Finished tasks, ended workflows, old audit entries and unused payloads (TASK_RETENTION_DAYS,
    # AUDIT_RETENTION_DAYS): hourly keeps each pass short.
    "retention": {
        "task": "orchestrator.purge_retention",
        "schedule": 3600.0,
        "options": {"expires": 3000},
    },
}
timezone = "UTC"


def from_settings(settings: Settings) -> dict[str, Any]:
    """The settings that depend on the app's configuration: broker, visibility, time limits."""
    lease = settings.task_lease_seconds
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": {
            **broker_transport_options,
            # Must exceed the longest chunk run time, or Redis re-delivers a chunk still running.
            "visibility_timeout": lease * 4,
        },
        "task_time_limit": lease,
        # Ten seconds before the hard limit; for short leases (tests) four fifths of it, not 1 s,
        # which failed tasks of a chunk that was merely slowed down by a busy machine.
        "task_soft_time_limit": max(lease - 10, lease * 0.8),
    }
