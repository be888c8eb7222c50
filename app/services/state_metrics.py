"""The state half of GET /metrics: gauges read from PostgreSQL and Redis when scraped.

Counted events live in app/metrics.py, which every service imports and which therefore imports
no service; the gauges here read the services (queues, capacity, the registry's breakers), so
they live above them. Any API process answers the truth, whichever process did the work.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flask import current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text

from app import metrics
from app.extensions import db
from app.models import LIVE_BOT_STATES
from app.services import registry, retention
from app.services.capacity import max_bots
from app.services.scaling import gather_loads
from app.tiers import TIERS

log = logging.getLogger(__name__)

BREAKER_STATES = ("closed", "half_open", "open")

# Deadlocks so far, backends waiting on a lock and the longest wait, and waiting lock requests by
# type: one round trip, all for this database.
_CONTENTION = """
SELECT (SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()),
       count(DISTINCT w.pid), extract(epoch FROM max(now() - w.waitstart)),
       (SELECT json_object_agg(locktype, n) FROM (
            SELECT locktype, count(*) AS n FROM waiting GROUP BY locktype) t)
  FROM waiting w
"""
# Lock requests not granted, of backends connected to this database (row-lock waits name no
# database in pg_locks, so the backend's says which).
_WAITING = """
SELECT l.pid, l.locktype, l.waitstart FROM pg_locks l
  JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE NOT l.granted AND a.datname = current_database()
"""


class StateCollector(Collector):
    """Gauges read from PostgreSQL and Redis when scraped (needs the Flask app context)."""

    def collect(self) -> Iterable[Any]:
        up = GaugeMetricFamily(
            "orchestrator_dependency_up",
            "Whether the scrape could read this dependency (1) or not (0).",
            labels=["dependency"],
        )
        postgres_ok, redis_ok = True, True
        families: list[Any] = []
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
        try:
            families += self._contention()
        except Exception as error:
            postgres_ok = False
            self._rollback(error, "contention")
        try:
            families += self._retention()
        except Exception as error:
            postgres_ok = False
            self._rollback(error, "retention")
        redis_ok = redis_ok and self._redis_answers()
        up.add_metric(["postgres"], 1.0 if postgres_ok else 0.0)
        up.add_metric(["redis"], 1.0 if redis_ok else 0.0)
        yield up
        yield from families

    @staticmethod
    def _contention() -> list[Any]:
        """Lock waits now and deadlocks so far, as PostgreSQL sees them for this database."""
        deadlocks, waiting, oldest, by_mode = db.session.execute(
            text(f"WITH waiting AS ({_WAITING}) {_CONTENTION}")
        ).one()
        db.session.rollback()
        broken = CounterMetricFamily(
            "orchestrator_postgres_deadlocks",
            "Deadlocks PostgreSQL broke in this database (pg_stat_database), since its stats reset.",
            value=float(deadlocks or 0),
        )
        waits = GaugeMetricFamily(
            "orchestrator_postgres_lock_waits",
            "Lock requests waiting right now in this database (pg_locks, not granted), by lock type.",
            labels=["locktype"],
        )
        for locktype, n in (by_mode or {}).items():
            waits.add_metric([locktype], float(n))
        if not by_mode:
            waits.add_metric(["relation"], 0.0)
        longest = GaugeMetricFamily(
            "orchestrator_postgres_lock_wait_longest_seconds",
            "How long the longest-waiting backend of this database has waited on a lock (0: none).",
            value=float(oldest or 0),
        )
        backends = GaugeMetricFamily(
            "orchestrator_postgres_backends_waiting_on_locks",
            "Backends of this database waiting on a lock right now (pg_locks).",
            value=float(waiting or 0),
        )
        return [broken, waits, longest, backends]

    @staticmethod
    def _retention() -> list[Any]:
        done = retention.totals()
        deleted = CounterMetricFamily(
            "orchestrator_retention_deleted",
            "Rows the retention job deleted (finished tasks, ended workflows, audit entries, "
            "unused payloads), since the database was created.",
            labels=["kind"],
        )
        for kind, amount in done["deleted"].items():
            deleted.add_metric([kind], float(amount))
        last = GaugeMetricFamily(
            "orchestrator_retention_last_run_timestamp_seconds",
            "When the retention job last finished a pass (0: never).",
            value=float(done["last_run_epoch"] or 0),
        )
        return [deleted, last]

    @staticmethod
    def _rollback(error: Exception, part: str) -> None:
        log.warning("metrics: could not read %s: %s", part, error)
        try:
            db.session.rollback()
        except Exception:
            pass

    @staticmethod
    def _redis_answers() -> bool:
        try:
            return bool(current_app.extensions["redis"].ping())
        except Exception:
            return False

    @staticmethod
    def _tasks_and_queues() -> list[GaugeMetricFamily]:
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
        limit = GaugeMetricFamily(
            "orchestrator_downstream_concurrency_limit",
            "Calls in flight the service may have now: its fixed max_concurrency, or the limit "
            'learned for max_concurrency "auto".',
            labels=["service", "mode"],
        )
        ceiling = GaugeMetricFamily(
            "orchestrator_downstream_concurrency_ceiling",
            'The most a learned limit (max_concurrency "auto") may reach.',
            labels=["service"],
        )
        redis_ok = True
        for view in registry.list_services():
            if view.in_flight is None:
                redis_ok = False
            else:
                in_flight.add_metric([view.name], float(view.in_flight))
            mode = "auto" if view.concurrency_auto else "fixed"
            if view.concurrency_limit is not None:
                limit.add_metric([view.name, mode], float(view.concurrency_limit))
            if view.max_concurrency_ceiling is not None:
                ceiling.add_metric([view.name], float(view.max_concurrency_ceiling))
            for endpoint in view.endpoints:
                breaker = endpoint.breaker
                if breaker is None or breaker.state not in BREAKER_STATES:
                    redis_ok = False
                    continue
                for name in BREAKER_STATES:
                    value = 1.0 if breaker.state == name else 0.0
                    state.add_metric([view.name, metrics.url_label(endpoint.url), name], value)
                failures.add_metric(
                    [view.name, metrics.url_label(endpoint.url)],
                    float(breaker.consecutive_failures),
                )
        return [state, failures, in_flight, limit, ceiling], redis_ok


def render() -> tuple[bytes, str]:
    """The text exposition of every metric (inside the Flask app context) and its content type."""
    exposition = CollectorRegistry()
    exposition.register(metrics.Events(metrics.event_registry()))
    exposition.register(StateCollector())
    return generate_latest(exposition), CONTENT_TYPE_LATEST
