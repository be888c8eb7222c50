"""How many workers the pool should have: the number a KEDA or HPA rule would scale to.

For each tier (queue), with `open = waiting + running` tasks:

    budget   = max(target_drain_s - oldest_wait_s, target_drain_s / 10)
    desired  = 0                                               when open == 0
    desired  = clamp(ceil(open / (per_worker_rate * budget)),
                     max(min_workers, 1), max_workers)         otherwise

and the pool as a whole: `desired_workers = clamp(sum of the tiers, min_workers, max_workers)`,
raised to 1 whenever anything is open. One pool consumes every queue (L20 first), so the tiers'
shares add up; the per-tier figures say where the demand comes from.

- `open` counts tasks the pool still owes: queued (`assigned`) and `running`. Running tasks count
  so that scaling to zero never kills work in flight, which would only be redelivered.
- Waiting time shrinks the budget: the older the oldest queued task, the less time is left to
  drain by the target, so the recommendation grows (at most tenfold) before the queue does.
- `per_worker_rate` (tasks per second one worker finishes) is, in order: given by the caller;
  measured, as the pool's recent throughput divided by the caller's `current_workers`; else
  DEFAULT_PER_WORKER_RATE.

Gathering is cheap and adds nothing to the schema: open tasks are counted through the partial
index `ix_tasks_open` (only open rows, however long history grows); the oldest queued task per
tier is the first by id (ids grow with assignment), as GET /health finds it; queue depth is one
LLEN per tier. Throughput needs no scan of `tasks` (which has no index on `finished_at`): every
call samples the `tasks_completed + tasks_failed` counters into a Redis sorted set
(`orchestrator:scaling:samples`, the last 10 minutes, at most 600 samples), and the rate is the
difference to the newest sample at least 30 s old. Scalers poll every 15-30 s, so a window forms
by itself; until it does (or when the counters went backwards, e.g. after a reset) it is None.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from flask import current_app
from sqlalchemy import text

from app.extensions import db
from app.services import inflight, queues, registry
from app.services.ids import iso, utcnow
from app.tiers import TIERS

# Tasks per second one worker (`--concurrency 2`) finishes when nothing better is known. Low on
# purpose: echo runs ~9,000/s per worker (docs/performance.md) but a downstream call takes
# 0.1-10 s, and over-provisioning a backlog is cheaper than under-provisioning it.
DEFAULT_PER_WORKER_RATE = 10.0
DEFAULT_TARGET_DRAIN_SECONDS = 60.0
DEFAULT_MIN_WORKERS = 0
DEFAULT_MAX_WORKERS = 20

SAMPLES_KEY = "orchestrator:scaling:samples"
SAMPLE_HORIZON_S = 600.0
MAX_SAMPLES = 600
THROUGHPUT_WINDOW_S = 30.0

# Open tasks per tier and state through ix_tasks_open.
_OPEN_TASKS = """
SELECT tier, status, count(*) FROM tasks
 WHERE status IN ('assigned', 'running') GROUP BY tier, status
"""
_OPEN_CALLS = """
SELECT count(*) FROM tasks WHERE status IN ('assigned', 'running') AND type = ANY(:types)
"""
_FINISHED_TOTAL = """
SELECT coalesce(sum(value), 0) FROM counters WHERE name IN ('tasks_completed', 'tasks_failed')
"""


@dataclass(frozen=True)
class TierLoad:
    """What one tier's queue holds now."""

    waiting_tasks: int = 0
    running_tasks: int = 0
    oldest_waiting_seconds: float | None = None
    queue_depth: int | None = None


@dataclass(frozen=True)
class Policy:
    """The knobs of the formula."""

    target_drain_seconds: float = DEFAULT_TARGET_DRAIN_SECONDS
    min_workers: int = DEFAULT_MIN_WORKERS
    max_workers: int = DEFAULT_MAX_WORKERS
    per_worker_rate: float = DEFAULT_PER_WORKER_RATE


@dataclass(frozen=True)
class Recommendation:
    """Workers wanted per tier and in all."""

    desired_workers: int
    tiers: dict[str, int] = field(default_factory=dict)


def workers_for(load: TierLoad, policy: Policy) -> int:
    """Workers one tier's open tasks need to drain within the target (0 when nothing is open)."""
    open_tasks = load.waiting_tasks + load.running_tasks
    if open_tasks <= 0:
        return 0
    waited = load.oldest_waiting_seconds or 0.0
    budget = max(policy.target_drain_seconds - waited, policy.target_drain_seconds / 10)
    wanted = math.ceil(open_tasks / (policy.per_worker_rate * budget))
    return _clamp(wanted, max(policy.min_workers, 1), policy.max_workers)


def recommend(loads: dict[str, TierLoad], policy: Policy) -> Recommendation:
    """The pool size for these loads: each tier's need, added up and bounded by the policy."""
    tiers = {tier: workers_for(load, policy) for tier, load in loads.items()}
    anything_open = any(load.waiting_tasks + load.running_tasks > 0 for load in loads.values())
    total = _clamp(sum(tiers.values()), policy.min_workers, policy.max_workers)
    if anything_open:
        total = max(total, 1)
    return Recommendation(desired_workers=total, tiers=tiers)


def per_worker_rate(
    given: float | None, throughput: float | None, current_workers: int | None
) -> tuple[float, str]:
    """The rate to plan with and where it came from: `given`, `measured` or `default`."""
    if given is not None and given > 0:
        return given, "given"
    if throughput and current_workers:
        return throughput / current_workers, "measured"
    return DEFAULT_PER_WORKER_RATE, "default"


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


def gather_loads() -> dict[str, TierLoad]:
    """Open tasks, the oldest queued task's age and queue depth (messages), per tier."""
    counts: dict[tuple[str, str], int] = {
        (tier, status): int(n) for tier, status, n in db.session.execute(text(_OPEN_TASKS))
    }
    oldest = queues.oldest_waiting_seconds()
    depths: dict[str, int] = {}
    try:
        depths = queues.queue_depths()
    except Exception:
        pass  # Redis down: the tasks table still tells the backlog; depth is informative only.
    return {
        tier: TierLoad(
            waiting_tasks=counts.get((tier, "assigned"), 0),
            running_tasks=counts.get((tier, "running"), 0),
            oldest_waiting_seconds=oldest.get(tier),
            queue_depth=depths.get(tier),
        )
        for tier in TIERS
    }


def sample_throughput(now: float | None = None) -> float | None:
    """Record the finished-task total and answer tasks finished per second recently, if known."""
    now = time.time() if now is None else now
    finished = int(db.session.execute(text(_FINISHED_TOTAL)).scalar_one())
    redis = current_app.extensions["redis"]
    try:
        with redis.pipeline() as pipe:
            pipe.zadd(SAMPLES_KEY, {f"{now:.3f}:{finished}": now})
            pipe.zremrangebyscore(SAMPLES_KEY, "-inf", now - SAMPLE_HORIZON_S)
            pipe.zremrangebyrank(SAMPLES_KEY, 0, -MAX_SAMPLES - 1)
            pipe.expire(SAMPLES_KEY, int(SAMPLE_HORIZON_S))
            # The newest sample old enough to make a window.
            pipe.zrevrangebyscore(
                SAMPLES_KEY, now - THROUGHPUT_WINDOW_S, "-inf", start=0, num=1, withscores=True
            )
            *_, reference = pipe.execute()
    except Exception:
        return None
    if not reference:
        return None
    member, then = reference[0]
    earlier = int(member.decode().rsplit(":", 1)[1])
    if finished < earlier or now <= then:
        return None
    return round((finished - earlier) / (now - then), 3)


# Calls one I/O pool worker (`-P threads`, IO_CALL_THREADS call threads) is sized to hold.
IO_CALLS_PER_WORKER = 64


def io_pool(policy: Policy) -> dict[str, Any]:
    """The I/O pool's size: enough workers for the calls that may be in flight at once, which
    is the open calls but never more than the services' limits allow (more would only wait)."""
    views = [view for view in registry.cached_views() if view.urls and view.task_types]
    types = [t for view in views for t in view.task_types]
    open_calls = int(db.session.execute(text(_OPEN_CALLS), {"types": types}).scalar_one())
    total_limit = sum(inflight.current_limit(view) for view in views)
    in_flight: int | None = None
    try:
        with current_app.extensions["redis"].pipeline() as pipe:
            for view in views:
                pipe.zcount(inflight.slots_key(view.name), time.time(), "+inf")
            in_flight = sum(int(n) for n in pipe.execute())
    except Exception:
        pass  # Redis down: the tasks table still tells the backlog
    wanted = math.ceil(min(open_calls, total_limit) / IO_CALLS_PER_WORKER)
    desired = _clamp(wanted, max(policy.min_workers, 1), policy.max_workers) if open_calls else 0
    return {
        "open_calls": open_calls,
        "in_flight": in_flight,
        "total_limit": total_limit,
        "calls_per_worker": IO_CALLS_PER_WORKER,
        "desired_workers": max(desired, policy.min_workers),
    }


def report(
    policy: Policy, given_rate: float | None = None, current_workers: int | None = None
) -> dict[str, Any]:
    """The GET /scaling answer: per-tier loads and recommendations, and the pool's total."""
    loads = gather_loads()
    throughput = sample_throughput()
    rate, source = per_worker_rate(given_rate, throughput, current_workers)
    effective = Policy(
        target_drain_seconds=policy.target_drain_seconds,
        min_workers=policy.min_workers,
        max_workers=policy.max_workers,
        per_worker_rate=rate,
    )
    recommendation = recommend(loads, effective)
    return {
        "desired_workers": recommendation.desired_workers,
        "io_pool": io_pool(effective),
        "tiers": {
            tier: {**asdict(load), "desired_workers": recommendation.tiers[tier]}
            for tier, load in loads.items()
        },
        "per_worker_rate": round(rate, 3),
        "per_worker_rate_source": source,
        "throughput_per_second": throughput,
        "current_workers": current_workers,
        "target_drain_seconds": effective.target_drain_seconds,
        "min_workers": effective.min_workers,
        "max_workers": effective.max_workers,
        "timestamp": iso(utcnow()),
    }
