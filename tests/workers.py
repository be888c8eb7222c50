"""A real Celery worker process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
import requests

from app.tiers import IO_QUEUES, TIER_QUEUES
from deploy.devstack import free_port

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """`celery -A workers worker` started and stopped by a test."""

    def __init__(
        self,
        env: dict[str, str],
        concurrency: int = 2,
        extra_env=None,
        queues: tuple[str, ...] = TIER_QUEUES + IO_QUEUES,
        pool: str = "prefork",
    ) -> None:
        """By default one prefork worker consumes every queue, calls included; the I/O pool of
        production is `queues=IO_QUEUES, pool="threads"`."""
        self.env = {**os.environ, **env, **(extra_env or {})}
        self.concurrency = concurrency
        self.queues = queues
        self.pool = pool
        self.process: subprocess.Popen | None = None
        self.log_path = (
            Path(os.environ.get("TMPDIR", "/tmp")) / f"worker-{os.getpid()}-{id(self)}.log"
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start the worker and wait until it consumes its queues."""
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "-Q",
                ",".join(self.queues),
                "-P",
                self.pool,
                "--concurrency",
                str(self.concurrency),
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"test-{os.getpid()}-{id(self)}@%h",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()}")
            if "ready." in self.log_path.read_text():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready in {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        """Stop the worker (and its pool), waiting for it to exit."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text()


def queue_lengths(redis_url: str) -> dict[str, int]:
    """Messages waiting per queue (tiers and I/O)."""
    client = redis.Redis.from_url(redis_url)
    return {queue: client.llen(queue) for queue in TIER_QUEUES + IO_QUEUES}


def wait_for(condition, timeout: float = 30.0, interval: float = 0.1):
    """Poll `condition` until it returns something truthy (and return that), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, seconds: float = 30):
    """Poll url until it answers; fail with the process's log if it exits or never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited:\n{log.read_text()[-3000:]}")
        try:
            requests.get(url, timeout=5)
            return
        except requests.RequestException:  # not listening yet, or busy with its first answer
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {seconds}s:\n{log.read_text()[-3000:]}")


def stop_process_group(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process started in its own session, and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def gunicorn_serving(env: dict[str, str], log: Path) -> Iterator[str]:
    """`gunicorn -c gunicorn.conf.py wsgi:app` on a free loopback port; yields its base URL."""
    port = free_port()
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env={**os.environ, **env, "PORT": str(port)},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/health", process, log)
        yield url
    finally:
        stop_process_group(process)
