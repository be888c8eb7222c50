"""`python -m bench [--quick] [--runs N]`: start the stack, run the scenarios, write the report.

Needs DATABASE_URL and REDIS_URL naming an empty database and Redis DB (`make bench` runs it under
`python -m deploy.devstack test --`, which provides both and removes them afterwards).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import bigfile, fanout, load, report, scenarios
from bench.client import API_KEY, Api, broker, database
from bench.scenarios import Bench, say
from bench.stack import Stack

MEMORY_ROUNDS = 10
# Clients polling one mass-action's progress at once (closed loop, no pause between requests).
PROGRESS_CONNECTIONS = 4


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop what we started, then leave."""


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its report."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5,000 bots only (under 2 minutes)")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument(
        "--only",
        choices=["fanout", "isolation", "workflows"],
        help="run only these scenarios (fanout: calls to an AI service against plain Celery; "
        "isolation: echo beside a fan-out, and an L20 call behind a standard backlog of calls)",
    )
    parser.add_argument(
        "--fanout-big",
        type=int,
        default=50_000,
        help="tasks of the CPU-bound fan-out (20 ms, limit 256); 0 skips it (default 50,000)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    for name in ("DATABASE_URL", "REDIS_URL"):
        if not os.environ.get(name):
            parser.error(f"{name} is not set; run it as `make bench`")

    sizes = [5_000] if args.quick else [5_000, 50_000]
    read_seconds = 3.0 if args.quick else 10.0
    big = sizes[-1]
    steps = 10
    # The big-file split: the size, or a tenth of it with --quick.
    big_rows, big_bots = (100_000, 1_000) if args.quick else (1_000_000, 10_000)
    began = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    log_dir = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    # The generated big file lives (and goes) with the logs.
    data_dir = log_dir / "data"
    data_dir.mkdir()
    # Requests authenticate as a user's would (a key per request); the per-key limit is raised
    # far above what the load reaches, so its check is measured but never refuses.
    env = dict(
        os.environ,
        MAX_BOTS="1000000",
        PYTHONUNBUFFERED="1",
        ADMIN_API_KEY=API_KEY,
        RATE_LIMIT="1000000 per second",
        RATE_LIMIT_HEAVY="100000 per minute",
        DATA_DIR=str(data_dir),
        # The fan-outs' fake AI service listens on loopback.
        URL_ALLOWLIST="127.0.0.1",
    )
    stack = Stack(env=env, log_dir=log_dir)
    try:
        say(f"Starting the stack (logs in {log_dir})")
        stack.migrate()
        stack.start_api()
        stack.start_worker()
        b = Bench(stack=stack, api=Api(stack.base_url), db=database(), redis=broker(),
                  runs=args.runs)  # fmt: skip
        results: dict = {"quick": args.quick, "runs": args.runs, "sizes": sizes,
                         "l20_spacing_seconds": scenarios.L20_SPACING_SECONDS,
                         "single_task_samples": scenarios.SINGLE_TASK_SAMPLES,
                         "memory_rounds": MEMORY_ROUNDS,
                         "progress_connections": PROGRESS_CONNECTIONS}  # fmt: skip
        results["machine"] = report.machine(b.db, b.redis, load.generator())
        if args.only == "fanout":
            results["fanout"] = fanout.run_all(b, args.fanout_big, "[fanout]")
            results["load_average"] = os.getloadavg()
            say(f"Raw results: {report.write_json(results).relative_to(report.ROOT)}")
            print(fanout.summary(results["fanout"], results["load_average"]))
            return 0
        if args.only == "workflows":
            results["workflows"] = fanout.workflows(b, "[workflows]")
            results["load_average"] = os.getloadavg()
            say(f"Raw results: {report.write_json(results).relative_to(report.ROOT)}")
            print(f"load average at the end: {results['load_average']}")
            print(fanout.workflows_summary(results["workflows"]))
            return 0
        if args.only == "isolation":
            results["isolation"] = fanout.isolation(b, args.fanout_big or 50_000, "[isolation]")
            results["load_average"] = os.getloadavg()
            say(f"Raw results: {report.write_json(results).relative_to(report.ROOT)}")
            print(f"load average at the end: {results['load_average']}")
            print(fanout.isolation_summary(results["isolation"]))
            return 0

        results["create"] = [scenarios.create_swarms(b, n, f"[1/{steps}]") for n in sizes]
        results["single_task"] = scenarios.single_task(b, f"[2/{steps}]")
        results["mass_action"] = [scenarios.mass_action(b, n, f"[3/{steps}]") for n in sizes]
        stack.start_baseline_worker()
        results["baseline"] = [scenarios.baseline(b, n, f"[4/{steps}]") for n in sizes]
        stack.stop("baseline")
        results["priority"] = scenarios.priority(b, big, f"[5/{steps}]")
        results["reads"] = scenarios.reads(b, big, read_seconds, 32, f"[6/{steps}]")
        results["memory"] = scenarios.worker_memory(b, big, MEMORY_ROUNDS, f"[7/{steps}]")
        results["mass_action_progress"] = scenarios.mass_action_progress(
            b, big, read_seconds / 2, PROGRESS_CONNECTIONS, f"[8/{steps}]"
        )
        results["ndjson"] = scenarios.ndjson_export(
            b,
            [run["mass_action_id"] for run in results["mass_action_progress"]["runs"]],
            f"[9/{steps}]",
        )
        results["bigfile"] = bigfile.split_run(b, data_dir, big_rows, big_bots, f"[10/{steps}]")
    except Interrupted as stopped:
        say(f"{stopped} received; stopping the stack")
        return 130
    except Exception:
        for name, process in stack.processes.items():
            say(f"--- last lines of {name} ---\n" + "\n".join(process.log().splitlines()[-30:]))
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop_all()
        say("Stopped the stack")
    shutil.rmtree(log_dir, ignore_errors=True)

    results["elapsed_seconds"] = time.monotonic() - began
    results["finished_at"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = report.rows(results)
    results["table"] = [row.__dict__ for row in table]
    say(f"Raw results: {report.write_json(results).relative_to(report.ROOT)}")
    if args.quick:
        say("Quick mode: docs/performance.md left as it is")
    else:
        say(f"Report: {report.write_doc(results, table).relative_to(report.ROOT)}")
    say(f"Finished in {results['elapsed_seconds']:.0f} s")
    print(report.render_table(table))
    for line in report.misses(table):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
