"""The deployment files agree with the code: variables, commands, queues, ports, volumes, limits.

No Docker engine runs here: these read the files, import the settings, and run the compose file's
own shell steps and `flask` commands against the test's servers.
"""

from __future__ import annotations

import ast
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
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


def app_env() -> dict[str, str]:
    """The environment every app container shares (x-app-env)."""
    return compose()["x-app-env"]


def run_compose_script(spec: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a service's `sh -c` command as its container would (compose turns $$ into $)."""
    shell, flag, script = command_of(spec)
    assert (shell, flag) == ("sh", "-c")
    return subprocess.run(
        [shell, flag, script.replace("$$", "$")],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


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
    assert {"metrics-reset", "migrate", "admin-key", "api", "worker", "beat", "flower"} <= set(
        services
    )
    unknown = set(app_env()) - set(KNOWN_VARIABLES)
    assert not unknown, f"x-app-env sets variables app/config.py does not read: {unknown}"


def test_app_services_share_one_environment() -> None:
    for name, spec in app_services().items():
        # Flower's container adds its own basic-auth settings, read by its start script.
        extra = {"FLOWER_USER", "FLOWER_PASSWORD"} if name == "flower" else set()
        shared = {key: value for key, value in spec["environment"].items() if key not in extra}
        assert shared == app_env(), name
        assert set(spec["environment"]) - set(app_env()) == extra, name
    assert app_env()["POSTGRES_HOST"] == "postgres"
    assert app_env()["REDIS_HOST"] == "redis"


def test_compose_commands_match_the_code() -> None:
    from app.tiers import TIER_QUEUES

    services = app_services()
    assert command_of(services["migrate"]) == ["flask", "--app", "wsgi", "db", "upgrade"]
    assert command_of(services["api"]) == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    worker = command_of(services["worker"])
    assert worker[:4] == ["celery", "-A", "workers", "worker"]
    assert worker[worker.index("-Q") + 1] == ",".join(TIER_QUEUES)
    assert command_of(services["beat"])[:4] == ["celery", "-A", "workers", "beat"]
    flower = command_of(services["flower"])[2]
    assert "exec celery -A workers flower --port=5555 --url_prefix=flower --basic-auth=" in flower


def test_only_nginx_is_published_on_loopback_at_the_service_port() -> None:
    services = compose()["services"]
    published = {name: spec["ports"] for name, spec in services.items() if "ports" in spec}
    # The spec's examples call localhost:5003; they reach the API through nginx (listen 80).
    assert published == {"nginx": [f"127.0.0.1:{DEFAULTS.port}:80"]}
    assert "listen 80;" in (ROOT / "deploy" / "nginx.conf").read_text()
    assert app_env()["PORT"] == str(DEFAULTS.port)


def test_flower_is_an_opt_in_profile_nothing_else_waits_for() -> None:
    services = compose()["services"]
    assert services["flower"]["profiles"] == ["flower"]
    for name, spec in services.items():
        assert "flower" not in (spec.get("depends_on") or {}), name
        assert "profiles" not in spec or name == "flower", name
    # A required variable (${VAR:?}) stops `docker compose up` even for an inactive profile.
    assert ":?" not in (ROOT / "docker-compose.yml").read_text()


def test_app_containers_start_after_the_setup_steps() -> None:
    services = app_services()
    for name in ("api", "worker", "beat"):
        depends = services[name]["depends_on"]
        for step in ("metrics-reset", "migrate"):
            assert depends[step] == {"condition": "service_completed_successfully"}, name
    assert services["admin-key"]["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"}
    }
    for step in ("metrics-reset", "migrate", "admin-key"):
        assert services[step]["restart"] == "no"


def test_sample_data_and_metrics_are_mounted_where_the_app_reads_them() -> None:
    for name, spec in app_services().items():
        assert f"./data:{app_env()['DATA_DIR']}:ro" in spec["volumes"], name
        assert f"metrics:{app_env()['PROMETHEUS_MULTIPROC_DIR']}" in spec["volumes"], name
    assert set(compose()["volumes"]) == {"pgdata", "metrics"}
    # The image carries data/ too (a container without the mount still has the samples).
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "data" not in ignored and "data/" not in ignored
    # The file the README's example (the spec's) names is among them.
    readme = (ROOT / "README.md").read_text()
    datasets = set(re.findall(r'"dataset": "([^"]+)"', readme))
    assert datasets and all((ROOT / "data" / name).is_file() for name in datasets)


def test_metrics_reset_empties_the_shared_directory(tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    (shared / "old").mkdir(parents=True)
    (shared / "counter_123.db").write_bytes(b"x")
    (shared / "old" / "gauge_livesum_9.db").write_bytes(b"x")
    env = {"PATH": os.environ["PATH"], "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    done = run_compose_script(compose()["services"]["metrics-reset"], env)
    assert done.returncode == 0, done.stderr
    assert shared.is_dir() and list(shared.iterdir()) == []


def _fake_celery(directory: Path) -> str:
    """A `celery` that prints its arguments, on a PATH in front of the real one."""
    directory.mkdir()
    fake = directory / "celery"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    return f"{directory}:{Path(sys.executable).parent}:{os.environ['PATH']}"


def test_flower_makes_and_prints_a_password_when_none_is_given(tmp_path: Path) -> None:
    path = _fake_celery(tmp_path / "bin")
    flower = compose()["services"]["flower"]
    env = {"PATH": path, "FLOWER_USER": "flower", "FLOWER_PASSWORD": ""}
    done = run_compose_script(flower, env)
    assert done.returncode == 0, done.stderr
    printed = re.search(r"user flower password (\S+)", done.stdout)
    assert printed and len(printed.group(1)) >= 20
    assert f"--basic-auth=flower:{printed.group(1)}" in done.stdout.splitlines()

    chosen = run_compose_script(flower, {**env, "FLOWER_PASSWORD": "s3cret"})
    assert "password" not in chosen.stdout
    assert "--basic-auth=flower:s3cret" in chosen.stdout.splitlines()


def test_admin_key_step_prints_an_admin_key_once(app, client) -> None:
    command = command_of(app_services()["admin-key"])
    assert command[:3] == ["flask", "--app", "wsgi"]
    runner = app.test_cli_runner()

    first = runner.invoke(args=command[3:])
    assert first.exit_code == 0, first.output
    key = first.stdout.strip()
    assert client.get("/audit", headers={"Authorization": f"Bearer {key}"}).status_code == 200

    again = runner.invoke(args=command[3:])
    assert again.exit_code == 0, again.output
    assert again.stdout == "" and "exists already" in again.stderr


def test_makefile_and_devstack_use_the_tier_queues() -> None:
    from app.tiers import TIER_QUEUES

    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^QUEUES := {re.escape(','.join(TIER_QUEUES))}$", makefile, re.M)
    worker = dict(devstack.service_processes())["worker"]
    assert worker[worker.index("-Q") + 1] == ",".join(TIER_QUEUES)


def test_run_starts_one_io_pool_process_per_core_on_the_io_queues() -> None:
    from app.tiers import IO_QUEUES

    processes = dict(devstack.service_processes())
    io_pool = [name for name in processes if devstack.restarts(name)]
    assert len(io_pool) == devstack.IO_PROCESSES == 2
    nodes = set()
    for name in io_pool:
        argv = processes[name]
        assert argv[argv.index("-Q") + 1] == ",".join(IO_QUEUES)
        assert argv[argv.index("-P") + 1] == "threads"
        nodes.add(argv[argv.index("-n") + 1])
    assert len(nodes) == len(io_pool)  # Celery node names must differ
    assert not devstack.restarts("worker") and not devstack.restarts("api")
    assert compose()["services"]["worker-io"]["scale"] == devstack.IO_PROCESSES


def test_run_starts_a_dead_io_pool_process_again_and_stops_for_any_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devstack, "RESTART_PAUSE_SECONDS", 0.05)
    starts = tmp_path / "starts"
    # An I/O process that dies at once, every time; the API exits on its own after a while.
    dying = [sys.executable, "-c", f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(9)"]
    api = [sys.executable, "-c", "import time; time.sleep(1.5)"]
    supervisor = devstack.Supervisor(dict(os.environ), ["io-1", "api"])
    argv_of = {"io-1": dying, "api": api}
    try:
        for name, argv in argv_of.items():
            supervisor.start(name, argv)
        assert devstack.watch(supervisor, argv_of) == 1
    finally:
        supervisor.stop_all()
    assert len(starts.read_text()) >= 3


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
    expected = f"${{MAX_BODY_BYTES:-{DEFAULTS.max_body_bytes}}}"
    assert nginx["environment"]["MAX_BODY"] == app_env()["MAX_BODY_BYTES"] == expected
    assert app_env()["PROXY_HOPS"] == "1"


def test_ci_runs_make_test_alone() -> None:
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    lines = [line.strip() for line in script.read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands == ["set -euo pipefail", 'cd "$(dirname "${BASH_SOURCE[0]}")/.."', "make test"]


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
