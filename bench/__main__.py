"""`python -m bench [--quick] [--runs N] [--only GROUP,...]`: start the stack, run the scenarios,
write the report.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import bigfile, fanout, load, online, report, scenarios
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


@dataclass(frozen=True)
class Plan:
    """The sizes of one benchmark run."""

    quick: bool
    sizes: list[int]
    read_seconds: float
    big_rows: int
    big_bots: int
    data_dir: Path

    @property
    def big(self) -> int:
        return self.sizes[-1]


def _swarms(b: Bench, plan: Plan) -> dict[str, Any]:
    return {"create": [scenarios.create_swarms(b, n, "[swarms]") for n in plan.sizes]}


def _single(b: Bench, plan: Plan) -> dict[str, Any]:
    return {"single_task": scenarios.single_task(b, "[single]")}


def _mass_action(b: Bench, plan: Plan) -> dict[str, Any]:
    out = {"mass_action": [scenarios.mass_action(b, n, "[mass-action]") for n in plan.sizes]}
    b.stack.start_baseline_worker()
    try:
        out["baseline"] = [scenarios.baseline(b, n, "[mass-action baseline]") for n in plan.sizes]
    finally:
        b.stack.stop("baseline")
    return out


def _priority(b: Bench, plan: Plan) -> dict[str, Any]:
    return {"priority": scenarios.priority(b, plan.big, "[priority]")}


def _reads(b: Bench, plan: Plan) -> dict[str, Any]:
    return {"reads": scenarios.reads(b, plan.big, plan.read_seconds, 32, "[reads]")}


def _memory(b: Bench, plan: Plan) -> dict[str, Any]:
    return {"memory": scenarios.worker_memory(b, plan.big, MEMORY_ROUNDS, "[memory]")}


def _progress(b: Bench, plan: Plan) -> dict[str, Any]:
    progress = scenarios.mass_action_progress(
        b, plan.big, plan.read_seconds / 2, PROGRESS_CONNECTIONS, "[progress]"
    )
    ids = [run["mass_action_id"] for run in progress["runs"]]
    return {"mass_action_progress": progress, "ndjson": scenarios.ndjson_export(b, ids, "[ndjson]")}


def _bigfile(b: Bench, plan: Plan) -> dict[str, Any]:
    return {
        "bigfile": bigfile.split_run(b, plan.data_dir, plan.big_rows, plan.big_bots, "[bigfile]")
    }


def _online(b: Bench, plan: Plan) -> dict[str, Any]:
    """Single assignments beside the plain version, reads beside a trivial page, the mixed
    minute (bench/online.py); `--quick` shortens every load."""
    seconds = plan.read_seconds
    out: dict[str, Any] = {"runs": b.runs, "load_before": _load_average()}
    plain_url = b.stack.start_plain()
    try:
        out["single"] = online.single_assignments(b, plain_url, seconds, "[online]")
    finally:
        b.stack.stop("plain-api")
        b.stack.stop("plain-worker")
    reads_swarm = b.api.call(
        "POST", "/swarms", {"name": "bench-online-reads", "count": 50_000, "tier": "standard",
                            "capabilities": scenarios.SWARM_CAPABILITIES}, expect=201,
    )  # fmt: skip
    out["reads"] = online.reads(b, reads_swarm, seconds, "[online]")
    out["mixed"] = online.mixed_minute(
        b, out["single"].pop("assign_swarm_bot_ids"), reads_swarm,
        15.0 if plan.quick else 60.0, "[online]",
    )  # fmt: skip
    out["load_after"] = _load_average()
    return {"online": out}


def _load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _fanout(b: Bench, plan: Plan) -> dict[str, Any]:
    out = fanout.run_all(b, plan.big, "[fanout]")
    say(fanout.summary(out, os.getloadavg()))
    return {"fanout": out}


def _isolation(b: Bench, plan: Plan) -> dict[str, Any]:
    out = fanout.isolation(b, plan.big, "[isolation]")
    say(fanout.isolation_summary(out))
    return {"isolation": out}


def _workflows(b: Bench, plan: Plan) -> dict[str, Any]:
    out = fanout.workflows(b, "[workflows]")
    say(fanout.workflows_summary(out))
    return {"workflows": out}


# Scenario groups in the order a full run takes them; `--only` picks some. Each returns the keys
# it adds to the results.
GROUPS: dict[str, Callable[[Bench, Plan], dict[str, Any]]] = {
    "swarms": _swarms,
    "single": _single,
    "mass-action": _mass_action,
    "priority": _priority,
    "reads": _reads,
    "memory": _memory,
    "progress": _progress,
    "bigfile": _bigfile,
    "online": _online,
    # Calls to AI services through the I/O pool (bench/fanout.py).
    "fanout": _fanout,
    "isolation": _isolation,
    "workflows": _workflows,
}


def _groups(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in GROUPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown group(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(GROUPS)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its report."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5,000 bots only (under 2 minutes)")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument(
        "--only",
        type=_groups,
        default=list(GROUPS),
        metavar="GROUP[,GROUP]",
        help=f"run only these scenario groups ({', '.join(GROUPS)}); the others keep their last"
        " figures in the report",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    for name in ("DATABASE_URL", "REDIS_URL"):
        if not os.environ.get(name):
            parser.error(f"{name} is not set; run it as `make bench`")

    began = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    log_dir = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    # The generated big file lives (and goes) with the logs.
    data_dir = log_dir / "data"
    data_dir.mkdir()
    plan = Plan(
        quick=args.quick,
        sizes=[5_000] if args.quick else [5_000, 50_000],
        read_seconds=3.0 if args.quick else 10.0,
        # The big-file split: the size, or a tenth of it with --quick.
        big_rows=100_000 if args.quick else 1_000_000,
        big_bots=1_000 if args.quick else 10_000,
        data_dir=data_dir,
    )
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
        # The fake AI service of the fan-outs listens on loopback.
        URL_ALLOWLIST="127.0.0.1",
    )
    results = report.earlier_results(args.quick) if args.only != list(GROUPS) else {}
    results.update(quick=args.quick, runs=args.runs, sizes=plan.sizes,
                   l20_spacing_seconds=scenarios.L20_SPACING_SECONDS,
                   single_task_samples=scenarios.SINGLE_TASK_SAMPLES, memory_rounds=MEMORY_ROUNDS,
                   progress_connections=PROGRESS_CONNECTIONS)  # fmt: skip
    measured = results.setdefault("measured", {})
    stack = Stack(env=env, log_dir=log_dir)
    try:
        say(f"Starting the stack (logs in {log_dir})")
        stack.migrate()
        stack.start_api()
        stack.start_worker()
        b = Bench(stack=stack, api=Api(stack.base_url), db=database(), redis=broker(),
                  runs=args.runs)  # fmt: skip
        results["machine"] = report.machine(b.db, b.redis, load.generator())
        for number, name in enumerate(args.only, 1):
            say(f"[{number}/{len(args.only)}] {name}")
            b.wait_idle()
            load_average = os.getloadavg()[0]
            group_began = time.monotonic()
            results.update(GROUPS[name](b, plan))
            measured[name] = {
                "at": _now(),
                "seconds": round(time.monotonic() - group_began, 1),
                "load_average_at_start": round(load_average, 2),
            }
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
    results["finished_at"] = _now()
    table = report.rows(results)
    results["table"] = [row.__dict__ for row in table]
    say(f"Raw results: {report.write_json(results).relative_to(report.ROOT)}")
    if args.quick:
        say("Quick mode: docs/performance.md left as it is")
    else:
        say(f"Report: {report.write_doc(results, table).relative_to(report.ROOT)}")
        if "online" in args.only:
            online.write_section(results["online"], results["machine"], results["finished_at"])
    say(f"Finished in {results['elapsed_seconds']:.0f} s")
    print(report.render_table(table))
    for line in report.misses(table):
        print(line)
    return 0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


if __name__ == "__main__":
    sys.exit(main())
