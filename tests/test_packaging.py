"""`pip install .` installs the service and the `orchestrator` command; the locks pin it all.

pyproject.toml holds the direct dependencies (runtime and the command's in `dependencies`, the
development tools in the `dev` extra); requirements.lock and requirements-dev.lock (`make lock`)
pin those and everything beneath them, with hashes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deploy.devstack import drop_database, ensure_database, with_database
from tests.workers import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;\\]+)")


def name_of(requirement: str) -> str:
    """A distribution name as the lock files write it (lower case, dashes)."""
    return re.sub(r"[._-]+", "-", requirement.lower())


def direct(requirements: list[str]) -> dict[str, str]:
    """name -> version of `==` pins."""
    pins = {}
    for requirement in requirements:
        match = PIN.match(requirement)
        assert match, f"{requirement!r} is not pinned with =="
        pins[name_of(match.group(1))] = match.group(2)
    return pins


def locked(path: Path) -> dict[str, list[tuple[str, int]]]:
    """name -> [(version, number of hashes)] of a lock file (a name may differ by marker)."""
    entries: dict[str, list[tuple[str, int]]] = {}
    blocks = re.split(r"\n(?=[A-Za-z0-9])", path.read_text().split("\n", 2)[2])
    for block in blocks:
        match = PIN.match(block)
        assert match, f"{path.name}: not a pinned entry: {block[:80]!r}"
        entry = (match.group(2), block.count("--hash=sha256:"))
        entries.setdefault(name_of(match.group(1)), []).append(entry)
    return entries


RUNTIME = direct(PYPROJECT["project"]["dependencies"])
DEV = direct(PYPROJECT["project"]["optional-dependencies"]["dev"])
LOCK = locked(ROOT / "requirements.lock")
DEV_LOCK = locked(ROOT / "requirements-dev.lock")


def test_every_locked_package_is_pinned_with_hashes() -> None:
    for path, entries in (("requirements.lock", LOCK), ("requirements-dev.lock", DEV_LOCK)):
        unhashed = [name for name, pins in entries.items() if any(n == 0 for _, n in pins)]
        assert not unhashed, f"{path}: no hashes for {unhashed}"


def test_the_locks_hold_pyprojects_pins() -> None:
    for name, version in RUNTIME.items():
        assert [v for v, _ in LOCK[name]] == [version], name
    for name, version in {**RUNTIME, **DEV}.items():
        assert [v for v, _ in DEV_LOCK[name]] == [version], name
    # Development adds packages; it never moves one the image runs.
    for name, pins in LOCK.items():
        assert DEV_LOCK[name] == pins, name
    assert not set(LOCK) & set(DEV) - set(RUNTIME)


def test_image_and_make_install_from_the_locks_with_hashes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY requirements.lock ." in dockerfile
    assert re.search(
        r"^RUN pip install --require-hashes .*-r requirements\.lock$", dockerfile, re.M
    )
    makefile = (ROOT / "Makefile").read_text()
    assert "$(PY) -m pip install -q --require-hashes -r requirements-dev.lock" in makefile
    assert re.search(r"^lock: .*##", makefile, re.M)


def test_every_package_of_the_checkout_is_installed() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("app", "workers", "orchestrator_cli")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"app.migrations": "migrations"}


def pip(*args: str, cwd: Path) -> None:
    """Run this interpreter's pip; fail the test with its output if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "-q", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


# What the wheel is built from: pyproject.toml and what its [tool.setuptools] section names.
SOURCES = ("pyproject.toml", "wsgi.py", "celeryconfig.py", "app", "workers", "orchestrator_cli",
           "migrations")  # fmt: skip
# Left behind by builds and runs; a stale build/ once put removed modules into the wheel.
NOT_SOURCES = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")


def clean_copy(target: Path) -> Path:
    """The checkout's sources, without build leftovers, in `target` (builds there leave the
    checkout as it was)."""
    target.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=NOT_SOURCES)
        else:
            shutil.copy2(source, target / name)
    return target


def build_leftovers() -> list[tuple[str, float]]:
    """build/ and *.egg-info in the checkout, with their modification times."""
    found = [ROOT / "build", *ROOT.glob("*.egg-info")]
    return sorted((path.name, path.stat().st_mtime) for path in found if path.exists())


@pytest.fixture()
def installed(tmp_path: Path) -> Path:
    """The service built as a wheel and installed, without dependencies, into its own directory.

    Built from a clean copy of the sources: an in-tree build would reuse (and leave) build/ and
    *.egg-info in the checkout, so a stale build/ could change what is installed.
    """
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    checkout = build_leftovers()
    source = clean_copy(tmp_path / "src")
    assert not list(source.rglob("__pycache__")) and not list(source.rglob("build"))
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source), cwd=tmp_path)
    assert build_leftovers() == checkout, "the build wrote in the checkout"
    (wheel,) = wheels.glob("*.whl")
    pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    return site


@pytest.mark.slow
def test_pip_install_gives_the_service_with_its_migrations_and_the_command(
    installed: Path, tmp_path: Path, test_env: dict[str, str]
) -> None:
    # Run away from the checkout, so only the installed copy can be imported.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed), "PYTHONSAFEPATH": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import app, workers, wsgi, celeryconfig, orchestrator_cli; "
         "print(app.__file__, wsgi.__file__, orchestrator_cli.__file__)"],
        cwd=outside, env={**env, **test_env}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert all(path.startswith(str(installed)) for path in where.stdout.split())

    command = subprocess.run(
        [sys.executable, str(installed / "bin" / "orchestrator"), "--help"],
        cwd=outside, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert command.returncode == 0 and "swarm" in command.stdout, command.stderr

    # The installed migrations build a whole schema on an empty database.
    name = f"{test_env['DATABASE_URL'].rsplit('/', 1)[-1]}_installed"
    ensure_database(test_env["DATABASE_URL"], name)
    try:
        database_url = with_database(test_env["DATABASE_URL"], name)
        upgrade = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
            cwd=outside, env={**env, **test_env, "DATABASE_URL": database_url},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert upgrade.returncode == 0, upgrade.stderr
        heads = sorted(
            p.name.split("_", 1)[0] for p in (ROOT / "migrations/versions").glob("0*.py")
        )
        assert f"-> {heads[-1]}," in upgrade.stderr + upgrade.stdout
    finally:
        drop_database(test_env["DATABASE_URL"], name)
