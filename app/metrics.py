"""Prometheus metrics: what the service counts as it works.

Two kinds, kept apart on purpose:

- Events (tasks assigned, completed, failed; how long tasks waited; downstream calls) are counted
  where they happen, in gunicorn workers and Celery pool processes. With PROMETHEUS_MULTIPROC_DIR
  set (a directory), every process writes its counters to files there and a scrape sums them all
  (prometheus_client's multiprocess mode); unset, one process keeps them in memory.
- State (queue depth, the oldest waiting task, live bots, capacity, breakers) is never counted
  here: app/services/state_metrics.py reads it from PostgreSQL and Redis at scrape time with the
  few cheap queries GET /health, /bots/stats and /scaling use, so any API process answers the
  truth. Every service imports this module, so it imports none of them.

Labels are tiers, task types, services and their URLs, outcomes: never a bot or task id.
Recording must never fail the work being recorded, so every helper here swallows its errors.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, values
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
# Read once: prometheus_client asks for the identifier on every increment, to notice a fork.
_HOST = socket.gethostname()


def process_identifier(pid: int | None = None) -> str:
    """How this process's files in the metrics directory are named: host and pid.

    The host keeps containers that share the directory (docker compose) apart: each has its own
    pid namespace, so two of them would otherwise write the same pid's file.
    """
    return f"{_HOST}_{os.getpid() if pid is None else pid}"


if MULTIPROC_DIR:
    # Before any metric below is made: they take their storage from values.ValueClass.
    values.ValueClass = values.MultiProcessValue(process_identifier=process_identifier)

# Where the metrics live when there is no multiprocess directory (one process: tests, `flask`).
_LOCAL = CollectorRegistry()

# From 5 ms (an echo chunk picked up at once) to an hour (a backlog behind a saturated pool).
WAIT_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    900,
    3600,
)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

TASKS_ASSIGNED = Counter(
    "orchestrator_tasks_assigned",
    "Tasks given to bots (mass-actions, single assignments, released workflow steps).",
    ["tier", "task_type"],
    registry=_LOCAL,
)
TASKS_COMPLETED = Counter(
    "orchestrator_tasks_completed",
    "Tasks recorded as completed, each counted once (by the worker or a manual completion).",
    ["tier", "task_type"],
    registry=_LOCAL,
)
TASKS_FAILED = Counter(
    "orchestrator_tasks_failed",
    "Tasks recorded as failed, each counted once.",
    ["tier", "task_type"],
    registry=_LOCAL,
)
ASSIGNMENT_TO_START = Histogram(
    "orchestrator_task_assignment_to_start_seconds",
    "From a task's assignment to its start on the worker pool.",
    ["tier"],
    buckets=WAIT_BUCKETS,
    registry=_LOCAL,
)
ASSIGNMENT_TO_FINISH = Histogram(
    "orchestrator_task_assignment_to_finish_seconds",
    "From a task's assignment to its recorded outcome.",
    ["tier", "outcome"],
    buckets=WAIT_BUCKETS,
    registry=_LOCAL,
)
MASS_ACTION_DURATION = Histogram(
    "orchestrator_mass_action_duration_seconds",
    "From a mass-action's creation to its last task's outcome, by how it ended.",
    ["task_type", "tier", "outcome"],
    buckets=WAIT_BUCKETS,
    registry=_LOCAL,
)
DOWNSTREAM_CALLS = Counter(
    "orchestrator_downstream_calls",
    "HTTP attempts to downstream AI services, by outcome.",
    ["service", "url", "outcome"],
    registry=_LOCAL,
)
DOWNSTREAM_LATENCY = Histogram(
    "orchestrator_downstream_call_seconds",
    "How long one HTTP attempt to a downstream AI service took, whatever its outcome.",
    ["service", "url"],
    buckets=CALL_BUCKETS,
    registry=_LOCAL,
)

DATABASE_RETRIES = Counter(
    "orchestrator_database_retries",
    "Statements this service ran again after PostgreSQL broke a deadlock or lost the connection.",
    ["operation", "reason"],
    registry=_LOCAL,
)

# ---- recording ---------------------------------------------------------------------------------


def count_retry(operation: str, reason: str) -> None:
    """Count one statement run again (reason: deadlock or connection)."""
    try:
        DATABASE_RETRIES.labels(operation, reason).inc()
    except Exception:  # metrics must never break the work they describe
        log.warning("could not count a database retry", exc_info=True)


def count_assigned(tier: str, task_type: str, n: int = 1) -> None:
    """Count n tasks of one type given to bots of one tier (after their commit)."""
    try:
        if n > 0:
            TASKS_ASSIGNED.labels(tier, task_type).inc(n)
    except Exception:
        log.exception("metrics: counting assigned tasks failed")


def record_moved(summary: list[list[Any]] | None) -> None:
    """Count the outcomes one record statement moved and observe their waits.

    `summary` holds (tier, type, status, start_s, finish_s, n) rows: the record statement's
    last column (app/services/outcomes.py).
    """
    try:
        for tier, task_type, status, start_s, finish_s, n in summary or ():
            if status == "completed":
                TASKS_COMPLETED.labels(tier, task_type).inc(n)
            elif status == "failed":
                TASKS_FAILED.labels(tier, task_type).inc(n)
            else:
                continue
            if start_s is not None:
                _observe_many(ASSIGNMENT_TO_START.labels(tier), max(float(start_s), 0.0), n)
            if finish_s is not None:
                finish = max(float(finish_s), 0.0)
                _observe_many(ASSIGNMENT_TO_FINISH.labels(tier, status), finish, n)
    except Exception:
        log.exception("metrics: recording outcomes failed")


def observe_mass_action(task_type: str, tier: str, outcome: str, seconds: float) -> None:
    """Observe how long one mass-action took from creation to its end."""
    try:
        MASS_ACTION_DURATION.labels(tier=tier, task_type=task_type, outcome=outcome).observe(
            max(seconds, 0.0)
        )
    except Exception:
        log.exception("metrics: observing a mass-action failed")


@contextmanager
def downstream_call(service: str, url: str) -> Iterator[None]:
    """Time one HTTP attempt to a downstream URL and count it by outcome; exceptions pass on."""
    started = time.perf_counter()
    outcome = "success"
    try:
        yield
    except BaseException as error:
        outcome = _outcome_of(error)
        raise
    finally:
        try:
            label = url_label(url)
            DOWNSTREAM_CALLS.labels(service, label, outcome).inc()
            DOWNSTREAM_LATENCY.labels(service, label).observe(time.perf_counter() - started)
        except Exception:
            log.exception("metrics: counting a downstream call failed")


def url_label(url: str) -> str:
    """A URL as a label value: without any user:password@ it may carry."""
    scheme, sep, rest = url.partition("://")
    host, at, path = rest.partition("@")
    if not at or "/" in host:
        return url
    return f"{scheme}{sep}{path}"


def _outcome_of(error: BaseException) -> str:
    from app.clients.downstream import (
        DownstreamBadResponse,
        DownstreamConnectionError,
        DownstreamHTTPError,
        DownstreamTimeout,
    )

    if isinstance(error, DownstreamTimeout):
        return "timeout"
    if isinstance(error, DownstreamConnectionError):
        return "connection_error"
    if isinstance(error, DownstreamHTTPError):
        status = getattr(error, "status", None) or 0
        return "http_429" if status == 429 else ("http_5xx" if status >= 500 else "http_4xx")
    if isinstance(error, DownstreamBadResponse):
        return "bad_response"
    return "error"


def _observe_many(child: Any, amount: float, n: int) -> None:
    """Histogram.observe(amount) n times, in two writes when the child's layout is known."""
    buckets, total, bounds = (
        getattr(child, "_buckets", None),
        getattr(child, "_sum", None),
        getattr(child, "_upper_bounds", None),
    )
    if buckets is None or total is None or bounds is None or len(buckets) != len(bounds):
        for _ in range(n):
            child.observe(amount)
        return
    # What observe() does (prometheus-client 0.26): the sum, and the first bucket that holds it.
    total.inc(amount * n)
    for i, bound in enumerate(bounds):
        if amount <= bound:
            buckets[i].inc(n)
            break


# ---- exposition --------------------------------------------------------------------------------


def event_registry() -> CollectorRegistry:
    """The counted events: summed over every process's files, or this process's own."""
    if not MULTIPROC_DIR:
        return _LOCAL
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)
    return registry


class Events(Collector):
    """Another registry's metrics, so events and state share one exposition."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Any]:
        return self.source.collect()


def mark_process_dead(pid: int) -> None:
    """Gunicorn's child_exit: drop a dead worker's live-gauge files (counters stay summed)."""
    if MULTIPROC_DIR:
        multiprocess.mark_process_dead(process_identifier(pid), MULTIPROC_DIR)


def serve_worker_metrics(port: int) -> None:
    """Serve the metrics directory's events on `port` (a Celery worker without a shared API).

    Only events: the state gauges are the API's to answer. Runs in a daemon thread.
    """
    from prometheus_client import start_http_server

    if not MULTIPROC_DIR:
        # The pool's processes would each keep their counts to themselves.
        log.warning("WORKER_METRICS_PORT needs PROMETHEUS_MULTIPROC_DIR; not serving metrics")
        return
    start_http_server(port, registry=event_registry())
    log.info("serving metrics on port %d", port)
