"""Prometheus metrics: what the service counts as it works, and what it reads at scrape time.

Two kinds, kept apart on purpose:

- Events (tasks assigned, completed, failed; how long tasks waited; downstream calls) are counted
  where they happen, in gunicorn workers and Celery pool processes. With PROMETHEUS_MULTIPROC_DIR
  set (a directory), every process writes its counters to files there and a scrape sums them all
  (prometheus_client's multiprocess mode); unset, one process keeps them in memory.
- State (queue depth, the oldest waiting task, live bots, capacity, breakers) is never counted
  here: StateCollector reads it from PostgreSQL and Redis at scrape time with the few cheap
  queries GET /health, /bots/stats and /scaling use, so any API process answers the truth.

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

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
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

# Appended to the select list of execution._RECORD, whose `moved` CTE returns each moved task's
# tier, type, status and timestamps: one row per (tier, type, outcome, waits). Tasks of one chunk
# share their assignment, start and finish times, so a chunk of 2,000 is normally one group.
MOVED_SUMMARY_SQL = """
(SELECT json_agg(json_build_array(tier, type, status, start_s, finish_s, n)) FROM (
     SELECT tier, type, status, extract(epoch FROM started_at - assigned_at) AS start_s,
            extract(epoch FROM finished_at - assigned_at) AS finish_s, count(*) AS n
       FROM moved GROUP BY 1, 2, 3, 4, 5) AS g)
"""


# ---- recording ---------------------------------------------------------------------------------


def count_assigned(tier: str, task_type: str, n: int = 1) -> None:
    """Count n tasks of one type given to bots of one tier (after their commit)."""
    try:
        if n > 0:
            TASKS_ASSIGNED.labels(tier, task_type).inc(n)
    except Exception:
        log.exception("metrics: counting assigned tasks failed")


def record_moved(summary: list[list[Any]] | None) -> None:
    """Count the outcomes one record statement moved and observe their waits (MOVED_SUMMARY_SQL)."""
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


# ---- state read at scrape time -----------------------------------------------------------------

BREAKER_STATES = ("closed", "half_open", "open")


class StateCollector(Collector):
    """Gauges read from PostgreSQL and Redis when scraped (needs the Flask app context)."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "orchestrator_dependency_up",
            "Whether the scrape could read this dependency (1) or not (0).",
            labels=["dependency"],
        )
        postgres_ok, redis_ok = True, True
        families: list[GaugeMetricFamily] = []
        try:
            families += self._tasks_and_queues()
        except Exception as error:
            postgres_ok = False
            self._rollback(error, "queues")
        try:
            families += self._bots_and_capacity()
        except Exception as error:
            postgres_ok = False
            self._rollback(error, "bots")
        try:
            breakers, breaker_redis_ok = self._breakers()
            families += breakers
            redis_ok = redis_ok and breaker_redis_ok
        except Exception as error:
            postgres_ok = False
            self._rollback(error, "breakers")
        redis_ok = redis_ok and self._redis_answers()
        up.add_metric(["postgres"], 1.0 if postgres_ok else 0.0)
        up.add_metric(["redis"], 1.0 if redis_ok else 0.0)
        yield up
        yield from families

    @staticmethod
    def _rollback(error: Exception, part: str) -> None:
        from app.extensions import db

        log.warning("metrics: could not read %s: %s", part, error)
        try:
            db.session.rollback()
        except Exception:
            pass

    @staticmethod
    def _redis_answers() -> bool:
        from flask import current_app

        try:
            return bool(current_app.extensions["redis"].ping())
        except Exception:
            return False

    @staticmethod
    def _tasks_and_queues() -> list[GaugeMetricFamily]:
        from app.services.scaling import gather_loads

        loads = gather_loads()
        messages = GaugeMetricFamily(
            "orchestrator_queue_messages",
            "Chunk messages waiting in the tier's Celery queue (Redis LLEN).",
            labels=["tier"],
        )
        open_tasks = GaugeMetricFamily(
            "orchestrator_tasks_open",
            "Tasks the pool still owes, by tier and state (assigned = waiting, running).",
            labels=["tier", "state"],
        )
        oldest = GaugeMetricFamily(
            "orchestrator_oldest_waiting_task_seconds",
            "Age of the tier's oldest task still waiting to start (0 when none waits).",
            labels=["tier"],
        )
        for tier, load in loads.items():
            if load.queue_depth is not None:
                messages.add_metric([tier], float(load.queue_depth))
            open_tasks.add_metric([tier, "assigned"], float(load.waiting_tasks))
            open_tasks.add_metric([tier, "running"], float(load.running_tasks))
            oldest.add_metric([tier], float(load.oldest_waiting_seconds or 0.0))
        return [messages, open_tasks, oldest]

    @staticmethod
    def _bots_and_capacity() -> list[GaugeMetricFamily]:
        from sqlalchemy import text

        from app.extensions import db
        from app.models import LIVE_BOT_STATES
        from app.services.capacity import max_bots
        from app.tiers import TIERS

        rows = db.session.execute(
            text(
                "SELECT tier, status, coalesce(sum(n), 0) FROM bot_census"
                " WHERE status = ANY(:live) GROUP BY tier, status"
            ),
            {"live": list(LIVE_BOT_STATES)},
        ).all()
        counts = {(tier, status): 0 for tier in TIERS for status in LIVE_BOT_STATES}
        for tier, status, n in rows:
            counts[(tier, status)] = int(n)
        bots = GaugeMetricFamily(
            "orchestrator_bots_live",
            "Live bots (counting against capacity) by tier and status.",
            labels=["tier", "status"],
        )
        for (tier, status), n in sorted(counts.items()):
            bots.add_metric([tier, status], float(n))
        used = sum(counts.values())
        capacity = max_bots()
        return [
            bots,
            GaugeMetricFamily(
                "orchestrator_capacity_bots", "MAX_BOTS: live bots allowed.", value=capacity
            ),
            GaugeMetricFamily(
                "orchestrator_capacity_used_bots",
                "Live bots counting against MAX_BOTS.",
                value=used,
            ),
            GaugeMetricFamily(
                "orchestrator_capacity_used_ratio",
                "Live bots / MAX_BOTS.",
                value=used / capacity if capacity else 0.0,
            ),
        ]

    @staticmethod
    def _breakers() -> tuple[list[GaugeMetricFamily], bool]:
        from app.services import registry

        state = GaugeMetricFamily(
            "orchestrator_breaker_state",
            "1 for the circuit breaker's current state of a downstream URL, 0 for the others.",
            labels=["service", "url", "state"],
        )
        failures = GaugeMetricFamily(
            "orchestrator_breaker_consecutive_failures",
            "Consecutive failures the URL's breaker has counted.",
            labels=["service", "url"],
        )
        in_flight = GaugeMetricFamily(
            "orchestrator_downstream_in_flight",
            "Calls holding one of the service's max_concurrency slots now.",
            labels=["service"],
        )
        redis_ok = True
        for view in registry.list_services():
            if view.in_flight is None:
                redis_ok = False
            else:
                in_flight.add_metric([view.name], float(view.in_flight))
            for endpoint in view.endpoints:
                breaker = endpoint.breaker
                if breaker is None or breaker.state not in BREAKER_STATES:
                    redis_ok = False
                    continue
                for name in BREAKER_STATES:
                    value = 1.0 if breaker.state == name else 0.0
                    state.add_metric([view.name, url_label(endpoint.url), name], value)
                failures.add_metric(
                    [view.name, url_label(endpoint.url)], float(breaker.consecutive_failures)
                )
        return [state, failures, in_flight], redis_ok


# ---- exposition --------------------------------------------------------------------------------


def event_registry() -> CollectorRegistry:
    """The counted events: summed over every process's files, or this process's own."""
    if not MULTIPROC_DIR:
        return _LOCAL
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)
    return registry


def render() -> tuple[bytes, str]:
    """The text exposition of every metric (inside the Flask app context) and its content type."""
    registry = CollectorRegistry()
    registry.register(_Events(event_registry()))
    registry.register(StateCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Events(Collector):
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
