"""The deployment files agree with the code: variables, commands, queues, ports, limits.

No services needed: these read files and import settings only.
"""

from __future__ import annotations

import ast
import os
import re
import runpy
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import KNOWN_VARIABLES, Settings
from deploy import devstack

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "orchestrator-service"
DEFAULTS = Settings.from_env({})


def compose() -> dict[str, Any]:
    """docker-compose.yml as data (anchors resolved, ${...} left as written)."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def app_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the service's own image."""
    services = compose()["services"]
    return {name: spec for name, spec in services.items() if spec.get("image") == IMAGE}


def command_of(spec: dict[str, Any]) -> list[str]:
    """A compose command as an argument list."""
    command = spec["command"]
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def dockerfile_instruction(name: str) -> str:
    """The argument text of the last Dockerfile instruction with this name."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    found = [line.split(None, 1)[1] for line in lines if line.startswith(f"{name} ")]
    assert found, f"Dockerfile has no {name}"
    return found[-1]


def test_app_services_set_only_known_variables() -> None:
    services = app_services()
    assert {"migrate", "api", "worker", "beat", "flower"} <= set(services)
    for name, spec in services.items():
        unknown = set(spec["environment"]) - set(KNOWN_VARIABLES)
        assert not unknown, f"{name} sets variables app/config.py does not read: {unknown}"


def test_app_services_share_one_environment() -> None:
    environments = [spec["environment"] for spec in app_services().values()]
    assert all(env == environments[0] for env in environments)
    assert environments[0]["POSTGRES_HOST"] == "postgres"
    assert environments[0]["REDIS_HOST"] == "redis"


def test_compose_commands_match_the_code() -> None:
    from app.tiers import TIER_QUEUES

    services = app_services()
    assert command_of(services["migrate"]) == ["flask", "--app", "wsgi", "db", "upgrade"]
    assert command_of(services["api"]) == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    worker = command_of(services["worker"])
    assert worker[:4] == ["celery", "-A", "workers", "worker"]
    assert worker[worker.index("-Q") + 1] == ",".join(TIER_QUEUES)
    assert command_of(services["beat"])[:4] == ["celery", "-A", "workers", "beat"]
    flower = command_of(services["flower"])
    assert flower[:4] == ["celery", "-A", "workers", "flower"]
    assert "--port=5555" in flower
    assert any(arg.startswith("--basic-auth=") for arg in flower)
    assert "ports" not in services["flower"], "Flower must only be reachable through nginx"
    assert services["api"]["ports"] == [f"{DEFAULTS.port}:{DEFAULTS.port}"]


def test_makefile_and_devstack_use_the_tier_queues() -> None:
    from app.tiers import TIER_QUEUES

    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^QUEUES := {re.escape(','.join(TIER_QUEUES))}$", makefile, re.M)
    worker = dict(devstack.service_processes())["worker"]
    assert worker[worker.index("-Q") + 1] == ",".join(TIER_QUEUES)


def test_wsgi_module_defines_app() -> None:
    tree = ast.parse((ROOT / "wsgi.py").read_text())
    assigned = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert "app" in assigned


def test_dockerfile_serves_the_default_port() -> None:
    cmd = dockerfile_instruction("CMD")
    assert ast.literal_eval(cmd) == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    assert dockerfile_instruction("EXPOSE") == str(DEFAULTS.port)
    assert dockerfile_instruction("FROM") == "python:3.11-slim"
    assert dockerfile_instruction("USER") not in ("root", "0")


def test_gunicorn_binds_the_default_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert config["bind"] == f"0.0.0.0:{DEFAULTS.port}"
    assert config["workers"] == 2
    assert config["preload_app"] is False


def test_gunicorn_follows_port_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "6123")
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["bind"] == "0.0.0.0:6123"


def test_nginx_matches_service_limits_and_upstreams() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server ${API_UPSTREAM};" in conf
    assert "client_max_body_size ${MAX_BODY};" in conf
    assert "set $flower_upstream ${FLOWER_UPSTREAM};" in conf
    nginx = compose()["services"]["nginx"]
    assert "./deploy/nginx.conf:/etc/nginx/templates/default.conf.template:ro" in nginx["volumes"]
    assert nginx["environment"]["API_UPSTREAM"] == f"api:{DEFAULTS.port}"
    assert nginx["environment"]["FLOWER_UPSTREAM"] == "flower:5555"
    # nginx and the app read the body limit from one variable, with the app's default.
    app_env = next(iter(app_services().values()))["environment"]
    expected = f"${{MAX_BODY_BYTES:-{DEFAULTS.max_body_bytes}}}"
    assert nginx["environment"]["MAX_BODY"] == app_env["MAX_BODY_BYTES"] == expected
    assert app_env["PROXY_HOPS"] == "1"


def test_ci_runs_make_test() -> None:
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    lines = [line.strip() for line in script.read_text().splitlines()]
    assert "set -euo pipefail" in lines
    assert "make test" in lines


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_help_lists_every_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    declared = set(re.findall(r"^([a-zA-Z][\w-]*):(?!=)", makefile, re.M))
    listed = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    shown = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert declared and declared == shown


@pytest.mark.parametrize(
    ("url", "db", "expected"),
    [
        ("redis://127.0.0.1:6379/0", 7, "redis://127.0.0.1:6379/7"),
        ("redis://:secret@cache:6380", 3, "redis://:secret@cache:6380/3"),
        ("unix:///run/redis.sock?db=0", 2, "unix:///run/redis.sock?db=2"),
    ],
)
def test_devstack_points_redis_urls_at_a_db(url: str, db: int, expected: str) -> None:
    assert devstack.with_redis_db(url, db) == expected


def test_devstack_points_database_urls_at_a_database() -> None:
    url = "postgresql+psycopg2://u:p@db:5433/orchestrator?sslmode=require"
    moved = devstack.with_database(url, "orchestrator_test_1")
    assert moved == "postgresql+psycopg2://u:p@db:5433/orchestrator_test_1?sslmode=require"
    assert devstack.libpq_url(moved).startswith("postgresql://u:p@db:5433/")


def test_devstack_never_claims_a_redis_db_another_client_is_still_using(test_env) -> None:
    # A worker left running by an earlier run keeps consuming its DB: a run claiming that DB
    # would lose its messages to it.
    base = test_env["REDIS_URL"]
    free = devstack.claim_redis_db(base)
    devstack.release_redis_db(devstack.with_redis_db(base, free))
    with devstack.redis_client(devstack.with_redis_db(base, free)) as squatter:
        squatter.ping()  # connected to that DB, holding no key, like an idle worker
        taken = devstack.claim_redis_db(base)
        try:
            assert taken != free
        finally:
            devstack.release_redis_db(devstack.with_redis_db(base, taken))
