"""`make test` gets the programs its tests drive, or stops saying which packages to install."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import system_tools
from tests.workers import ROOT


def programs(directory: Path, *names: str) -> str:
    """A directory holding executables with these names; returned as a search path."""
    directory.mkdir(exist_ok=True)
    for name in names:
        program = directory / name
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
    return str(directory)


def cannot(calls: list[str]) -> None:
    """A privilege check that must not matter: it records that it was asked."""
    calls.append("asked")


def test_nothing_is_asked_or_installed_when_every_tool_is_there(tmp_path: Path) -> None:
    path = programs(tmp_path / "bin", "chromium", "nginx")
    asked: list[str] = []
    assert system_tools.ensure(path, "/no/apt-get", lambda: cannot(asked)) == 0
    assert asked == []


def test_any_of_chromiums_names_will_do(tmp_path: Path) -> None:
    path = programs(tmp_path / "bin", "chromium-browser")
    assert system_tools.find(system_tools.CHROMIUM, path) == str(
        tmp_path / "bin" / "chromium-browser"
    )
    assert system_tools.find(system_tools.NGINX, path) is None


@pytest.mark.parametrize(
    ("apt_get", "rights", "why"),
    [
        ("/usr/bin/apt-get", None, "this user may not run apt-get"),
        (None, [], "apt-get is not available"),
    ],
)
def test_without_rights_it_stops_naming_the_packages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], apt_get, rights, why
) -> None:
    path = programs(tmp_path / "bin")
    assert system_tools.ensure(path, apt_get, lambda: rights) == system_tools.EXIT_CANNOT_INSTALL
    message = capsys.readouterr().err
    assert "Chromium and nginx" in message and why in message
    assert "apt-get install -y --no-install-recommends chromium nginx-light" in message


def test_only_the_missing_package_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = programs(tmp_path / "bin", "chromium")
    assert system_tools.ensure(path, None, lambda: None) == system_tools.EXIT_CANNOT_INSTALL
    message = capsys.readouterr().err
    assert "needs nginx, which is not installed" in message
    assert re.search(r"install -y --no-install-recommends nginx-light$", message.strip())


@pytest.mark.slow  # needs `make test`'s test-tools step, which `make test-fast` leaves out
def test_this_machine_has_them_after_make_test_started() -> None:
    # `make test` ran the same module before pytest; a second run finds everything and says nothing.
    done = subprocess.run(
        [sys.executable, "-m", "deploy.system_tools"],
        cwd=ROOT, env={**os.environ, "PATH": os.environ.get("PATH", "")},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_make_test_runs_it_before_anything_else() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^test-tools:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe and "-m deploy.system_tools" in recipe.group(1)
    test_rule = re.search(r"^test: (.*?)(?: ##|$)", makefile, re.M)
    assert test_rule and test_rule.group(1).split()[0] == "test-tools"
