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

from bench.scenarios import Bench, say, wait_ended
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
        rss.append(_io_rss_kb(b))
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
    rss.append(_io_rss_kb(b))
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


def _io_rss_kb(b: Bench) -> int:
    """Resident memory of every I/O pool process."""
    return sum(
        proc_status_kb(pid, "VmRSS")
        for name in b.stack.io_names()
        for pid in b.stack.worker_pids(name)
    )


def run_all(b: Bench, big: int, label: str) -> dict[str, Any]:
    """The issue's two fan-outs, each with its plain-Celery baseline in the same run."""
    fake = FakeAI(0.1)
    try:
        b.stack.start_io_workers()
        results = {
            "small": orchestrator(b, fake, 2_000, 0.1, 64, f"{label} a"),
            "small_baseline": plain_celery(b, fake, 2_000, 0.1, 64, f"{label} b"),
        }
        if big:
            results["big"] = orchestrator(b, fake, big, 0.02, 256, f"{label} c")
            results["big_baseline"] = plain_celery(b, fake, big, 0.02, 256, f"{label} d")
        return results
    finally:
        b.stack.stop_io_workers()
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


def _echo_run(b: Bench, swarm_id: str, run: int) -> float:
    started = time.perf_counter()
    answer = b.api.call(
        "POST", f"/swarms/{swarm_id}/tasks", {"type": "echo", "data": {"run": run}}, expect=202
    )
    b.api.wait_for(
        f"/mass-actions/{answer['mass_action_id']}",
        lambda doc: doc["finished_at"] is not None,
        timeout=600,
        interval=0.02,
    )
    return time.perf_counter() - started


def isolation(b: Bench, big: int, label: str) -> dict[str, Any]:
    """An echo mass-action of `big` alone, then started with a 2,000-call fan-out (100 ms, limit
    64) running; and an L20 call's start behind a `big`-call standard backlog (20 ms, limit 256)."""
    from bench.scenarios import _wait_started

    fake = FakeAI(0.1)
    queues = ("L20", "advanced", "standard", *IO_QUEUES)
    results: dict[str, Any] = {"echo_alone": [], "echo_beside_fanout": [], "fanout_beside": [],
                               "l20_start": []}  # fmt: skip
    try:
        b.stack.start_io_workers()
        b.api.call("PUT", "/services/image", {"urls": [fake.url], "max_concurrency": 64})
        small, large = _swarm(b, 2_000), _swarm(b, big)
        for run in range(b.runs):
            say(f"{label} echo {big} alone, then beside a 2,000-call fan-out: {run + 1}/{b.runs}")
            _wait_quiet(b, queues)
            results["echo_alone"].append(_echo_run(b, large, run))
            _wait_quiet(b, queues)
            fake.reset(0.1)
            started = time.perf_counter()
            fan = b.api.call(
                "POST", f"/swarms/{small}/tasks",
                {"type": "image_generation", "data": {"run": run}}, expect=202,
            )  # fmt: skip
            results["echo_beside_fanout"].append(_echo_run(b, large, run))
            b.api.wait_for(
                f"/mass-actions/{fan['mass_action_id']}",
                lambda doc: doc["finished_at"] is not None,
                timeout=600,
                interval=0.02,
            )
            results["fanout_beside"].append(time.perf_counter() - started)
        bot = b.api.call(
            "POST", "/bots",
            {"name": "bench-l20-ai", "tier": "L20", "capabilities": ["ml_inference"]}, expect=201,
        )  # fmt: skip
        b.api.call("PUT", "/services/image", {"urls": [fake.url], "max_concurrency": 256})
        for run in range(b.runs):
            say(f"{label} L20 call behind a {big}-call standard backlog: {run + 1}/{b.runs}")
            _wait_quiet(b, queues)
            fake.reset(0.02)
            backlog = b.api.call(
                "POST", f"/swarms/{large}/tasks",
                {"type": "image_generation", "data": {"run": run}}, expect=202,
            )  # fmt: skip
            time.sleep(1.0)  # let the backlog fill the lines and every slot
            sent = time.time()
            task = b.api.call(
                "POST", f"/bots/{bot['id']}/tasks",
                {"type": "image_generation", "data": {"prompt": "now"}}, expect=202,
            )  # fmt: skip
            task_id = int(str(task["task_id"]).rsplit("-", 1)[-1])
            results["l20_start"].append(_wait_started(b, task_id) - sent)
            b.api.call("DELETE", f"/mass-actions/{backlog['mass_action_id']}")
        return results
    finally:
        b.stack.stop_io_workers()
        fake.stop()


def isolation_summary(results: dict[str, Any]) -> str:
    from statistics import median

    return (
        f"echo alone {median(results['echo_alone']):.2f} s, beside a fan-out "
        f"{median(results['echo_beside_fanout']):.2f} s (runs "
        f"{', '.join(f'{x:.2f}' for x in results['echo_beside_fanout'])}); the fan-out beside it "
        f"{median(results['fanout_beside']):.2f} s; L20 call start behind the standard backlog "
        f"{median(results['l20_start']) * 1000:.0f} ms (runs "
        f"{', '.join(f'{x * 1000:.0f}' for x in results['l20_start'])})"
    )


SPEC_WORKFLOW = {
    "tasks": [
        {"type": "image_generation", "params": {"prompt": "Sunset landscape"}},
        {"type": "crypto_prediction", "params": {"symbol": "BTC"}},
    ],
    "priority": "high",
}
CHAIN = {
    "priority": "high",
    "tasks": [
        {"name": "a", "type": "image_generation", "params": {"prompt": "p"}},
        {"name": "b", "type": "marketing_analysis", "depends_on": ["a"],
         "params": {"image": {"$ref": "steps.a.result.image"}}},
        {"name": "c", "type": "crypto_prediction", "depends_on": ["b"],
         "params": {"image": {"$ref": "steps.b.result.image"}}},
    ],
}  # fmt: skip
WORKFLOW_SAMPLES = 30


def _workflow_seconds(b: Bench, body: dict[str, Any]) -> float:
    sent = time.time()
    workflow_id = b.api.call("POST", "/orchestrate", body, expect=202)["task_id"]
    return wait_ended(b, "workflows", workflow_id, workflow_id) - sent


def workflows(b: Bench, label: str) -> dict[str, Any]:
    """The spec's two-step /orchestrate example and a three-step $ref chain, on an idle stack,
    the services answering at once: end-to-end seconds per workflow."""
    fake = FakeAI(0.0)
    try:
        b.stack.start_io_workers()
        for service in ("image", "crypto", "marketing"):
            b.api.call("PUT", f"/services/{service}", {"urls": [fake.url], "max_concurrency": 64})
        two, three = [], []
        for i in range(WORKFLOW_SAMPLES):
            if i % 10 == 0:
                say(f"{label} workflows {i + 1}-{i + 10}/{WORKFLOW_SAMPLES}")
            two.append(_workflow_seconds(b, SPEC_WORKFLOW))
            three.append(_workflow_seconds(b, CHAIN))
        return {"two_step": two, "chain_three": three}
    finally:
        b.stack.stop_io_workers()
        fake.stop()


def workflows_summary(results: dict[str, Any]) -> str:
    from bench.scenarios import percentile

    two = [x * 1000 for x in results["two_step"]]
    three = [x * 1000 for x in results["chain_three"]]
    return (
        f"spec two-step /orchestrate: p50 {percentile(two, 50):.1f} ms, p95 "
        f"{percentile(two, 95):.1f} ms; three-step $ref chain: p50 {percentile(three, 50):.1f} ms "
        f"({percentile(three, 50) / 3:.1f} ms per step), p95 {percentile(three, 95):.1f} ms"
    )
