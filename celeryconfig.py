"""Celery settings for the execution pool (read by the API's publisher and by every worker).

Messages only say "these task ids are ready"; the rows in PostgreSQL are the truth, so results
are not stored in Redis and a lost message is re-published by the reconciler.
"""

from kombu import Queue

from app.config import Settings
from app.tiers import TIER_QUEUES

_settings = Settings.from_env()

broker_url = _settings.redis_url
broker_connection_retry_on_startup = True
# Publishing must not hang a request when Redis is down: fail fast, the reconciler re-publishes.
broker_connection_timeout = 2
broker_connection_max_retries = 1
broker_transport_options = {
    # Consume queues in the order given to `-Q` (L20 first): BRPOP returns from the first
    # non-empty key.
    "queue_order_strategy": "priority",
    # Must exceed the longest chunk run time, or Redis re-delivers a chunk still running.
    "visibility_timeout": _settings.task_lease_seconds * 4,
    "socket_timeout": 5,
    "socket_connect_timeout": 2,
    "max_retries": 1,
}

task_queues = [Queue(name) for name in TIER_QUEUES]
task_default_queue = "standard"

task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
result_backend = None

# At-least-once delivery; the claim statement makes a duplicate delivery harmless.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_time_limit = _settings.task_lease_seconds
task_soft_time_limit = max(_settings.task_lease_seconds - 10, 1)

beat_schedule = {
    "reconcile": {"task": "orchestrator.reconcile", "schedule": 15.0},
}
timezone = "UTC"
