"""Medians, goals and the two outputs: bench/results/*.json and docs/performance.md."""

from __future__ import annotations

import json
import platform
import statistics
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
RESULTS = ROOT / "bench" / "results"
# Everything below this line in docs/performance.md is written by hand and kept on every run.
NOTES_MARKER = (
    "<!-- Hand-written notes below: bench/report.py keeps everything after this line. -->"
)
SMALL, LARGE = 5_000, 50_000


@dataclass
class Row:
    """One line of the table."""

    scenario: str
    n: str
    value: float | None
    unit: str
    goal: str = "—"
    met: bool | None = None

    def shown(self) -> str:
        if self.value is None:
            return "—"
        if self.unit == "s":
            return f"{self.value:.3f} s" if self.value < 10 else f"{self.value:.1f} s"
        if self.unit == "ms":
            return f"{self.value:.1f} ms"
        if self.unit == "x":
            return f"{self.value:.2f}×" if self.value < 10 else f"{self.value:.1f}×"
        if self.unit == "MB":
            return f"{self.value:.0f} MB"
        if self.unit == "load":
            return f"{self.value:.1f}"
        if self.unit == "%":
            return f"{self.value:+.1f} %"
        if self.unit == "req/s":
            return f"{self.value:,.0f} req/s"
        return f"{self.value:g} {self.unit}"

    def verdict(self) -> str:
        return {True: "yes", False: "**no**", None: ""}[self.met]


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine(db, redis, generator: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    with db.cursor() as cur:
        cur.execute("SHOW server_version")
        pg = cur.fetchone()[0]
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions = {}
    for package in ("Flask", "flask-smorest", "SQLAlchemy", "psycopg2-binary", "celery", "kombu",
                    "redis", "gunicorn"):  # fmt: skip
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    import os

    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": memory_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg,
        "redis": redis.info("server")["redis_version"],
        "load_generator": generator,
        "packages": versions,
    }


def _goal(value: float | None, limit: float, at_most: bool, applies: bool) -> bool | None:
    if value is None or not applies:
        return None
    return value <= limit if at_most else value >= limit


def rows(results: dict[str, Any]) -> list[Row]:
    """The table, from the raw results: a part for each scenario group that has figures."""
    sizes = results["sizes"]
    full = sizes[-1] == LARGE and not results["quick"]
    out: list[Row] = []
    for needs, part in _PARTS:
        if all(key in results for key in needs):
            out.extend(part(results, full))
    return out


def _create_rows(results: dict[str, Any], full: bool) -> list[Row]:
    out: list[Row] = []
    create = {c["n"]: median(c["seconds"]) for c in results["create"]}
    for n in sorted(create):
        goal = n == LARGE
        out.append(Row("Create swarm, all ids answered", f"{n:,}", create[n], "s",
                       "≤ 1.0 s" if goal else "—", _goal(create[n], 1.0, True, goal)))  # fmt: skip
    if SMALL in create and LARGE in create:
        ratio = create[LARGE] / create[SMALL]
        out.append(Row("Creation cost ratio 50,000 ÷ 5,000", "", ratio, "x", "≤ 12",
                       _goal(ratio, 12, True, True)))  # fmt: skip
    big_create = max(results["create"], key=lambda c: c["n"])
    peak = max(big_create["api_worker_peak_rss_mb"])
    out.append(Row("gunicorn worker peak RSS while creating a swarm", f"{big_create['n']:,}", peak,
                   "MB", "< 250 MB", _goal(peak, 250, True, full)))  # fmt: skip
    return out


def _echo_rows(results: dict[str, Any], full: bool) -> list[Row]:
    out: list[Row] = []
    mass = {m["n"]: m for m in results["mass_action"]}
    base = {m["n"]: median(m["completed_seconds"]) for m in results["baseline"]}
    accepted = {n: median(m["accepted_seconds"]) for n, m in mass.items()}
    done = {n: median(m["completed_seconds"]) for n, m in mass.items()}
    for n in sorted(mass):
        goal = n == LARGE
        out.append(Row("Mass-action (echo): 202 received", f"{n:,}", accepted[n], "s",
                       "≤ 0.5 s" if goal else "—", _goal(accepted[n], 0.5, True, goal)))  # fmt: skip
        out.append(Row("Mass-action (echo): all executed and counted", f"{n:,}", done[n], "s",
                       "≤ 2.0 s" if goal else "—", _goal(done[n], 2.0, True, goal)))  # fmt: skip
        out.append(Row("Plain-Celery baseline: N apply_async no-ops, all run", f"{n:,}",
                       base[n], "s"))  # fmt: skip
        out.append(Row("Ours ÷ baseline (end-to-end time ratio)", f"{n:,}", done[n] / base[n],
                       "x", "≤ 0.067 (1/15)" if goal else "—",
                       _goal(done[n] / base[n], 1 / 15, True, goal)))  # fmt: skip
        out.append(Row("Speed-up over baseline (baseline ÷ ours)", f"{n:,}", base[n] / done[n],
                       "x", "≥ 15×" if goal else "—",
                       _goal(base[n] / done[n], 15, False, goal)))  # fmt: skip
    if SMALL in mass and LARGE in mass:
        for label, table in (("202", accepted), ("end-to-end", done)):
            ratio = table[LARGE] / table[SMALL]
            out.append(Row(f"Mass-action cost ratio 50,000 ÷ 5,000 ({label})", "", ratio, "x",
                           "≤ 12", _goal(ratio, 12, True, True)))  # fmt: skip
    return out


def _priority_rows(results: dict[str, Any], full: bool) -> list[Row]:
    prio = results["priority"]
    p50 = median([r["p50_seconds"] for r in prio["runs"]])
    p99 = median([r["p99_seconds"] for r in prio["runs"]])
    n = f"{prio['n']:,} standard queued"
    return [
        Row("L20 task: time to start, p50", n, p50, "s"),
        Row("L20 task: time to start, p99", n, p99, "s", "≤ 1.0 s", _goal(p99, 1.0, True, full)),
    ]


def _read_rows(results: dict[str, Any], full: bool) -> list[Row]:
    out: list[Row] = []
    rd = results["reads"]
    trivial = median([r["rps"] for r in rd["endpoints"]["GET /docs (trivial)"]])
    n = f"{rd['n']:,} bots"
    for name, runs in rd["endpoints"].items():
        rps = median([r["rps"] for r in runs])
        is_trivial = "trivial" in name
        out.append(Row(f"{name}: throughput", n, rps, "req/s"))
        out.append(Row(f"{name}: p50", n, median([r["p50_ms"] for r in runs]), "ms"))
        p99 = median([r["p99_ms"] for r in runs])
        out.append(Row(f"{name}: p99", n, p99, "ms", "—" if is_trivial else "≤ 25 ms",
                       None if is_trivial else _goal(p99, 25, True, full)))  # fmt: skip
        if not is_trivial:
            out.append(Row(f"{name}: throughput ÷ trivial endpoint's", n, rps / trivial, "x",
                           "≥ 0.5", _goal(rps / trivial, 0.5, False, full)))  # fmt: skip
    return out


def _single_rows(results: dict[str, Any], full: bool) -> list[Row]:
    single = results["single_task"]["runs"]
    return [
        Row("Single task at idle (echo), p50", "1",
            median([r["p50_seconds"] * 1000 for r in single]), "ms"),
        Row("Single task at idle (echo), p99", "1",
            median([r["p99_seconds"] * 1000 for r in single]), "ms"),
    ]  # fmt: skip


def _memory_rows(results: dict[str, Any], full: bool) -> list[Row]:
    mem = results["memory"]
    tasks = f"{mem['tasks']:,} tasks"
    return [
        Row("Celery worker RSS (main + pool) before", tasks, mem["before_mb"], "MB"),
        Row("Celery worker RSS (main + pool) after", tasks, mem["after_mb"], "MB"),
        Row("Celery worker RSS growth", tasks, mem["growth_percent"], "%", "≤ +10 %",
            _goal(mem["growth_percent"], 10, True, full)),
    ]  # fmt: skip


def _mass_action_rows(results: dict[str, Any], full: bool) -> list[Row]:
    """GET /mass-actions/{id} while one runs, and the NDJSON export of its results."""
    progress, export = results["mass_action_progress"], results["ndjson"]
    runs = progress["runs"]
    n = f"{progress['n']:,} tasks, {progress['connections']} conn."
    during_p99 = median([r["during"]["p99_ms"] for r in runs])
    trivial_p99 = median([r["trivial_during"]["p99_ms"] for r in runs])
    out = [
        Row("GET /mass-actions/{id} while it runs: p50", n,
            median([r["during"]["p50_ms"] for r in runs]), "ms"),
        Row("GET /mass-actions/{id} while it runs: p99", n, during_p99, "ms", "≤ 25 ms",
            _goal(during_p99, 25, True, full)),
        Row("GET /mass-actions/{id} while it runs: throughput", n,
            median([r["during"]["rps"] for r in runs]), "req/s"),
        Row("Mass-action progress when the read load stopped", n,
            median([r["percent_after_reads"] for r in runs]), "% ended"),
        Row("Trivial endpoint (GET /docs) while it runs: p99 (baseline)", n, trivial_p99, "ms"),
        Row("GET /mass-actions/{id} p99 ÷ trivial endpoint's, while it runs", n,
            during_p99 / trivial_p99 if trivial_p99 else None, "x"),
        Row("GET /mass-actions/{id} at idle (ended): p99", n,
            median([r["idle"]["p99_ms"] for r in runs]), "ms"),
    ]  # fmt: skip
    lines = f"{export['runs'][0]['lines']:,} results"
    seconds = median([r["seconds"] for r in export["runs"]])
    paged = median([r["paged_seconds"] for r in export["runs"]])
    growth = median([r["api_rss_growth_mb"] for r in export["runs"]])
    out += [
        Row("Results as NDJSON, whole export", lines, seconds, "s", "≤ 2.0 s",
            _goal(seconds, 2.0, True, full)),
        Row("Results paged as JSON, limit=1000 (baseline)", lines, paged, "s"),
        Row("NDJSON export ÷ paging", lines, seconds / paged if paged else None, "x"),
        Row("gunicorn worker RSS growth during the NDJSON export", lines, growth, "MB",
            "≤ 50 MB", _goal(growth, 50, True, full)),
    ]  # fmt: skip
    return out


def _bigfile_rows(results: dict[str, Any], full: bool) -> list[Row]:
    return bigfile_rows(results["bigfile"], full)


def bigfile_rows(big: dict[str, Any], full: bool) -> list[Row]:
    """The big-file split beside one task over the same file in one process."""
    n = f"{big['rows']:,} rows / {big['bots']:,} bots"
    cold, warm = median(big["cold"]["seconds"]), median(big["warm"]["seconds"])
    single = median(big["single"]["seconds"])
    split_peak = max(big["cold"]["peak_worker_rss_mb"] + big["warm"]["peak_worker_rss_mb"])
    return [
        Row("Split run end to end, file seen for the first time (index built)", n, cold, "s",
            "≤ 15 s", _goal(cold, 15, True, full)),
        Row("Split run end to end, index already built", n, warm, "s", "≤ 15 s",
            _goal(warm, 15, True, full)),
        Row("One task over the whole file, one process", f"{big['rows']:,} rows", single, "s"),
        Row("Split run ÷ one task (index built)", "", cold / single, "x"),
        Row("Split run ÷ one task (index kept)", "", warm / single, "x"),
        Row("Worker CPU time, split run (index built)", n,
            median(big["cold"]["worker_cpu_seconds"]), "s"),
        Row("Worker CPU time, split run (index kept)", n,
            median(big["warm"]["worker_cpu_seconds"]), "s"),
        Row("Worker CPU time, one task", f"{big['rows']:,} rows",
            median(big["single"]["worker_cpu_seconds"]), "s"),
        *_database_rows(big, n),
        Row("Load average (1 min) at the start of a run, median", "",
            median(big["cold"]["load_average_at_start"] + big["warm"]["load_average_at_start"]
                   + big["single"]["load_average_at_start"]), "load"),
        Row("Peak RSS of a worker pool process, split runs", n, split_peak, "MB", "< 300 MB",
            _goal(split_peak, 300, True, full)),
        Row("Peak RSS of the worker pool process, one task", f"{big['rows']:,} rows",
            max(big["single"]["peak_worker_rss_mb"]), "MB"),
    ]  # fmt: skip


def _database_rows(big: dict[str, Any], n: str) -> list[Row]:
    """PostgreSQL backends' CPU time, when the benchmark could read it."""
    if not all(big[kind].get("database_cpu_seconds") for kind in ("cold", "warm", "single")):
        return []
    return [
        Row("PostgreSQL CPU time, split run (index kept)", n,
            median(big["warm"]["database_cpu_seconds"]), "s"),
        Row("PostgreSQL CPU time, one task", f"{big['rows']:,} rows",
            median(big["single"]["database_cpu_seconds"]), "s"),
    ]  # fmt: skip


def _fanout_rows(results: dict[str, Any], full: bool) -> list[Row]:
    """Calls through the I/O pool beside plain Celery's thread pool, one message per call."""
    fan = results["fanout"]
    out: list[Row] = []
    for key in ("small", "big"):
        if key not in fan:
            continue
        ours, plain = fan[key], fan[key + "_baseline"]
        n = f"{ours['n']:,} × {ours['delay_ms']:.0f} ms, limit {ours['limit']}"
        t, p = median(ours["seconds"]), median(plain["seconds"])
        ideal = -(-ours["n"] // ours["limit"]) * ours["delay_ms"] / 1000
        peak = max(ours["peak_in_flight"])
        out += [
            Row("Fan-out through the I/O pool, end to end", n, t, "s",
                "≤ 4.0 s" if key == "small" else "—",
                _goal(t, 4.0, True, full) if key == "small" else None),
            Row(f"Plain Celery -P threads -c {plain['threads']}, one message per call", n, p, "s"),
            Row("Fan-out calls/s ÷ plain Celery's", n, p / t, "x",
                "≥ 1×" if key == "small" else "≥ 2×",
                _goal(p / t, 1.0 if key == "small" else 2.0, False, full)),
            Row("Ideal ÷ actual (ceil(N ÷ limit) × latency)", n, ideal / t, "x",
                "≥ 0.8" if key == "small" else "—",
                _goal(ideal / t, 0.8, False, full) if key == "small" else None),
            Row("Peak calls in flight at the service", n, peak, "calls",
                f"≤ {ours['limit']}", _goal(peak, ours["limit"], True, True)),
        ]  # fmt: skip
        if key == "big":
            rss = ours["io_rss_kb"]
            growth = (rss[-1] - rss[0]) / rss[0] * 100
            out.append(Row("I/O pool RSS growth over the runs", n, growth, "%", "≤ +10 %",
                           _goal(growth, 10, True, full)))  # fmt: skip
    return out


def _isolation_rows(results: dict[str, Any], full: bool) -> list[Row]:
    iso = results["isolation"]
    alone, beside = median(iso["echo_alone"]), median(iso["echo_beside_fanout"])
    l20 = median(iso["l20_start"])
    return [
        Row("Echo mass-action alone", "50,000", alone, "s"),
        Row("Echo mass-action beside a 2,000-call fan-out", "50,000", beside, "s"),
        Row("Beside ÷ alone", "50,000", beside / alone, "x", "≤ 2×",
            _goal(beside / alone, 2.0, True, full)),
        Row("The 2,000-call fan-out, beside the echo run", "2,000 × 100 ms",
            median(iso["fanout_beside"]), "s"),
        Row("L20 call: time to start behind a standard call backlog", "50,000 calls", l20, "s",
            "≤ 1.0 s", _goal(l20, 1.0, True, full)),
    ]  # fmt: skip


def _workflow_rows(results: dict[str, Any], full: bool) -> list[Row]:
    from bench.scenarios import percentile

    wf = results["workflows"]
    two = [x * 1000 for x in wf["two_step"]]
    per_step = [x * 1000 / 3 for x in wf["chain_three"]]
    n = f"{len(two)} workflows"
    return [
        Row("The spec's two-step /orchestrate, end to end: p50", n, percentile(two, 50), "ms",
            "≤ 50 ms", _goal(percentile(two, 50), 50, True, full)),
        Row("Three-step $ref chain, per step: p50", n, percentile(per_step, 50), "ms",
            "≤ 30 ms", _goal(percentile(per_step, 50), 30, True, full)),
    ]  # fmt: skip


# The table's parts in order, each with the result keys it needs (absent until its group ran).
_PARTS: list[tuple[tuple[str, ...], Callable[[dict[str, Any], bool], list[Row]]]] = [
    (("create",), _create_rows),
    (("mass_action", "baseline"), _echo_rows),
    (("priority",), _priority_rows),
    (("reads",), _read_rows),
    (("single_task",), _single_rows),
    (("memory",), _memory_rows),
    (("mass_action_progress", "ndjson"), _mass_action_rows),
    (("bigfile",), _bigfile_rows),
    (("fanout",), _fanout_rows),
    (("isolation",), _isolation_rows),
    (("workflows",), _workflow_rows),
]


def misses(table: list[Row]) -> list[str]:
    """One line per missed goal: by how much."""
    lines = []
    for row in table:
        if row.met is not False or row.value is None:
            continue
        limit = float(row.goal.split()[1].replace("×", "").replace("(1/15)", "").strip("+"))
        if row.goal.startswith("≥"):
            how = f"{row.value / limit:.0%} of the goal"
        else:
            how = f"{row.value / limit:.2f}× the limit"
        lines.append(
            f"- {row.scenario} ({row.n or 'ratio'}): {row.shown()} against {row.goal}: {how}."
        )
    return lines


def _results_path(quick: bool) -> Path:
    return RESULTS / ("quick.json" if quick else "latest.json")


def earlier_results(quick: bool) -> dict[str, Any]:
    """The last run's results, for a run of some groups only (`--only`) to add to."""
    path = _results_path(quick)
    if not path.exists():
        return {}
    results = json.loads(path.read_text())
    results.pop("table", None)
    return results


def write_json(results: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = _results_path(results["quick"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)
    return path


def render_table(table: list[Row]) -> str:
    lines = ["| scenario | N | median | goal | met? |", "|---|---:|---:|---|---|"]
    for row in table:
        lines.append(f"| {row.scenario} | {row.n} | {row.shown()} | {row.goal} | {row.verdict()} |")
    return "\n".join(lines)


def write_doc(results: dict[str, Any], table: list[Row]) -> Path:
    """docs/performance.md: the generated part, then the hand-written notes kept from before."""
    notes = ""
    if DOC.exists() and NOTES_MARKER in DOC.read_text():
        notes = DOC.read_text().split(NOTES_MARKER, 1)[1].lstrip("\n")
    m = results["machine"]
    missed = misses(table)
    text = f"""# Performance

Generated by `make bench` (`python -m bench`); raw samples in `bench/results/latest.json`. Every
figure is the **median of {results["runs"]} runs**. `make bench BENCH_ARGS="--only GROUP"` measures
some scenario groups again and keeps the others' last figures; each group says when it ran:

{_measured_table(results)}

**Machine:** {m["cores"]} cores ({m["cpu"]}), {m["memory_gb"]} GB RAM, Linux {m["kernel"]};
Python {m["python"]}, PostgreSQL {m["postgresql"]}, Redis {m["redis"]},
{", ".join(f"{k} {v}" for k, v in m["packages"].items())}. Load generator: {m["load_generator"]}.

**Stack:** gunicorn with 2 sync workers (`gunicorn.conf.py`, access log on), one
`celery -A workers worker -Q L20,advanced,standard --concurrency 2 --loglevel INFO`, PostgreSQL and
Redis on loopback, exactly as `make run` starts them; the benchmark and the load generator run on
the same {m["cores"]} cores.

## Results

{render_table(table)}

{"All goals met." if not missed else "Goals missed:" + chr(10) + chr(10) + chr(10).join(missed)}

## Method

{_method(results)}

The stack gets `MAX_BOTS=1000000`, because every run creates a new swarm and retired bots keep
their rows; everything else is the service's default configuration.

{NOTES_MARKER}

{notes}"""
    DOC.write_text(text.rstrip() + "\n")
    return DOC


def _measured_table(results: dict[str, Any]) -> str:
    measured = results.get("measured", {})
    lines = ["| scenario group | measured | took | load average (1 min) at its start |",
             "|---|---|---:|---:|"]  # fmt: skip
    for name, when in sorted(measured.items(), key=lambda item: item[1]["at"]):
        took = "—" if when.get("seconds") is None else f"{when['seconds']:.0f} s"
        load = when.get("load_average_at_start")
        lines.append(
            f"| {name} | {when['at']} | {took} | {'—' if load is None else f'{load:.2f}'} |"
        )
    return "\n".join(lines)


def _method(results: dict[str, Any]) -> str:
    """How each scenario that has figures was measured, numbered in table order."""
    m = results["machine"]
    paragraphs = []
    if "create" in results:
        paragraphs.append(
            "**Swarm creation**: `POST /swarms` with `count` N (tier standard), timed until the"
            " whole answer with N ids has been read; a new swarm each run. A thread samples the"
            " VmRSS of both gunicorn workers every 5 ms during the request (and reads VmHWM after),"
            " for the peak-RSS row."
        )
    if "mass_action" in results:
        paragraphs.append(
            '**Mass-action**: `POST /swarms/{id}/tasks` `{"type": "echo"}` on a fresh N-bot'
            " swarm; time to the 202, then `GET /swarms/{id}` every 20 ms until"
            " `total_tasks_completed` has grown by N."
        )
        paragraphs.append(
            "**Baseline**: `bench/baseline.py` (not part of the service): N `apply_async` calls of"
            " the no-op task `bench.noop`, one message each, consumed by a separate"
            " `celery -A bench.baseline worker` with the same concurrency (2), prefetch (1) and"
            " `acks_late` (it loads `celeryconfig`); timed from the first publish until its queue"
            " and Redis's `unacked` hash are both empty (with `acks_late`, a message leaves"
            " `unacked` only after its task ran). Measured in the same run as ours."
        )
    if "priority" in results:
        prio = results["priority"]
        paragraphs.append(
            f"**Priority**: a mass-action of {prio['n']:,} standard echo tasks, then"
            f" {len(prio['runs'][0]['waits'])} tasks for one L20 bot via"
            " `POST /bots/{id}/tasks`, one every"
            f" {int(results['l20_spacing_seconds'] * 1000)} ms; the wait of each is `started_at`"
            " (read from PostgreSQL, microseconds) minus the wall-clock time the request was"
            " sent. The standard backlog when each L20 task was sent is in the JSON"
            " (`standard_backlog_at_send`)."
        )
    if "reads" in results:
        rd = results["reads"]
        paragraphs.append(
            f"**Reads**: with {rd['n']:,} bots present and the stack idle, {m['load_generator']}"
            f" from a second process, {rd['connections']} connections, {rd['seconds']:.0f} s per"
            " endpoint and run: `GET /bots/{id}` (1,000 random ids of one swarm),"
            " `GET /swarms/{id}`, `GET /bots/stats`, and `GET /docs` as the trivial endpoint (the"
            " Swagger UI page: a small template, no database and no Redis)."
        )
    if "single_task" in results:
        paragraphs.append(
            "**Single task**: `POST /bots/{id}/tasks` (echo) on the idle stack,"
            f" {results['single_task_samples']} tasks one after another per run; latency is"
            " `finished_at` (PostgreSQL) minus the time sent."
        )
    if "memory" in results:
        mem = results["memory"]
        paragraphs.append(
            "**Memory**: VmRSS of the Celery main process plus its pool children (from `/proc`),"
            f" before and after {mem['tasks']:,} echo tasks given as mass-actions of"
            f" {mem['tasks'] // results['memory_rounds']:,} to one swarm."
        )
    if "mass_action_progress" in results and "ndjson" in results:
        progress = results["mass_action_progress"]
        paragraphs.append(
            f"**Mass-action progress**: a {progress['n']:,}-task `data_processing` mass-action"
            " (20 inline rows each, `clean`, `transform`, `analyze`) on the largest swarm; while"
            f" it runs, {progress['connections']} connections load `GET /mass-actions/{{id}}` for"
            f" {progress['seconds']:.0f} s, then `GET /docs` (the trivial endpoint, the baseline)"
            " for as long while it still runs; the progress it had reached when each load stopped"
            " is recorded (`percent_after_reads`, `status_after_reads`, `percent_after_trivial`)."
            " Once it ended and the stack is idle, the same load on `GET /mass-actions/{id}`"
            " again."
        )
        paragraphs.append(
            "**NDJSON export**: `GET /mass-actions/{id}/results` with"
            " `Accept: application/x-ndjson` for each of the mass-actions of the progress runs,"
            " read to the end; the time to the last byte, and the growth of the gunicorn workers'"
            " RSS (peak during the export, sampled every 5 ms and from VmHWM reset just before,"
            " minus the RSS before; the larger of the two workers). The baseline: the same results"
            " paged as JSON with `limit=1000`, in the same run."
        )
    if "bigfile" in results:
        big = results["bigfile"]
        paragraphs.append(
            f"**Big file**: a generated {big['rows']:,}-row CSV ({big['file_mb']:.0f} MB) given as"
            f" `mass_data_processing` to a {big['bots']:,}-bot swarm, timed from the request to"
            " the last task counted, with the offsets index removed first (cold) and kept"
            " (warm); peak RSS and CPU time of the worker's pool processes from `/proc`. The"
            " baseline: one task over the whole file in one process, in the same run."
        )
    if "fanout" in results:
        paragraphs.append(
            "**Fan-out**: `image_generation` as a mass-action on an N-bot swarm, the image service"
            " a stand-in on loopback (`bench/fake_ai.py`, one asyncio event loop) answering after"
            " a fixed delay and counting the calls in flight, `max_concurrency` set by `PUT"
            " /services/image`; timed from the POST to the mass-action's end, with the I/O pool"
            " (two `-P threads` processes, as `make run` starts it) beside the usual worker. The"
            " baseline, in the same run: the same N calls as N `apply_async` messages to a plain"
            " `celery worker -P threads -c <limit>` (`bench/baseline.py`), timed from the first"
            " publish to the last call's end."
        )
    if "isolation" in results:
        paragraphs.append(
            "**Isolation**: a 50,000-task echo mass-action alone, then started while a 2,000-call"
            " fan-out (100 ms, limit 64) runs; and an L20 call's start (`started_at` minus the"
            " time sent) one second after a 50,000-call standard fan-out (20 ms, limit 256) began."
        )
    if "workflows" in results:
        paragraphs.append(
            "**Workflows**: the spec's two-step `/orchestrate` example and a three-step chain"
            " passing results with `$ref`, one after another on an idle stack, the services"
            " answering at once; from the POST to the workflow's `finished_at`."
        )
    return "\n".join(
        textwrap.fill(f"{number}. {paragraph}", width=100, subsequent_indent="   ")
        for number, paragraph in enumerate(paragraphs, 1)
    )
