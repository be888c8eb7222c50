"""Start and stop the service's processes for the benchmark: each in its own process group.

Only what this module starts is ever stopped, by the process group it created. PostgreSQL and Redis
are the ones DATABASE_URL / REDIS_URL name (deploy.devstack provides them) and are left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from app.tiers import IO_QUEUES, TIER_QUEUES
from bench.client import API_KEY

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
STOP_GRACE_SECONDS = 15.0
# I/O pool processes, as `make run` starts them: one per core of this machine class (2).
IO_PROCESSES = 2


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def tool(name: str) -> str:
    """A console script next to this interpreter (the virtualenv's), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; the parent id follows it.
    return int(stat.rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    """Direct child processes of pid, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _ppid(int(entry.name)) == pid:
            found.append(int(entry.name))
    return sorted(found)


def proc_status_kb(pid: int, key: str) -> int:
    """A kB figure (VmRSS, VmHWM) from /proc/<pid>/status; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Process:
    """One started process (and its group)."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Stack:
    """gunicorn (2 workers) + one Celery worker (concurrency 2), and optionally the baseline worker."""

    env: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    processes: dict[str, Process] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _start(self, name: str, argv: list[str]) -> Process:
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "w")  # noqa: SIM115 - owned by the child for its lifetime
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        process = Process(name, popen, log_path)
        self.processes[name] = process
        return process

    def migrate(self) -> None:
        """Apply the migrations to the benchmark's database."""
        done = subprocess.run(
            [tool("flask"), "--app", "wsgi", "db", "upgrade"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"migrations failed:\n{done.stdout}\n{done.stderr}")

    def start_api(self, workers: int = 2) -> None:
        """gunicorn with the service's own config, bound to loopback only."""
        self._start(
            "api",
            [tool("gunicorn"), "-c", "gunicorn.conf.py", "--bind", f"{LOOPBACK}:{self.port}",
             "--workers", str(workers), "wsgi:app"],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._check_alive("api")
            with contextlib.suppress(OSError):
                # The bench's admin key: without one the API answers 401 (app/api/auth.py).
                ready = urllib.request.Request(
                    f"{self.base_url}/task-types", headers={"Authorization": f"Bearer {API_KEY}"}
                )
                with urllib.request.urlopen(ready, timeout=2):
                    # Both workers must have booted before anything is measured.
                    if len(self.api_worker_pids()) >= workers:
                        return
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer within 30 s:\n{self.processes['api'].log()}")

    def start_worker(self, concurrency: int = 2) -> None:
        """`celery -A workers worker` as `make worker` runs it."""
        self._start_celery(
            "worker",
            ["-A", "workers", "worker", "-Q", ",".join(TIER_QUEUES)],
            concurrency,
        )

    def start_baseline_worker(self, concurrency: int = 2, pool: str = "prefork") -> None:
        """The plain-Celery baseline's worker, same settings, its own queue."""
        from bench.baseline import QUEUE

        self._start_celery(
            "baseline", ["-A", "bench.baseline", "worker", "-Q", QUEUE, "-P", pool], concurrency
        )

    def start_io_workers(self, processes: int = IO_PROCESSES, concurrency: int = 8) -> None:
        """The I/O pool as `make run` runs it: `processes` workers (one per core), threads on
        the io queues."""
        for number in range(1, processes + 1):
            self._start_celery(
                f"io-{number}",
                ["-A", "workers", "worker", "-Q", ",".join(IO_QUEUES), "-P", "threads"],
                concurrency,
            )

    def io_names(self) -> list[str]:
        return [name for name in self.processes if name.startswith("io-")]

    def stop_io_workers(self) -> None:
        for name in self.io_names():
            self.stop(name)

    def start_plain(self, workers: int = 2, concurrency: int = 2) -> str:
        """The plain Flask + Celery version (bench/plain_app.py): its gunicorn with as many sync
        workers as ours, and its worker; returns its base URL."""
        from bench import plain_app

        plain_app.create_tables()
        port = free_port()
        self._start(
            "plain-api",
            [tool("gunicorn"), "--bind", f"{LOOPBACK}:{port}", "--workers", str(workers),
             "bench.plain_app:app"],
        )  # fmt: skip
        self._start_celery(
            "plain-worker", ["-A", "bench.plain_app.celery", "worker", "-Q", plain_app.QUEUE],
            concurrency,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._check_alive("plain-api")
            if len(children_of(self.processes["plain-api"].pid)) >= workers:
                with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 1):
                    return f"http://{LOOPBACK}:{port}"
            time.sleep(0.2)
        raise RuntimeError(f"plain gunicorn did not start:\n{self.processes['plain-api'].log()}")

    def _start_celery(self, name: str, args: list[str], concurrency: int) -> None:
        process = self._start(
            name,
            [tool("celery"), *args, "--concurrency", str(concurrency), "--loglevel", "INFO",
             "-n", f"bench-{name}-{os.getpid()}@%h"],
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self._check_alive(name)
            if " ready." in process.log():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready within 60 s:\n{process.log()}")

    def _check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.popen.returncode}:\n{process.log()}")

    def api_worker_pids(self) -> list[int]:
        return children_of(self.processes["api"].pid) if "api" in self.processes else []

    def worker_pids(self, name: str = "worker") -> list[int]:
        """The Celery main process and its pool children."""
        main = self.processes[name].pid
        return [main, *children_of(main)]

    def worker_rss_kb(self, name: str = "worker") -> int:
        """Resident memory of the Celery worker: main process plus pool children."""
        return sum(proc_status_kb(pid, "VmRSS") for pid in self.worker_pids(name))

    def stop(self, name: str) -> None:
        """SIGTERM the process group we started, SIGKILL it after the grace period."""
        process = self.processes.pop(name, None)
        if process is None or process.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.popen.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            # The whole group: pool children go with their parent.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.popen.wait()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)
