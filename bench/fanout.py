"""Fan-outs of calls to an AI service: the I/O pool against plain Celery, in the same run.

`python -m bench --only fanout` runs just these. A fake image service (bench/fake_ai.py, its own
process) answers after a fixed delay and counts the requests it holds at once; a swarm of N bots
gets one image_generation mass-action; the figure is the time from the POST to the mass-action's
end. The baseline sends the same N calls the plain way, one `apply_async` per call to a
`-P threads -c <limit>` worker whose task POSTs to the same service.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

from bench.scenarios import Bench, say
from bench.stack import ROOT, free_port, proc_status_kb

IO_QUEUES = ("io.L20", "io.advanced", "io.standard")


class FakeAI:
    """bench/fake_ai.py in its own process (its threads do not share the driver's GIL)."""

    def __init__(self, delay: float) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.fake_ai",
                "--port",
                str(self.port),
                "--delay",
                str(delay),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the fake AI service did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def reset(self, delay: float) -> None:
        self._call("POST", "/reset", {"delay": delay})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def _wait_quiet(b: Bench, queues: tuple[str, ...], timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with b.db.cursor() as cur:
            cur.execute("SELECT count(*) FROM tasks WHERE status IN ('assigned', 'running')")
            open_tasks = cur.fetchone()[0]
        queued = sum(b.redis.llen(q) for q in queues)
        if open_tasks == 0 and queued == 0 and b.redis.hlen("unacked") == 0:
            return
        time.sleep(0.02)
    raise TimeoutError("the stack did not become idle")


def _swarm(b: Bench, n: int) -> str:
    swarm = b.api.call(
        "POST",
        "/swarms",
        {"name": f"fan-{n}", "count": n, "tier": "standard", "capabilities": ["ml_inference"]},
        expect=201,
    )
    return swarm["id"]


def orchestrator(b: Bench, fake: FakeAI, n: int, delay: float, limit: int, label: str) -> dict:
    """n image_generation tasks on an n-bot swarm through the I/O pool; median of b.runs."""
    b.api.call("PUT", "/services/image", {"urls": [fake.url], "max_concurrency": limit})
    swarm_id = _swarm(b, n)
    seconds, peaks, rss = [], [], []
    queues = ("L20", "advanced", "standard", *IO_QUEUES)
    for run in range(b.runs):
        say(f"{label} fan-out {n} x {delay * 1000:.0f} ms, limit {limit}: run {run + 1}/{b.runs}")
        _wait_quiet(b, queues)
        fake.reset(delay)
        rss.append(_rss_kb(b, "io"))
        started = time.perf_counter()
        answer = b.api.call(
            "POST", f"/swarms/{swarm_id}/tasks",
            {"type": "image_generation", "data": {"prompt": "p", "run": run}}, expect=202,
        )  # fmt: skip
        mass_action = answer["mass_action_id"]
        body = b.api.wait_for(
            f"/mass-actions/{mass_action}",
            lambda doc: doc["finished_at"] is not None,
            timeout=900,
            interval=0.02,
        )
        seconds.append(time.perf_counter() - started)
        counts = body["counts"]
        if counts["completed"] != n:
            raise RuntimeError(f"fan-out ended with {counts}")
        peaks.append(fake.stats()["peak"])
    rss.append(_rss_kb(b, "io"))
    return {"n": n, "delay_ms": delay * 1000, "limit": limit, "seconds": seconds,
            "peak_in_flight": peaks, "io_rss_kb": rss}  # fmt: skip


def plain_celery(b: Bench, fake: FakeAI, n: int, delay: float, threads: int, label: str) -> dict:
    """The same n calls, one apply_async each, to a `-P threads -c threads` worker."""
    from bench.baseline import QUEUE, call

    b.stack.start_baseline_worker(concurrency=threads, pool="threads")
    seconds, peaks = [], []
    try:
        for run in range(b.runs):
            say(f"{label} plain Celery -P threads -c {threads}, {n} calls: run {run + 1}/{b.runs}")
            _wait_quiet(b, (QUEUE,))
            fake.reset(delay)
            started = time.perf_counter()
            url = fake.url + "/generate"
            for i in range(n):
                call.apply_async((url, {"type": "image_generation", "params": {"i": i}}))
            while b.redis.llen(QUEUE) or b.redis.hlen("unacked"):
                time.sleep(0.01)
            seconds.append(time.perf_counter() - started)
            stats = fake.stats()
            if stats["requests"] < n:
                raise RuntimeError(f"plain Celery made {stats['requests']} of {n} calls")
            peaks.append(stats["peak"])
    finally:
        b.stack.stop("baseline")
    return {"n": n, "delay_ms": delay * 1000, "threads": threads, "seconds": seconds,
            "peak_in_flight": peaks}  # fmt: skip


def _rss_kb(b: Bench, name: str) -> int:
    return sum(proc_status_kb(pid, "VmRSS") for pid in b.stack.worker_pids(name))


def run_all(b: Bench, big: int, label: str) -> dict[str, Any]:
    """The issue's two fan-outs, each with its plain-Celery baseline in the same run."""
    fake = FakeAI(0.1)
    try:
        b.stack.start_io_worker()
        results = {
            "small": orchestrator(b, fake, 2_000, 0.1, 64, f"{label} a"),
            "small_baseline": plain_celery(b, fake, 2_000, 0.1, 64, f"{label} b"),
        }
        if big:
            results["big"] = orchestrator(b, fake, big, 0.02, 256, f"{label} c")
            results["big_baseline"] = plain_celery(b, fake, big, 0.02, 256, f"{label} d")
        return results
    finally:
        b.stack.stop("io")
        fake.stop()


def summary(results: dict[str, Any], load_average: tuple[float, ...]) -> str:
    """The fan-outs as lines of text: medians, the baseline, the targets."""
    from statistics import median

    lines = [f"load average at the end: {' '.join(f'{x:.2f}' for x in load_average)}"]
    for key in ("small", "big"):
        if key not in results:
            continue
        ours, plain = results[key], results[key + "_baseline"]
        n, limit, delay = ours["n"], ours["limit"], ours["delay_ms"] / 1000
        ideal = -(-n // limit) * delay
        t, p = median(ours["seconds"]), median(plain["seconds"])
        rss = ours["io_rss_kb"]
        lines.append(
            f"{n} calls at {delay * 1000:.0f} ms, limit {limit}: I/O pool {t:.2f} s "
            f"({n / t:.0f} calls/s; runs {', '.join(f'{x:.2f}' for x in ours['seconds'])}), "
            f"plain Celery -P threads -c {plain['threads']} {p:.2f} s ({n / p:.0f} calls/s), "
            f"ratio {p / t:.2f}x, ideal {ideal:.2f} s (ideal/actual {ideal / t:.2f}); "
            f"peak in flight {max(ours['peak_in_flight'])} (plain {max(plain['peak_in_flight'])}); "
            f"I/O pool RSS {rss[0] / 1024:.0f} -> {rss[-1] / 1024:.0f} MB"
        )
    return "\n".join(lines)
