"""The `orchestrator` command against the running app on a loopback port (and a real worker)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from werkzeug.serving import make_server

from orchestrator_cli.commands import cli
from orchestrator_cli.http import (
    EXIT_CANNOT_CONNECT,
    EXIT_REFUSED,
    EXIT_TIMED_OUT,
    EXIT_WORK_FAILED,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "orchestrator"


def serve(wsgi_app) -> Iterator[str]:
    """Serve a WSGI app on a free loopback port in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def base_url(migrated_app) -> Iterator[str]:
    yield from serve(migrated_app)


def run(base_url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--url", base_url, *args], catch_exceptions=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_swarm(client, count: int, tier: str = "standard") -> str:
    response = client.post(
        "/swarms", json={"name": "cli", "count": count, "tier": tier, "capabilities": []}
    )
    assert response.status_code == 201
    return response.get_json()["id"]


# ---- swarms --------------------------------------------------------------------------------


def test_swarm_create_prints_the_id_and_count(base_url, client) -> None:
    result = run(
        base_url, "swarm", "create", "--count", "40", "--tier", "l20", "--capability", "analytics"
    )
    assert result.exit_code == 0, result.output
    swarm_id = result.stdout.strip().splitlines()[-1]
    assert swarm_id.startswith("swarm-")
    assert f"Created swarm {swarm_id}" in result.stdout
    assert "40 L20 bots" in result.stdout
    swarm = client.get(f"/swarms/{swarm_id}").get_json()
    assert (swarm["bot_count"], swarm["tier"], swarm["capabilities"]) == (40, "L20", ["analytics"])


def test_json_flag_prints_the_services_answer(base_url) -> None:
    result = run(base_url, "--json", "swarm", "create", "--count", "3", "--tier", "advanced")
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert created["bot_count"] == 3 and len(created["bot_ids"]) == 3


def test_bad_count_exits_4_with_the_services_message(base_url, client) -> None:
    result = run(base_url, "swarm", "create", "--count", "0", "--tier", "L20")
    assert result.exit_code == EXIT_REFUSED
    assert "HTTP 422" in result.stderr
    assert "count: Must be between 1 and 50000." in result.stderr
    assert result.stdout == ""
    assert client.get("/bots/stats").get_json()["total_created"] == 0


def test_unknown_swarm_exits_4(base_url) -> None:
    result = run(base_url, "swarm", "assign", "swarm-nope", "--type", "echo")
    assert result.exit_code == EXIT_REFUSED
    assert "HTTP 404" in result.stderr


def test_data_that_is_not_json_is_a_usage_error(base_url) -> None:
    result = run(base_url, "swarm", "assign", "swarm-x", "--type", "echo", "--data", "{nope")
    assert result.exit_code == 2
    assert "--data" in result.stderr


@pytest.mark.slow
def test_assign_wait_counts_every_task_including_a_second_round(base_url, client, worker) -> None:
    swarm_id = make_swarm(client, 300)
    for _ in range(2):
        result = run(
            base_url,
            "swarm",
            "assign",
            swarm_id,
            "--type",
            "echo",
            "--data",
            '{"note": "cli"}',
            "--wait",
            "--interval",
            "0.1",
            "--wait-timeout",
            "60",
        )
        assert result.exit_code == 0, result.output
        lines = result.stdout.strip().splitlines()
        assert lines[0] == f"Assigned echo to 300 bots of swarm {swarm_id}."
        mass_action_id = lines[1].removeprefix("Mass-action ")
        assert lines[-1] == (
            f"Mass-action {mass_action_id} completed: all 300 tasks counted: "
            "300 completed, 0 failed, 0 cancelled."
        )
    assert client.get(f"/swarms/{swarm_id}").get_json()["total_tasks_completed"] == 600


# ---- mass-actions --------------------------------------------------------------------------


@pytest.mark.slow
def test_mass_actions_watch_exits_0_when_every_task_completed(base_url, client, worker) -> None:
    swarm_id = make_swarm(client, 500)
    started = client.post(f"/swarms/{swarm_id}/tasks", json={"type": "echo"}).get_json()
    mass_action_id = started["mass_action_id"]

    result = run(base_url, "mass-actions", "watch", mass_action_id, "--interval", "0.1")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"Mass-action {mass_action_id} completed: all 500 tasks counted: "
        "500 completed, 0 failed, 0 cancelled."
    )
    as_json = json.loads(run(base_url, "--json", "mass-actions", "watch", mass_action_id).stdout)
    assert as_json["counts"]["completed"] == 500 and as_json["status"] == "completed"


def test_mass_actions_watch_exits_1_when_cancelled_and_5_when_it_gives_up(base_url, client) -> None:
    swarm_id = make_swarm(client, 20)
    waiting = client.post(f"/swarms/{swarm_id}/tasks", json={"type": "echo"}).get_json()
    cancelled = client.post(f"/swarms/{swarm_id}/tasks", json={"type": "echo"}).get_json()

    gave_up = run(
        base_url, "mass-actions", "watch", waiting["mass_action_id"], "--wait-timeout", "0.3"
    )
    assert gave_up.exit_code == EXIT_TIMED_OUT
    assert "Gave up after 0.3 s: 0 of 20 tasks ended" in gave_up.stderr

    cancel = run(base_url, "mass-actions", "cancel", cancelled["mass_action_id"])
    assert cancel.exit_code == 0, cancel.output
    assert "20 tasks cancelled, 0 still running" in cancel.stdout
    watched = run(base_url, "mass-actions", "watch", cancelled["mass_action_id"])
    assert watched.exit_code == EXIT_WORK_FAILED
    assert "cancelled: all 20 tasks counted: 0 completed, 0 failed, 20 cancelled." in watched.stdout


def test_mass_actions_results_writes_ndjson_to_stdout(base_url, client) -> None:
    swarm_id = make_swarm(client, 30)
    mass_action_id = client.post(
        f"/swarms/{swarm_id}/tasks", json={"type": "echo", "data": {"n": 1}}
    ).get_json()["mass_action_id"]
    pages = client.get(f"/mass-actions/{mass_action_id}/results?limit=1000").get_json()["items"]

    result = run(base_url, "mass-actions", "results", mass_action_id)

    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == pages
    after = run(
        base_url, "mass-actions", "results", mass_action_id, "--after", pages[24]["task_id"]
    )
    assert [json.loads(line) for line in after.stdout.splitlines()] == pages[25:]
    missing = run(base_url, "mass-actions", "results", "ma-0000000000000000")
    assert missing.exit_code == EXIT_REFUSED
    assert "HTTP 404" in missing.stderr and missing.stdout == ""
    listed = run(base_url, "--json", "mass-actions", "list", swarm_id)
    assert [item["id"] for item in json.loads(listed.stdout)["items"]] == [mass_action_id]


# ---- stats, tasks, services ----------------------------------------------------------------


def test_bots_stats_shows_the_figures_of_the_api(base_url, client) -> None:
    make_swarm(client, 1234, tier="advanced")
    make_swarm(client, 7)
    expected = client.get("/bots/stats").get_json()
    result = run(base_url, "bots", "stats")
    assert result.exit_code == 0, result.output
    rows = {
        cells[0]: cells[1]
        for line in result.stdout.splitlines()
        if len(cells := [cell.strip() for cell in line.strip("│ ").split("│")]) == 2
    }
    for key in ("total_created", "active_bots", "tasks_executed", "swarm_count"):
        assert rows[key] == f"{expected[key]:,}", key
    assert rows["capacity_remaining"] == "48,759"
    assert rows["tier advanced"] == "1,234"
    assert rows["tier standard"] == "7"

    as_json = json.loads(run(base_url, "bots", "stats", "--json").stdout)
    assert {k: v for k, v in as_json.items() if k != "timestamp"} == {
        k: v for k, v in expected.items() if k != "timestamp"
    }


@pytest.mark.slow
def test_task_watch_follows_a_workflow_to_completion(base_url, client, worker) -> None:
    workflow = client.post(
        "/orchestrate",
        json={
            "tasks": [
                {"name": "first", "type": "echo", "params": {"n": 1}},
                {"name": "second", "type": "echo", "depends_on": ["first"], "params": {"n": 2}},
            ]
        },
    ).get_json()
    result = run(base_url, "task", "watch", workflow["task_id"], "--interval", "0.1")
    assert result.exit_code == 0, result.output
    step_rows = [line for line in result.stdout.splitlines() if "echo" in line]
    assert len(step_rows) == 2
    assert all("completed" in row for row in step_rows)
    assert "first" in step_rows[0] and "second" in step_rows[1]
    assert f"{workflow['task_id']}: completed" in result.stdout


def test_task_watch_exits_1_on_a_cancelled_workflow(base_url, client) -> None:
    workflow = client.post("/orchestrate", json={"tasks": [{"type": "echo"}]}).get_json()
    assert client.delete(f"/task/{workflow['task_id']}").status_code == 200
    result = run(base_url, "task", "watch", workflow["task_id"])
    assert result.exit_code == EXIT_WORK_FAILED
    assert "cancelled" in result.stdout


def test_services_lists_every_service(base_url, client) -> None:
    names = [item["name"] for item in client.get("/services").get_json()["items"]]
    result = run(base_url, "services")
    assert result.exit_code == 0, result.output
    assert names and all(name in result.stdout for name in names)


def test_services_on_a_server_without_the_endpoint_says_so(base_url) -> None:
    result = run(f"{base_url}/older-version", "services")
    assert result.exit_code == EXIT_REFUSED
    assert "has no /services endpoint (HTTP 404)" in result.stderr


# ---- connection problems and headers -------------------------------------------------------


def test_unreachable_url_exits_3_quickly_from_the_installed_command() -> None:
    assert SCRIPT.exists(), "`make venv` installs the `orchestrator` command"
    env = {**os.environ, "ORCHESTRATOR_URL": f"http://127.0.0.1:{free_port()}"}
    started = time.monotonic()
    finished = subprocess.run(
        [str(SCRIPT), "bots", "stats"], env=env, capture_output=True, text=True, timeout=30
    )
    assert finished.returncode == EXIT_CANNOT_CONNECT
    assert time.monotonic() - started < 5
    assert "Cannot connect to http://127.0.0.1:" in finished.stderr


def test_python_m_reads_the_url_from_the_environment(base_url, client) -> None:
    make_swarm(client, 5)
    env = {**os.environ, "ORCHESTRATOR_URL": base_url}
    finished = subprocess.run(
        [sys.executable, "-m", "orchestrator_cli", "--json", "bots", "stats"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["total_created"] == 5


def test_a_server_that_never_answers_times_out_with_exit_3() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts connections in the kernel, never answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        result = CliRunner().invoke(cli, ["--url", url, "--timeout", "0.5", "bots", "stats"])
    assert result.exit_code == EXIT_CANNOT_CONNECT
    assert time.monotonic() - started < 3
    assert "did not answer GET /bots/stats within 0.5 s" in result.stderr


def test_api_key_is_sent_as_a_bearer_token(monkeypatch) -> None:
    # Without a key the client sends nothing of its own; no netrc either, for this check.
    monkeypatch.delenv("NETRC", raising=False)
    seen: list[str | None] = []

    def echo_headers(environ, start_response):
        seen.append(environ.get("HTTP_AUTHORIZATION"))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"total_created": 0}']

    for url in serve(echo_headers):
        env = {"ORCHESTRATOR_URL": url, "ORCHESTRATOR_API_KEY": "k-123"}
        assert CliRunner(env=env).invoke(cli, ["--json", "bots", "stats"]).exit_code == 0
        assert CliRunner().invoke(cli, ["--url", url, "--json", "bots", "stats"]).exit_code == 0
    assert seen == ["Bearer k-123", None]
