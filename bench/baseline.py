"""The plain-Celery baseline: one message per task, a no-op task, the service's worker settings.

Not part of the service. `celery -A bench.baseline worker -Q bench_noop` consumes it with the same
concurrency, prefetch and acknowledgement settings (celeryconfig) as the orchestrator's worker.
"""

from __future__ import annotations

import threading

import requests
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


_local = threading.local()


@app.task(name="bench.call")
def call(url: str, payload: dict) -> dict:
    """One downstream call, the plain way: one message per call, a thread waits on it."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    response = session.post(url, json=payload, timeout=30)
    response.raise_for_status()
    return response.json()
