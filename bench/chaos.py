"""The chaos soak: `make chaos` (python -m bench.chaos [--tasks N] [--only NAME ...]).

Runs the fault scenarios of tests/faultstack.py at 50,000 tasks on a stack of its own (embedded
PostgreSQL and redis-server on free ports, real Celery workers, the reconciler every second), checks
the invariants of tests/invariants.py after each, and writes the table to docs/reliability.md.
It needs DATABASE_URL and REDIS_URL only for the execution record (`make chaos` provides them).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tests import faultstack
from tests.faultstack import FaultStack, ScenarioResult

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "reliability.md"


def scenarios(tasks: int) -> dict[str, Callable[[FaultStack], ScenarioResult]]:
    """Every scenario by name, sized for `tasks`."""
    return {
        "kill-worker": lambda s: faultstack.kill_whole_worker(s, tasks),
        "kill-pool": lambda s: faultstack.kill_pool_processes(s, tasks, kills=5),
        "flushall": lambda s: faultstack.flush_redis(s, tasks),
        "restart-redis": lambda s: faultstack.restart_redis(s, tasks, restarts=3),
        "restart-postgres": lambda s: faultstack.restart_postgres(s, tasks, down_seconds=5.0),
        # 8 clients each completing 5% of the tasks by hand: 20,000 requests at 50,000 tasks.
        "racing-complete": lambda s: faultstack.racing_completions(
            s, tasks, clients=8, share=0.05, seconds=0.0
        ),
        "capacity": lambda s: faultstack.concurrent_swarm_creation(s, creators=10, size=10_000),
        "idempotency": lambda s: faultstack.idempotent_mass_action_over_http(s, tasks),
        "poison": lambda s: faultstack.poison_task(s, tasks),
    }


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: list[ScenarioResult]) -> str:
    """The markdown table of docs/reliability.md."""
    lines = [
        "| scenario | tasks | recovery (s) | drained (s) | lost | double-counted "
        "| duplicate executions | 5xx (500 / 503) | invariants | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in results:
        dupes = f"{r.extra_executions} ({r.beyond_attempts} beyond attempts)"
        verdict = "hold" if not r.problems else "BROKEN: " + "; ".join(r.problems)
        lines.append(
            f"| {r.scenario} | {r.tasks:,} | {_seconds(r.recovered_s)} | {_seconds(r.drained_s)} "
            f"| {r.lost} | {r.double_counted} | {dupes} | {r.http_500} / {r.http_503} "
            f"| {verdict} | {r.notes} |"
        )
    return "\n".join(lines)


def write_report(results: list[ScenarioResult], tasks: int, elapsed: float) -> None:
    """Write docs/reliability.md."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    REPORT.write_text(
        f"""# Reliability: faults at {tasks:,} tasks

Written by `make chaos` (`bench/chaos.py`) on {when}: {os.cpu_count()} CPUs, Python
{platform.python_version()}, one Celery worker (concurrency 2), TASK_LEASE_SECONDS=5,
MAX_TASK_ATTEMPTS=3, the reconciler every second (production: Celery beat every 15 s), the
embedded PostgreSQL and a redis-server of its own so that both can be killed. Total
{elapsed / 60:.1f} min. The same scenarios run small in `tests/test_faults.py`.

Every mass-action uses the test task type `count` (tests/plugins/faults.py), which records each
execution in a Redis the faults never touch. After each scenario `tests/invariants.py` checks:
every task terminal; per bot, per swarm and in total, the counters equal the task rows
(completed, failed, cancelled); bot tallies equal the bots table; no task running or holding a
lease; no task with more attempts than MAX_TASK_ATTEMPTS; no task executed more often than it was
claimed.

- **recovery**: from the end of the fault to the first task finishing after it.
- **drained**: from the end of the fault until every task was terminal.
- **lost**: tasks not terminal at the end, plus finished tasks missing from the counters.
- **double-counted**: counted outcomes beyond the finished task rows.
- **duplicate executions**: extra runs of a task (legitimate: a worker died after claiming a chunk,
  and the task ran again on its next attempt); in brackets runs beyond the task's attempts (never
  legitimate).
- **5xx**: answers to the API clients running during the scenario; 503 is the designed answer
  while PostgreSQL is down (or from /health), any other 5xx is a bug.

{table(results)}
"""
    )


def _authenticate_as_admin(home: Path) -> None:
    """Start the stack with an admin key and let every `requests` call send it (through NETRC,
    as a user's ~/.netrc would), so the scenarios' clients are authenticated like real ones."""
    key = "orch_chaos_" + secrets.token_urlsafe(16)
    netrc = home / "netrc"
    netrc.write_text(
        "".join(f"machine {host} login {key} password -\n" for host in ("127.0.0.1", "localhost"))
    )
    netrc.chmod(0o600)
    os.environ.update(ADMIN_API_KEY=key, NETRC=str(netrc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--only", nargs="*", help="scenario names to run (default: all)")
    parser.add_argument("--no-report", action="store_true", help="print, do not write the doc")
    args = parser.parse_args(argv)
    record_url = os.environ.get("REDIS_URL")
    if not record_url:
        print("REDIS_URL is not set: run with `make chaos`", file=sys.stderr)
        return 2
    chosen = scenarios(args.tasks)
    names = args.only or list(chosen)
    home = Path(tempfile.mkdtemp(prefix="orchestrator-chaos-"))
    _authenticate_as_admin(home)
    # Room for the API clients' own bots next to a swarm of `tasks` bots; the capacity scenario
    # sets its own limit of 50,000.
    stack = FaultStack(home, record_url, max_bots=args.tasks + 10_000)
    results: list[ScenarioResult] = []
    started = time.monotonic()
    try:
        stack.start()
        # Thousands of request log lines per scenario would bury the results.
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        for name in names:
            t0 = time.monotonic()
            try:
                result = chosen[name](stack)
            finally:
                for worker in stack.workers:
                    worker.stop()
                stack.workers.clear()
            results.append(result)
            print(
                f"{name}: {time.monotonic() - t0:.0f} s, {result.by_status}, "
                f"recovery {_seconds(result.recovered_s)} s, drained {_seconds(result.drained_s)} s,"
                f" lost {result.lost}, double {result.double_counted}, "
                f"extra runs {result.extra_executions}, 500s {result.http_500}, "
                f"503s {result.http_503}, problems {result.problems}; {result.notes}",
                flush=True,
            )
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(table(results))
    if not args.no_report:
        write_report(results, args.tasks, elapsed)
        print(f"wrote {REPORT.relative_to(ROOT)}")
    return 0 if all(not r.problems and not r.http_500 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
