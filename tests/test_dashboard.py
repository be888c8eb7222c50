"""The swarm dashboard: its figures (/dashboard/data), its page, and a real browser watching a
running mass-action through a real worker."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path
from types import MappingProxyType

import pytest
import requests
from sqlalchemy import text
from werkzeug.serving import make_server

from app.extensions import db
from app.services import dashboard, execution, registry
from deploy import system_tools
from tests.conftest import ADMIN_KEY
from tests.plugins import faults
from tests.workers import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "dashboard.png"


def _swarm(client, name: str, count: int, tier: str, capabilities=()) -> dict:
    response = client.post(
        "/swarms",
        json={"name": name, "count": count, "tier": tier, "capabilities": list(capabilities)},
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_dashboard_data_reports_capacity_bots_progress_queues_and_services(client, redis_client):
    swarm = _swarm(client, "dash-swarm", 10, "L20")
    client.patch(f"/bots/{swarm['bot_ids'][0]}", json={"status": "paused"})
    assert client.get("/dashboard/data").status_code == 200  # first throughput sample: 0 done
    assigned = client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo", "data": {}})
    assert assigned.get_json()["assignments"] == 9
    ids = [row[0] for row in db.session.execute(text("SELECT id FROM tasks ORDER BY id"))]
    execution.run_chunk(ids[:6])  # no worker: the chunk's message stays queued
    db.session.remove()
    time.sleep(0.05)
    redis_client.delete(dashboard.SAMPLE_LOCK_KEY)  # allow a second sample within the second

    data = client.get("/dashboard/data").get_json()

    assert data["capacity"] == {
        "max_bots": 50000,
        "live_bots": 10,
        "remaining": 49990,
        "utilization_percent": 0.02,
    }
    assert data["bots"]["L20"] == {"active": 9, "paused": 1, "retired": 0}
    assert data["bots"]["standard"] == {"active": 0, "paused": 0, "retired": 0}
    assert data["tasks"] == {"assigned": 9, "completed": 6, "failed": 0}
    [row] = data["swarms"]
    assert (row["name"], row["bot_count"], row["active_bots"]) == ("dash-swarm", 10, 9)
    assert (row["assigned"], row["completed"], row["failed"], row["progress"]) == (9, 6, 0, 0.6667)
    [running] = data["mass_actions"]
    assert running["id"] == assigned.get_json()["mass_action_id"]
    assert (running["task_type"], running["tier"], running["status"]) == ("echo", "L20", "running")
    assert (running["total"], running["completed"], running["assigned"]) == (9, 6, 3)
    assert running["percent"] == 66.67
    assert data["queues"]["L20"]["depth"] == 1
    assert data["queues"]["standard"]["depth"] == 0
    assert data["health"]["postgres"] == "connected"
    throughput = data["throughput"]
    assert throughput["available"] and len(throughput["buckets"]) == 30
    assert sum(b for b in throughput["buckets"] if b is not None) == pytest.approx(6, abs=0.2)
    assert throughput["completions_last_minute"] == 6
    services = {item["name"]: item for item in data["services"]["items"]}
    assert services["image"]["state"] == "not configured"


def test_throughput_spreads_each_rise_over_the_time_between_samples() -> None:
    now = 10_000.0
    buckets = dashboard.completions_per_bucket([(now - 25, 0), (now - 5, 200)], now)
    assert buckets[-3:] == [50.0, 100.0, 50.0]
    assert buckets[:-3] == [None] * 27
    # A counter that went down (tables emptied) counts as no completions, not negative ones.
    assert dashboard.completions_per_bucket([(now - 8, 100), (now - 2, 3)], now)[-1] == 0.0


def test_dashboard_says_so_when_the_registry_cannot_be_read(app, monkeypatch) -> None:
    def unreadable():
        raise RuntimeError("registry down")

    monkeypatch.setattr(registry, "list_services", unreadable)
    assert dashboard.downstream_services() == {
        "available": False,
        "items": [],
        "message": "service registry unavailable",
    }


def test_dashboard_page_is_served_whole_by_the_app_and_kept_out_of_openapi(client):
    _swarm(client, "page-swarm", 3, "advanced")
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "page-swarm" in html and 'data-progress="0.0"' in html
    assert "http://" not in html and "https://" not in html, "no CDN or external asset"
    for asset in ("/static/dashboard.js", "/static/dashboard.css"):
        assert asset in html and client.get(asset).status_code == 200
    paths = client.get("/openapi.json").get_json()["paths"]
    assert not [path for path in paths if path.startswith("/dashboard")]


# ---- a real browser -----------------------------------------------------------------------


def _chromium() -> str:
    found = system_tools.find(system_tools.CHROMIUM)
    if not found:
        pytest.fail(
            "Chromium is not installed, so the dashboard cannot be checked in a browser: "
            "`make test` installs it (python3 -m deploy.system_tools)"
        )
    return found


def _run_chromium(url: str, profile: Path, *args: str) -> str:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-quic",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
        url,
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"chromium did not finish in 60 s: {err.decode()[-2000:]}")
    assert process.returncode == 0, err.decode()[-2000:]
    return out.decode()


@pytest.fixture()
def live_server(app):
    """The app on a free loopback port, served from a thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture()
def sleepy_worker(app, test_env, monkeypatch):
    """A real worker that also knows the `sleep` task type (tests/plugins/faults.py)."""
    [sleep] = [t for t in faults.TASK_TYPES if t.name == "sleep"]
    # The in-process API's catalogue, for this test only.
    monkeypatch.setitem(
        app.extensions,
        "task_types",
        MappingProxyType({**app.extensions["task_types"], "sleep": sleep}),
    )
    process = WorkerProcess(test_env, extra_env={"TASK_TYPE_PLUGINS": "tests.plugins.faults"})
    process.start()
    yield process
    process.stop()


@pytest.mark.browser
def test_browser_shows_a_running_mass_action(live_server, sleepy_worker, tmp_path):
    api = requests.Session()

    def swarm(name: str, count: int, tier: str, capabilities=()) -> str:
        body = {"name": name, "count": count, "tier": tier, "capabilities": list(capabilities)}
        response = api.post(f"{live_server}/swarms", json=body, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def mass_action(swarm_id: str, task_type: str, data: dict) -> str:
        response = api.post(
            f"{live_server}/swarms/{swarm_id}/tasks", json={"type": task_type, "data": data}
        )
        assert response.status_code == 202, response.text
        return response.json()["mass_action_id"]

    api.get(f"{live_server}/dashboard/data")  # the first throughput sample
    enterprise = swarm("enterprise-processing-swarm", 20_000, "L20")
    sleepers = swarm("steady-sleepers", 1_000, "standard")
    ledger = swarm("ledger-cleaners", 300, "advanced", ["data_processing"])
    reserve = swarm("reserve-fleet", 5_000, "advanced")
    api.patch(f"{live_server}/swarms/{reserve}", json={"status": "paused"})
    mass_action(enterprise, "echo", {"note": "warm-up"})
    sleeping = mass_action(sleepers, "sleep", {"seconds": 0.02})  # about 10 s for two processes
    # Reads a file that is not there: every task fails, so the bar shows failures too.
    mass_action(ledger, "data_processing", {"input_file": "missing.csv", "operations": ["clean"]})

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        figures = {s["id"]: s for s in api.get(f"{live_server}/dashboard/data").json()["swarms"]}
        if figures[sleepers]["completed"] >= 100:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no progress in 30 s; worker log:\n{sleepy_worker.log()[-3000:]}")
    assert figures[sleepers]["completed"] < 1_000, "finished too soon to watch it running"

    # The key rides in the fragment, which the page keeps and the browser never sends.
    page = f"{live_server}/dashboard#key={ADMIN_KEY}"
    dom = _run_chromium(page, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom")

    polls = re.search(r'<body[^>]*data-polls="(\d+)"', dom)
    assert polls and int(polls.group(1)) >= 1, (
        "the page never refreshed itself from /dashboard/data"
    )
    row = re.search(
        rf'<li class="swarm" data-swarm-id="{sleepers}" data-progress="([\d.]+)"(.*?)</li>',
        dom,
        re.S,
    )
    assert row, "the running swarm is not on the page"
    assert float(row.group(1)) > 0
    assert '<span class="swarm-name">steady-sleepers</span>' in row.group(2)
    assert re.search(r'class="seg-done"', row.group(2))
    running = re.search(
        rf'<li class="mass-action" data-mass-action-id="{sleeping}" data-percent="([\d.]+)"(.*?)</li>',
        dom,
        re.S,
    )
    assert running, "the running mass-action is not on the page"
    assert float(running.group(1)) > 0
    assert 'class="seg-done"' in running.group(2)
    assert "ended (" in running.group(2)

    # The README's picture is refreshed only on request, so a test run leaves the tree clean.
    shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / "dashboard.png"
    _run_chromium(
        page,
        tmp_path / "profile-shot",
        "--virtual-time-budget=3000",
        "--window-size=1280,880",
        f"--screenshot={shot}",
    )
    assert shot.stat().st_size > 10_000
