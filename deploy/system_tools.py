"""The programs the test suite drives besides Python: Chromium (dashboard) and nginx (proxy).

    python3 -m deploy.system_tools     install the missing ones with apt-get, or say how

`make test` runs this first. It installs through apt-get when it may (as root, or with
passwordless sudo); otherwise it stops with a message naming the packages. Standard library only:
it runs before the virtualenv exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

# Where Debian puts nginx: often not on an ordinary user's PATH.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
EXIT_CANNOT_INSTALL = 2


@dataclass(frozen=True)
class Tool:
    """A program the tests run, the names it goes by, and the Debian package that has it."""

    name: str
    commands: tuple[str, ...]
    package: str


CHROMIUM = Tool("Chromium", ("chromium", "chromium-browser", "google-chrome"), "chromium")
NGINX = Tool("nginx", ("nginx",), "nginx-light")
TOOLS = (CHROMIUM, NGINX)


def search_path() -> str:
    """PATH, then the sbin directories."""
    return os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])


def find(tool: Tool, path: str | None = None) -> str | None:
    """The full path of the tool's program on `path` (default: search_path()), or None."""
    for command in tool.commands:
        found = shutil.which(command, path=path if path is not None else search_path())
        if found:
            return found
    return None


def install_prefix() -> list[str] | None:
    """What runs apt-get with root's rights: nothing as root, `sudo -n` if it asks no password."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        probe = subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["sudo", "-n"]
    return None


def install_command(packages: list[str]) -> str:
    """The command a person would type to install the packages."""
    return f"sudo apt-get install -y --no-install-recommends {' '.join(packages)}"


def ensure(
    path: str, apt_get: str | None, privileges: Callable[[], list[str] | None] = install_prefix
) -> int:
    """Install the tools not found on `path`; 0 when all are there, else why not, on stderr."""
    lacking = [tool for tool in TOOLS if find(tool, path) is None]
    if not lacking:
        return 0
    prefix = privileges()
    names = " and ".join(tool.name for tool in lacking)
    packages = [tool.package for tool in lacking]
    if apt_get is None or prefix is None:
        why = "apt-get is not available" if apt_get is None else "this user may not run apt-get"
        print(
            f"make test needs {names}, which {'is' if len(lacking) == 1 else 'are'} not"
            f" installed, and {why} (root or passwordless sudo installs them)."
            f" Install the package{'s' if len(packages) > 1 else ''} {', '.join(packages)}:\n"
            f"    {install_command(packages)}",
            file=sys.stderr,
        )
        return EXIT_CANNOT_INSTALL
    print(f"Installing {names} for the tests: apt-get install {' '.join(packages)}", flush=True)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [
        [apt_get, "update", "-q"],
        [apt_get, "install", "-y", "-q", "--no-install-recommends", *packages],
    ]
    for step in steps:
        argv = [*prefix, "env", "DEBIAN_FRONTEND=noninteractive", *step] if prefix else step
        if subprocess.run(argv, env=environment, check=False).returncode != 0:
            print(f"apt-get failed; install by hand: {install_command(packages)}", file=sys.stderr)
            return 1
    still = [tool.name for tool in TOOLS if find(tool, path) is None]
    if still:
        print(f"{' and '.join(still)} still not found after apt-get install", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    """Check, and install through apt-get what is missing when allowed to."""
    return ensure(search_path(), shutil.which("apt-get"))


if __name__ == "__main__":
    sys.exit(main())
