"""A big file split over a big swarm, beside one task over the same file in one process.

The file is generated here (never committed): `rows` customer rows of about 100 bytes, with a few
percent of exact duplicates so `clean` has work across parts. The swarm gets `mass_data_processing`
with the spec's operations; the time runs from the POST to the last task recorded. Each run starts
a fresh worker so its pool processes' peak RSS (VmHWM) belongs to that run alone.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from bench.scenarios import Bench, say
from bench.stack import proc_status_kb

FILE_NAME = "customers_big.csv"
OPERATIONS = ["clean", "enrich", "analyze"]
_REGIONS = ["north", "south", "east", "west", "central"]
_PLANS = ["basic", "pro", "team", "enterprise"]


def write_file(data_dir: Path, rows: int, seed: int = 2024) -> Path:
    """The generated CSV in data_dir (about 100 bytes a row)."""
    path = data_dir / FILE_NAME
    rnd = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customer_id", "name", "email", "region", "plan", "age",
                         "lifetime_value", "orders", "newsletter", "signup_date"])  # fmt: skip
        previous: list[Any] = []
        for i in range(rows):
            if previous and rnd.random() < 0.02:
                writer.writerow(previous)  # an exact duplicate: clean drops it
                continue
            previous = [
                f"C{i:08d}", f"Customer {rnd.randrange(200_000)}",
                f"user{rnd.randrange(10**6)}@example.com", rnd.choice(_REGIONS),
                rnd.choice(_PLANS), rnd.randrange(18, 90), f"{rnd.uniform(10, 20_000):.2f}",
                rnd.randrange(200), rnd.choice(("yes", "no")),
                f"2024-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}",
            ]  # fmt: skip
            writer.writerow(previous)
    return path


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _pool_peaks_mb(b: Bench) -> list[float]:
    main, *pool = b.stack.worker_pids()
    return [proc_status_kb(pid, "VmHWM") / 1024 for pid in pool]


def _fresh_worker(b: Bench) -> None:
    b.stack.stop("worker")
    b.stack.start_worker()


def _wait_completed(b: Bench, task_ids_sql: str, params: tuple, total: int) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with b.db.cursor() as cur:
            cur.execute(task_ids_sql, params)
            done, failed = cur.fetchone()
        if failed:
            raise RuntimeError(f"{failed} tasks of the big-file run failed")
        if done >= total:
            return
        time.sleep(0.05)
    raise TimeoutError("big-file run did not finish in 600 s")


def split_run(b: Bench, data_dir: Path, rows: int, bots: int, label: str) -> dict[str, Any]:
    """mass_data_processing of the file over a `bots`-bot swarm, cold (index removed) and warm."""
    path = data_dir / FILE_NAME
    if not path.exists():
        say(f"{label} writing a {rows:,}-row CSV")
        write_file(data_dir, rows)
    swarm = b.api.call("POST", "/swarms", {"name": "bench-bigfile", "count": bots, "tier": "standard",
                                           "capabilities": ["data_processing"]}, expect=201)  # fmt: skip
    data = {"dataset": FILE_NAME, "operations": OPERATIONS, "output_format": "json"}
    out: dict[str, Any] = {"rows": rows, "bots": bots, "file_mb": path.stat().st_size / 1e6}
    for mode in ("cold", "warm"):
        seconds, peaks, cpu, load = [], [], [], []
        for run in range(b.runs):
            say(f"{label} {rows:,} rows over {bots:,} bots, {mode}: run {run + 1}/{b.runs}")
            b.wait_idle()
            if mode == "cold":
                shutil.rmtree(data_dir / ".index", ignore_errors=True)
            _fresh_worker(b)
            load.append(os.getloadavg()[0])
            pool_cpu = _cpu_seconds(b.stack.worker_pids())
            started = time.perf_counter()
            answer = b.api.call("POST", f"/swarms/{swarm['id']}/tasks",
                                {"type": "mass_data_processing", "data": data}, expect=202)  # fmt: skip
            first = _first_task_id(b, swarm["id"], answer["assignments"])
            _wait_completed(
                b,
                "SELECT count(*) FILTER (WHERE status = 'completed'),"
                " count(*) FILTER (WHERE status = 'failed') FROM tasks"
                " WHERE swarm_id = %s AND id >= %s",
                (swarm["id"], first),
                answer["assignments"],
            )
            seconds.append(time.perf_counter() - started)
            cpu.append(_cpu_seconds(b.stack.worker_pids()) - pool_cpu)
            peaks.append(max(_pool_peaks_mb(b)))
        out[mode] = {"seconds": seconds, "peak_worker_rss_mb": peaks, "worker_cpu_seconds": cpu,
                     "load_average_at_start": load}  # fmt: skip
    out["single"] = single_run(b, data_dir, label)
    return out


def _first_task_id(b: Bench, swarm_id: str, n: int) -> int:
    with b.db.cursor() as cur:
        cur.execute(
            "SELECT min(id) FROM (SELECT id FROM tasks WHERE swarm_id = %s ORDER BY id DESC LIMIT %s) t",
            (swarm_id, n),
        )
        return int(cur.fetchone()[0])


def single_run(b: Bench, data_dir: Path, label: str) -> dict[str, Any]:
    """The same operations as one data_processing task on one bot: one process reads every row."""
    bot = b.api.call("POST", "/bots", {"name": "bench-bigfile-one", "tier": "standard",
                                       "capabilities": ["data_processing"]}, expect=201)  # fmt: skip
    data = {"dataset": FILE_NAME, "operations": OPERATIONS, "output_format": "json"}
    seconds, peaks, cpu, load = [], [], [], []
    for run in range(b.runs):
        say(f"{label} one task over the whole file: run {run + 1}/{b.runs}")
        b.wait_idle()
        _fresh_worker(b)
        load.append(os.getloadavg()[0])
        pool_cpu = _cpu_seconds(b.stack.worker_pids())
        started = time.perf_counter()
        answer = b.api.call("POST", f"/bots/{bot['id']}/tasks",
                            {"type": "data_processing", "data": data}, expect=202)  # fmt: skip
        task_id = int(answer["task_id"].removeprefix("task-"))
        _wait_completed(
            b,
            "SELECT count(*) FILTER (WHERE status = 'completed'),"
            " count(*) FILTER (WHERE status = 'failed') FROM tasks WHERE id = %s",
            (task_id,),
            1,
        )
        seconds.append(time.perf_counter() - started)
        cpu.append(_cpu_seconds(b.stack.worker_pids()) - pool_cpu)
        peaks.append(max(_pool_peaks_mb(b)))
    return {"seconds": seconds, "peak_worker_rss_mb": peaks, "worker_cpu_seconds": cpu,
            "load_average_at_start": load}  # fmt: skip
