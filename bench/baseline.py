"""The plain-Celery baseline: one message per task, a no-op task, the service's worker settings.

Not part of the service. `celery -A bench.baseline worker -Q bench_noop` consumes it with the same
concurrency, prefetch and acknowledgement settings (celeryconfig) as the orchestrator's worker.
"""

from __future__ import annotations

from celery import Celery

import celeryconfig
from app.config import Settings

QUEUE = "bench_noop"

app = Celery("bench")
app.config_from_object(celeryconfig)
app.conf.update(celeryconfig.from_settings(Settings.from_env()))
app.conf.task_queues = None
app.conf.task_default_queue = QUEUE
app.conf.beat_schedule = {}


@app.task(name="bench.noop")
def noop(index: int) -> None:
    """Do nothing: the cost measured is Celery's own, per message."""
    return None
