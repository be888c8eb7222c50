"""The measured scenarios. Each returns raw samples; report.py turns them into medians and goals."""

from __future__ import annotations

import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench import load
from bench.client import Api
from bench.stack import Stack, proc_status_kb

SWARM_CAPABILITIES = ["data_processing", "analytics"]
L20_TASKS = 20
# Gap between two L20 assignments: 20 of them are sent within about half a second, while the
# standard backlog is still queued.
L20_SPACING_SECONDS = 0.025
SINGLE_TASK_SAMPLES = 30


def say(message: str) -> None:
    """One progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Bench:
    """Everything the scenarios share: the stack, an HTTP client, the database and Redis."""

    stack: Stack
    api: Api
    db: Any
    redis: Any
    runs: int
    swarms: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def swarms_of(self, n: int) -> list[dict[str, Any]]:
        """The n-bot swarms the scenarios share: those `create_swarms` timed, or new ones made
        untimed when a run leaves that group out (`--only`)."""
        if not self.swarms.get(n):
            for run in range(self.runs):
                body = {"name": f"bench-{n}-{run}", "count": n, "tier": "standard",
                        "capabilities": SWARM_CAPABILITIES}  # fmt: skip
                document = self.api.call("POST", "/swarms", body, expect=201)
                self.swarms.setdefault(n, []).append(
                    {"id": document["id"], "bot_ids": random.sample(document["bot_ids"], 1000)}
                )
        return self.swarms[n]

    def wait_idle(self, timeout: float = 300.0) -> None:
        """Until no task is open and the broker holds nothing: runs never overlap."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.db.cursor() as cur:
                cur.execute("SELECT count(*) FROM tasks WHERE status IN ('assigned', 'running')")
                open_tasks = cur.fetchone()[0]
            queued = sum(self.redis.llen(q) for q in ("L20", "advanced", "standard", "bench_noop"))
            if open_tasks == 0 and queued == 0 and self.redis.hlen("unacked") == 0:
                return
            time.sleep(0.05)
        raise TimeoutError("the stack did not become idle")


# --- 1. swarm creation ---------------------------------------------------------------------------


def create_swarms(b: Bench, n: int, label: str) -> dict[str, Any]:
    """POST /swarms count=n, until the answer with all n ids is in; one new swarm per run."""
    seconds, hwm_mb = [], []
    created = b.swarms.setdefault(n, [])
    for run in range(b.runs):
        say(f"{label} create {n} bots: run {run + 1}/{b.runs}")
        body = {"name": f"bench-{n}-{run}", "count": n, "tier": "standard",
                "capabilities": SWARM_CAPABILITIES}  # fmt: skip
        peak = _PeakRss(b.stack.api_worker_pids())
        started = time.perf_counter()
        document = b.api.call("POST", "/swarms", body, expect=201)
        seconds.append(time.perf_counter() - started)
        peak.stop()
        if len(document["bot_ids"]) != n:
            raise RuntimeError(f"asked for {n} bots, got {len(document['bot_ids'])} ids")
        created.append({"id": document["id"], "bot_ids": random.sample(document["bot_ids"], 1000)})
        hwm_mb.append(peak.max_mb)
    return {"n": n, "seconds": seconds, "api_worker_peak_rss_mb": hwm_mb}


class _PeakRss:
    """Samples the VmRSS of some processes every 5 ms in a thread; the highest one seen, in MB."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.max_kb = pids, 0
        self.max_by_pid: dict[int, int] = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _see(self, key: str) -> None:
        for pid in self.pids:
            self.max_by_pid[pid] = max(self.max_by_pid[pid], proc_status_kb(pid, key))
        self.max_kb = max([self.max_kb, *self.max_by_pid.values()])

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._see("VmRSS")
            self._stop.wait(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        # VmHWM catches a peak shorter than the sampling interval.
        self._see("VmHWM")

    @property
    def max_mb(self) -> float:
        return self.max_kb / 1024


# --- 2. mass-action --------------------------------------------------------------------------


def mass_action(b: Bench, n: int, label: str) -> dict[str, Any]:
    """POST /swarms/{id}/tasks (echo) on a fresh n-bot swarm: time to the 202, time until counted."""
    accepted, done = [], []
    for run in range(b.runs):
        say(f"{label} mass-action {n}: run {run + 1}/{b.runs}")
        b.wait_idle()
        swarm_id = b.swarms_of(n)[run % len(b.swarms_of(n))]["id"]
        target = b.api.call("GET", f"/swarms/{swarm_id}")["total_tasks_completed"] + n
        started = time.perf_counter()
        answer = b.api.call("POST", f"/swarms/{swarm_id}/tasks",
                            {"type": "echo", "data": {"run": run}}, expect=202)  # fmt: skip
        accepted.append(time.perf_counter() - started)
        if answer["assignments"] != n:
            raise RuntimeError(f"mass-action assigned {answer['assignments']} tasks, not {n}")
        b.api.wait_for(
            f"/swarms/{swarm_id}",
            lambda doc, t=target: doc["total_tasks_completed"] >= t,
            timeout=600,
            interval=0.02,
        )
        done.append(time.perf_counter() - started)
    return {"n": n, "accepted_seconds": accepted, "completed_seconds": done}


# --- 3. plain-Celery baseline ----------------------------------------------------------------


def baseline(b: Bench, n: int, label: str) -> dict[str, Any]:
    """n apply_async calls of a no-op, one message each, until the worker has run them all."""
    from bench.baseline import QUEUE, noop

    seconds, publish = [], []
    for run in range(b.runs):
        say(f"{label} plain-Celery baseline {n}: run {run + 1}/{b.runs}")
        b.wait_idle()
        started = time.perf_counter()
        for i in range(n):
            noop.apply_async((i,))
        publish.append(time.perf_counter() - started)
        # acks_late: a message leaves `unacked` only after its task has run.
        while b.redis.llen(QUEUE) or b.redis.hlen("unacked"):
            time.sleep(0.01)
        seconds.append(time.perf_counter() - started)
    return {"n": n, "completed_seconds": seconds, "publish_seconds": publish}


# --- 4. priority -----------------------------------------------------------------------------


def priority(b: Bench, n: int, label: str) -> dict[str, Any]:
    """With n standard tasks queued, assign L20 tasks one by one; time from request to start."""
    bot = b.api.call("POST", "/bots", {"name": "bench-l20", "tier": "L20",
                                       "capabilities": []}, expect=201)  # fmt: skip
    per_run = []
    for run in range(b.runs):
        say(f"{label} L20 behind {n} standard tasks: run {run + 1}/{b.runs}")
        b.wait_idle()
        swarm_id = b.swarms_of(n)[run % len(b.swarms_of(n))]["id"]
        b.api.call("POST", f"/swarms/{swarm_id}/tasks", {"type": "echo", "data": {}}, expect=202)
        sent: list[tuple[int, float, int]] = []
        for _ in range(L20_TASKS):
            backlog = _standard_backlog(b)
            at = time.time()
            answer = b.api.call("POST", f"/bots/{bot['id']}/tasks",
                                {"type": "echo", "data": {}}, expect=202)  # fmt: skip
            sent.append((int(answer["task_id"].removeprefix("task-")), at, backlog))
            time.sleep(L20_SPACING_SECONDS)
        waits = []
        for task_id, at, _ in sent:
            started_at = _wait_started(b, task_id)
            waits.append(started_at - at)
        per_run.append(
            {
                "p50_seconds": percentile(waits, 50),
                "p99_seconds": percentile(waits, 99),
                "waits": waits,
                "standard_backlog_at_send": [backlog for _, _, backlog in sent],
            }
        )
    b.wait_idle()
    return {"n": n, "runs": per_run}


def _standard_backlog(b: Bench) -> int:
    with b.db.cursor() as cur:
        cur.execute("SELECT count(*) FROM tasks WHERE status = 'assigned' AND tier = 'standard'")
        return int(cur.fetchone()[0])


def _wait_started(b: Bench, task_id: int, timeout: float = 120.0) -> float:
    """started_at (epoch seconds, microsecond precision) straight from PostgreSQL."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with b.db.cursor() as cur:
            cur.execute(
                "SELECT extract(epoch FROM started_at) FROM tasks WHERE id = %s", (task_id,)
            )
            value = cur.fetchone()[0]
        if value is not None:
            return float(value)
        time.sleep(0.01)
    raise TimeoutError(f"task-{task_id} did not start within {timeout:.0f} s")


# --- 5. reads --------------------------------------------------------------------------------


def reads(b: Bench, n: int, seconds: float, connections: int, label: str) -> dict[str, Any]:
    """Requests/s and latency of the read endpoints under load from a second process."""
    swarm = b.swarms_of(n)[0]
    endpoints = {
        "GET /bots/{id}": [f"/bots/{bot_id}" for bot_id in swarm["bot_ids"]],
        "GET /swarms/{id}": [f"/swarms/{s['id']}" for s in b.swarms_of(n)],
        "GET /bots/stats": ["/bots/stats"],
        "GET /docs (trivial)": ["/docs"],
    }
    results = load_endpoints(b, endpoints, seconds, connections, f"{label} reads at {n} bots")
    return {"n": n, "seconds": seconds, "connections": connections,
            "generator": load.generator(), "endpoints": results}  # fmt: skip


def load_endpoints(
    b: Bench, endpoints: dict[str, list[str]], seconds: float, connections: int, label: str
) -> dict[str, list[dict[str, Any]]]:
    """Each endpoint (a name and the paths it cycles through) under load from a second process,
    one after another on the idle stack, b.runs times: the load generator's figures per run."""
    b.wait_idle()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in endpoints}
    for run in range(b.runs):
        for name, paths in endpoints.items():
            say(f"{label}, {name}: run {run + 1}/{b.runs}")
            results[name].append(load.run(b.stack.base_url, paths, seconds, connections))
    return results


# --- 6. single task at idle ------------------------------------------------------------------


def single_task(b: Bench, label: str) -> dict[str, Any]:
    """POST /bots/{id}/tasks (echo) on an idle stack until the task is completed."""
    bot = b.api.call("POST", "/bots", {"name": "bench-single", "tier": "standard",
                                       "capabilities": []}, expect=201)  # fmt: skip
    per_run = []
    for run in range(b.runs):
        say(f"{label} single task at idle: run {run + 1}/{b.runs}")
        b.wait_idle()
        latencies = []
        for _ in range(SINGLE_TASK_SAMPLES):
            at = time.time()
            answer = b.api.call("POST", f"/bots/{bot['id']}/tasks",
                                {"type": "echo", "data": {"x": 1}}, expect=202)  # fmt: skip
            task_id = int(answer["task_id"].removeprefix("task-"))
            latencies.append(_wait_finished(b, task_id) - at)
        per_run.append({"p50_seconds": percentile(latencies, 50),
                        "p99_seconds": percentile(latencies, 99), "latencies": latencies})  # fmt: skip
    return {"runs": per_run}


def _wait_finished(b: Bench, task_id: int, timeout: float = 60.0) -> float:
    return wait_ended(b, "tasks", task_id, f"task-{task_id}", timeout)


def wait_ended(b: Bench, table: str, row_id: object, name: str, timeout: float = 60.0) -> float:
    """When a row of `table` (tasks or workflows) finished, in epoch seconds (PostgreSQL's clock),
    polled every 2 ms; an end other than completed raises."""
    if table not in ("tasks", "workflows"):
        raise ValueError(f"no finished_at in {table!r}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with b.db.cursor() as cur:
            cur.execute(
                f"SELECT status, extract(epoch FROM finished_at) FROM {table} WHERE id = %s",
                (row_id,),
            )
            status, finished = cur.fetchone()
        if finished is not None:
            if status != "completed":
                raise RuntimeError(f"{name} ended {status}")
            return float(finished)
        time.sleep(0.002)
    raise TimeoutError(f"{name} did not end within {timeout:.0f} s")


# --- 7. memory -------------------------------------------------------------------------------


def worker_memory(b: Bench, n: int, rounds: int, label: str) -> dict[str, Any]:
    """Celery worker RSS (main + pool) before and after rounds x n echo tasks on one swarm."""
    swarm_id = b.swarms_of(n)[0]["id"]
    b.wait_idle()
    before_kb = b.stack.worker_rss_kb()
    samples_mb, seconds = [], []
    for i in range(rounds):
        say(f"{label} worker memory: mass-action {i + 1}/{rounds} of {n} tasks")
        target = b.api.call("GET", f"/swarms/{swarm_id}")["total_tasks_completed"] + n
        started = time.perf_counter()
        b.api.call("POST", f"/swarms/{swarm_id}/tasks", {"type": "echo", "data": {"i": i}},
                   expect=202)  # fmt: skip
        b.api.wait_for(
            f"/swarms/{swarm_id}",
            lambda doc, t=target: doc["total_tasks_completed"] >= t,
            timeout=600,
            interval=0.05,
        )
        seconds.append(time.perf_counter() - started)
        samples_mb.append(b.stack.worker_rss_kb() / 1024)
    b.wait_idle()
    after_kb = b.stack.worker_rss_kb()
    api_hwm = [proc_status_kb(pid, "VmHWM") / 1024 for pid in b.stack.api_worker_pids()]
    return {
        "tasks": n * rounds,
        "before_mb": before_kb / 1024,
        "after_mb": after_kb / 1024,
        "growth_percent": (after_kb - before_kb) / before_kb * 100,
        "rss_after_each_round_mb": samples_mb,
        "round_seconds": seconds,
        "median_round_seconds": statistics.median(seconds),
        "api_worker_lifetime_peak_mb": max(api_hwm) if api_hwm else None,
    }


# --- 8. mass-action progress under load ------------------------------------------------------

# 20 small rows per task: a 50,000-task mass-action that runs long enough to be read while it runs.
PROGRESS_RECORDS = [
    {"Name": f" customer {i} ", "Monthly Spend": str(i * 3), "Region": "EU" if i % 2 else "US"}
    for i in range(20)
]
PROGRESS_TASK = {
    "type": "data_processing",
    "data": {
        "records": PROGRESS_RECORDS,
        "operations": ["clean", "transform", "analyze"],
        "output_format": "summary",
    },
}


def mass_action_progress(
    b: Bench, n: int, seconds: float, connections: int, label: str
) -> dict[str, Any]:
    """GET /mass-actions/{id} under load while an n-task mass-action runs, then the trivial
    endpoint under the same load while it still runs, then GET /mass-actions/{id} at idle."""
    swarm_id = b.swarms_of(n)[0]["id"]
    per_run = []
    for run in range(b.runs):
        say(
            f"{label} GET /mass-actions/{{id}} during a {n}-task mass-action: run {run + 1}/{b.runs}"
        )
        b.wait_idle()
        created = b.api.call("POST", f"/swarms/{swarm_id}/tasks", PROGRESS_TASK, expect=202)
        path = f"/mass-actions/{created['mass_action_id']}"
        during = load.run(b.stack.base_url, [path], seconds, connections)
        after_reads = b.api.call("GET", path)
        trivial = load.run(b.stack.base_url, ["/docs"], seconds, connections)
        after_trivial = b.api.call("GET", path)
        final = b.api.wait_for(path, lambda doc: doc["finished_at"] is not None, 900, 0.2)
        b.wait_idle()
        idle = load.run(b.stack.base_url, [path], seconds, connections)
        per_run.append(
            {
                "mass_action_id": created["mass_action_id"],
                "during": during,
                "percent_after_reads": after_reads["percent"],
                "status_after_reads": after_reads["status"],
                "trivial_during": trivial,
                "percent_after_trivial": after_trivial["percent"],
                "status_after_trivial": after_trivial["status"],
                "idle": idle,
                "counts": final["counts"],
                "tasks_per_second": final["tasks_per_second"],
            }
        )
    return {"n": n, "seconds": seconds, "connections": connections, "runs": per_run}


# --- 9. results as NDJSON ----------------------------------------------------------------------


def ndjson_export(b: Bench, mass_action_ids: list[str], label: str) -> dict[str, Any]:
    """Stream every result of finished mass-actions as NDJSON (time, lines, API worker RSS
    growth), and page through the same results as JSON with limit=1000 (the baseline)."""
    per_run = []
    for run, mass_action_id in enumerate(mass_action_ids):
        say(f"{label} NDJSON export of {mass_action_id}: run {run + 1}/{len(mass_action_ids)}")
        b.wait_idle()
        pids = b.stack.api_worker_pids()
        before = {pid: proc_status_kb(pid, "VmRSS") for pid in pids}
        for pid in pids:
            _reset_peak_rss(pid)
        peak = _PeakRss(pids)
        started = time.perf_counter()
        lines, size = _stream_lines(b, f"/mass-actions/{mass_action_id}/results")
        seconds = time.perf_counter() - started
        peak.stop()
        growth_kb = max(peak.max_by_pid.get(pid, 0) - before[pid] for pid in pids)
        started = time.perf_counter()
        paged, after = 0, None
        while True:
            query = f"?limit=1000&after={after}" if after else "?limit=1000"
            page = b.api.call("GET", f"/mass-actions/{mass_action_id}/results{query}")
            paged += len(page["items"])
            after = page["next_after"]
            if after is None:
                break
        paged_seconds = time.perf_counter() - started
        if lines != paged:
            raise RuntimeError(f"NDJSON gave {lines} results, the pages {paged}")
        per_run.append(
            {
                "mass_action_id": mass_action_id,
                "lines": lines,
                "bytes": size,
                "seconds": seconds,
                "api_rss_growth_mb": growth_kb / 1024,
                "paged_seconds": paged_seconds,
            }
        )
    return {"runs": per_run}


def _reset_peak_rss(pid: int) -> None:
    """Start VmHWM afresh (Linux: `5` to clear_refs), so it holds the peak of what follows."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass  # not allowed here: the 5 ms samples still catch the peak


def _stream_lines(b: Bench, path: str) -> tuple[int, int]:
    """GET path with Accept: application/x-ndjson, read to the end in 64 kB reads."""
    import http.client

    from bench.client import API_KEY

    conn = http.client.HTTPConnection(b.api.host, b.api.port, timeout=300)
    try:
        conn.request(
            "GET",
            path,
            headers={"Authorization": f"Bearer {API_KEY}", "Accept": "application/x-ndjson"},
        )
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}: {response.read()[:300]!r}")
        lines = size = 0
        while chunk := response.read(65536):
            lines += chunk.count(b"\n")
            size += len(chunk)
        return lines, size
    finally:
        conn.close()
