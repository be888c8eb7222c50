"""`python -m bench.rate_limits`: what a rate-limit strategy costs, side by side in one run.

The moving window (the strategy used before) is the baseline. For each strategy, one busy caller
under the default budget (RATE_LIMIT, 1000 per second):
- the time of one check in Redis (`limits` hit, 5,000 calls in a tight loop);
- the Redis memory that caller's budget holds afterwards (MEMORY USAGE of its keys);
- the time of a whole request through the app (`GET /task-types`, Flask test client, 2,000 calls),
  rate-limit headers included.
Each figure is the median of `--runs` runs (default 3). Needs DATABASE_URL and REDIS_URL naming
an empty database and Redis DB: `python -m deploy.devstack test -- python -m bench.rate_limits`.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import redis
from flask_migrate import upgrade
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import STRATEGIES

import app.api.limits as limits_module
from app import create_app
from app.config import Settings
from app.extensions import db

STRATEGY_NAMES = ("moving-window", "sliding-window-counter", "fixed-window")
HITS = 5_000
REQUESTS = 2_000


def check_cost(redis_url: str, strategy: str) -> tuple[float, int]:
    """Median microseconds per hit, and bytes of Redis the caller's budget holds afterwards."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    limiter = STRATEGIES[strategy](storage_from_string(redis_url))
    item = parse(Settings.from_env({}).rate_limit)
    times = []
    for _ in range(HITS):
        started = time.perf_counter()
        limiter.hit(item, "key:1", "global")
        times.append(time.perf_counter() - started)
    memory = sum(client.memory_usage(key) or 0 for key in client.scan_iter("LIMITS*"))
    client.flushdb()
    return statistics.median(times) * 1e6, memory


def request_cost(strategy: str) -> float:
    """Median milliseconds per `GET /task-types` through the app with this strategy."""
    limits_module.STRATEGY = strategy
    flask_app = create_app(Settings.from_env({**os.environ, "ADMIN_API_KEY": "bench-key"}))
    # One log line per request would be most of what is measured (and printed).
    logging.getLogger("app.requests").setLevel(logging.WARNING)
    client = flask_app.test_client()
    headers = {"Authorization": "Bearer bench-key"}
    times = []
    with flask_app.app_context():
        for _ in range(REQUESTS):
            started = time.perf_counter()
            answer = client.get("/task-types", headers=headers)
            times.append(time.perf_counter() - started)
            # Past the budget the answer is 429; only the cost of checking is measured.
            assert answer.status_code in (200, 429), answer.status_code
        db.engine.dispose()
    flask_app.extensions["redis"].flushdb()
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    """Measure every strategy `--runs` times and print a Markdown table of medians."""
    parser = argparse.ArgumentParser(prog="python -m bench.rate_limits", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    redis_url = os.environ["REDIS_URL"]
    migrated = create_app(Settings.from_env())
    with migrated.app_context():
        upgrade()
        db.engine.dispose()

    rows: dict[str, list[tuple[float, int, float]]] = {name: [] for name in STRATEGY_NAMES}
    for _ in range(args.runs):
        for name in STRATEGY_NAMES:  # interleaved, so load on the machine hits each alike
            hit_us, memory = check_cost(redis_url, name)
            rows[name].append((hit_us, memory, request_cost(name)))

    baseline = [statistics.median(column) for column in zip(*rows["moving-window"], strict=True)]
    print(f"median of {args.runs} runs; budget {Settings.from_env({}).rate_limit!r}")
    print(
        "| strategy | one check | ÷ moving window | Redis bytes per caller | request | ÷ moving window |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in STRATEGY_NAMES:
        hit_us, memory, request_ms = (
            statistics.median(column) for column in zip(*rows[name], strict=True)
        )
        print(
            f"| {name} | {hit_us:.0f} µs | {hit_us / baseline[0]:.2f}× | {memory:,.0f}"
            f" | {request_ms:.2f} ms | {request_ms / baseline[2]:.2f}× |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
