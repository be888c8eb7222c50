"""Every example of SPEC.md, exactly as written, answers what the spec shows.

JSON examples go through the Flask test client; the Python `requests` snippets of "Usage
Examples" run verbatim against a real HTTP server on loopback, with only the host and the
placeholder ids substituted.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading

import pytest
from sqlalchemy import text
from werkzeug.serving import make_server

from app import create_app
from app.config import Settings
from app.extensions import db
from tests.workers import WorkerProcess, wait_for

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
MAX_BOTS = 50_000

# ---- request bodies, verbatim from the spec -----------------------------------------------------

CREATE_BOT = {
    "name": "bot-worker-1",
    "tier": "L20",
    "capabilities": ["data_processing", "analytics", "reporting"],
}

CREATE_SWARM = {
    "name": "processing-swarm",
    "count": 5000,
    "tier": "L20",
    "capabilities": ["data_processing", "analytics", "ml_inference"],
}

ASSIGN_TO_BOT = {
    "type": "data_processing",
    "data": {"input_file": "data.csv", "operations": ["clean", "transform", "analyze"]},
}

ASSIGN_TO_SWARM = {
    "type": "distributed_analysis",
    "data": {"dataset": "large_dataset.csv", "analysis_type": "sentiment", "chunk_size": 1000},
}

ORCHESTRATE = {
    "tasks": [
        {"type": "image_generation", "params": {"prompt": "Sunset landscape"}},
        {"type": "crypto_prediction", "params": {"symbol": "BTC"}},
    ],
    "priority": "high",
}

# ---- "Usage Examples", verbatim from the spec -------------------------------------------------

USAGE_CREATE_L20_SWARM = """
import requests

swarm_config = {
    "name": "enterprise-processing-swarm",
    "count": 10000,
    "tier": "L20",
    "capabilities": [
        "data_processing",
        "ml_inference",
        "analytics",
        "reporting"
    ]
}

response = requests.post('http://localhost:5003/swarms', json=swarm_config)
swarm = response.json()
print(f"Created swarm with {swarm['bot_count']} bots")
print(f"Swarm ID: {swarm['id']}")
"""

USAGE_DISTRIBUTE_TASK = """
import requests

task = {
    "type": "mass_data_processing",
    "data": {
        "dataset": "customer_data_2024.csv",
        "operations": ["clean", "enrich", "analyze"],
        "output_format": "json"
    }
}

response = requests.post('http://localhost:5003/swarms/swarm-123/tasks', 
                        json=task)
result = response.json()
print(f"Task distributed to {result['assignments']} bots")
"""  # noqa: W291 - the spec's own trailing space, kept verbatim

USAGE_MONITOR_BOTS = """
import requests

# Get overall statistics
response = requests.get('http://localhost:5003/bots/stats')
stats = response.json()

print(f"Active bots: {stats['active_bots']}")
print(f"Tasks executed: {stats['tasks_executed']}")
print(f"Utilization: {stats['utilization_percent']}%")

# Get specific bot status
response = requests.get('http://localhost:5003/bots/bot-abc-123')
bot = response.json()
print(f"Bot {bot['name']}: {bot['tasks_completed']} tasks completed")
"""

USAGE_MONITOR_SWARM = """
import requests

response = requests.get('http://localhost:5003/swarms/swarm-123')
swarm = response.json()

print(f"Swarm: {swarm['name']}")
print(f"Active bots: {swarm['active_bots']} / {swarm['bot_count']}")
print(f"Total tasks: {swarm['total_tasks_completed']}")
print(f"Avg tasks/bot: {swarm['average_tasks_per_bot']}")
"""


# ---- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(migrated_app):
    """The app served over real HTTP on a free loopback port; yields its base URL."""
    server = make_server("127.0.0.1", 0, migrated_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()
    thread.join(5)


def run_snippet(code: str, base_url: str, **ids: str) -> list[str]:
    """Run a spec snippet against base_url with placeholder ids replaced; its printed lines."""
    assert code.count("http://localhost:5003") >= 1
    code = code.replace("http://localhost:5003", base_url)
    for placeholder, real in ids.items():
        assert placeholder in code
        code = code.replace(placeholder, real)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<SPEC.md snippet>", "exec"), {"__name__": "spec_snippet"})
    return out.getvalue().splitlines()


def complete(client, bot_id: str, task_id: str) -> None:
    response = client.post(f"/bots/{bot_id}/tasks/{task_id}/complete")
    assert response.status_code == 200, response.get_data(as_text=True)


# ---- Bot Management ------------------------------------------------------------------------


def test_create_bot_example(client):
    response = client.post("/bots", json=CREATE_BOT)

    assert response.status_code == 201
    body = response.get_json()
    assert re.fullmatch(r"bot-[0-9a-f]{16}", body["id"])
    assert body["name"] == "bot-worker-1"
    assert body["tier"] == "L20"
    assert body["status"] == "active"
    assert body["tasks_completed"] == 0
    assert ISO.match(body["created_at"])
    assert client.get(f"/bots/{body['id']}").status_code == 200


def test_get_bot_status_example(client):
    bot = client.post("/bots", json=CREATE_BOT).get_json()
    tasks = [
        client.post(f"/bots/{bot['id']}/tasks", json=ASSIGN_TO_BOT).get_json()["task_id"]
        for _ in range(4)
    ]
    for task_id in tasks[:3]:
        complete(client, bot["id"], task_id)

    response = client.get(f"/bots/{bot['id']}")

    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == bot["id"]
    assert body["name"] == "bot-worker-1"
    assert body["tier"] == "L20"
    assert body["status"] == "active"
    assert body["tasks_completed"] == 3
    assert body["total_tasks"] == 4
    assert body["pending_tasks"] == 1
    assert body["completed_tasks"] == 3
    assert ISO.match(body["last_active"])


def test_get_bot_statistics_example(client):
    swarm = client.post("/swarms", json={**CREATE_SWARM, "count": 1000}).get_json()
    client.post("/swarms", json={**CREATE_SWARM, "count": 2500, "tier": "advanced"})
    client.post("/swarms", json={**CREATE_SWARM, "count": 5000, "tier": "standard"})
    bot = client.post("/bots", json=CREATE_BOT).get_json()
    client.patch(f"/swarms/{swarm['id']}", json={"status": "paused"})
    task_id = client.post(f"/bots/{bot['id']}/tasks", json=ASSIGN_TO_BOT).get_json()["task_id"]
    complete(client, bot["id"], task_id)

    response = client.get("/bots/stats")

    assert response.status_code == 200
    body = response.get_json()
    assert body["total_created"] == 8501
    assert body["active_bots"] == 7501
    assert body["tasks_executed"] == 1
    assert body["tier_distribution"] == {"standard": 5000, "advanced": 2500, "L20": 1001}
    assert body["swarm_count"] == 3
    assert body["capacity_remaining"] == MAX_BOTS - 8501
    assert body["utilization_percent"] == 17.0
    assert ISO.match(body["timestamp"])


# ---- Swarm Management ----------------------------------------------------------------------


def test_create_bot_swarm_example(client):
    response = client.post("/swarms", json=CREATE_SWARM)

    assert response.status_code == 201
    body = response.get_json()
    assert re.fullmatch(r"swarm-[0-9a-f]{16}", body["id"])
    assert body["name"] == "processing-swarm"
    assert body["bot_count"] == 5000
    assert body["tier"] == "L20"
    assert len(body["bot_ids"]) == 5000
    assert len(set(body["bot_ids"])) == 5000
    assert all(bot_id.startswith("bot-") for bot_id in body["bot_ids"])
    assert body["status"] == "active"
    assert ISO.match(body["created_at"])
    stored = db.session.execute(
        text("SELECT count(*) FROM bots WHERE swarm_id = :s AND id = ANY(:ids)"),
        {"s": body["id"], "ids": body["bot_ids"]},
    ).scalar_one()
    assert stored == 5000


def test_get_swarm_status_example(client):
    swarm = client.post("/swarms", json={**CREATE_SWARM, "count": 20}).get_json()
    client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo"})
    for bot_id in swarm["bot_ids"][:3]:
        (task,) = client.get(f"/bots/{bot_id}/tasks").get_json()["items"]
        complete(client, bot_id, task["task_id"])
    client.patch(f"/bots/{swarm['bot_ids'][-1]}", json={"status": "paused"})

    response = client.get(f"/swarms/{swarm['id']}")

    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == swarm["id"]
    assert body["name"] == "processing-swarm"
    assert body["bot_count"] == 20
    assert body["tier"] == "L20"
    assert body["active_bots"] == 19
    assert body["total_tasks_completed"] == 3
    assert body["average_tasks_per_bot"] == 0.15
    assert isinstance(body["average_tasks_per_bot"], float)
    assert body["status"] == "active"
    assert body["created_at"] == swarm["created_at"]


# ---- Task Assignment ------------------------------------------------------------------------


def test_assign_task_to_bot_example(client):
    bot = client.post("/bots", json=CREATE_BOT).get_json()

    response = client.post(f"/bots/{bot['id']}/tasks", json=ASSIGN_TO_BOT)

    assert response.status_code == 202
    body = response.get_json()
    assert re.fullmatch(r"task-\d+", body["task_id"])
    assert body["bot_id"] == bot["id"]
    assert body["task_type"] == "data_processing"
    assert body["status"] == "assigned"
    assert ISO.match(body["assigned_at"])
    assert client.get(f"/task/{body['task_id']}").get_json()["data"] == ASSIGN_TO_BOT["data"]


def test_assign_task_to_swarm_example(client):
    swarm = client.post("/swarms", json=CREATE_SWARM).get_json()

    response = client.post(f"/swarms/{swarm['id']}/tasks", json=ASSIGN_TO_SWARM)

    assert response.status_code == 202
    body = response.get_json()
    assert body["swarm_id"] == swarm["id"]
    assert body["task_type"] == "distributed_analysis"
    assert body["assignments"] == 5000
    assert body["status"] == "distributed"
    assert ISO.match(body["timestamp"])
    per_bot = db.session.execute(
        text("SELECT count(*), count(DISTINCT bot_id) FROM tasks WHERE swarm_id = :s"),
        {"s": swarm["id"]},
    ).one()
    assert tuple(per_bot) == (5000, 5000)


def test_complete_bot_task_example(client):
    bot = client.post("/bots", json=CREATE_BOT).get_json()
    task_id = client.post(f"/bots/{bot['id']}/tasks", json=ASSIGN_TO_BOT).get_json()["task_id"]

    # As in the spec: no body, no Content-Type.
    response = client.post(f"/bots/{bot['id']}/tasks/{task_id}/complete")

    assert response.status_code == 200
    body = response.get_json()
    assert (body["task_id"], body["bot_id"], body["status"]) == (task_id, bot["id"], "completed")
    assert client.get(f"/bots/{bot['id']}").get_json()["tasks_completed"] == 1


# ---- Traditional Orchestration -------------------------------------------------------------


@pytest.mark.slow
def test_orchestrate_example_runs_both_steps_against_their_services(app, test_env, fake_service):
    image = fake_service(default=(200, {"image_url": "https://img.example/sunset.png"}))
    crypto = fake_service(default=(200, {"symbol": "BTC", "prediction": 67250.5}))
    urls = {"IMAGE_SERVICE_URL": image.url, "CRYPTO_SERVICE_URL": crypto.url}
    configured = create_app(Settings.from_env({**os.environ, **test_env, **urls}))
    client = configured.test_client()
    worker = WorkerProcess(test_env, extra_env=urls)
    worker.start()
    try:
        response = client.post("/orchestrate", json=ORCHESTRATE)

        assert response.status_code == 202, response.get_data(as_text=True)
        accepted = response.get_json()
        assert re.fullmatch(r"wf-[0-9a-f]{16}", accepted["task_id"])
        assert accepted["priority"] == "high"
        assert [step["task_type"] for step in accepted["steps"]] == [
            "image_generation",
            "crypto_prediction",
        ]

        def finished():
            body = client.get(f"/task/{accepted['task_id']}").get_json()
            return body if body["status"] in ("completed", "failed") else None

        body = wait_for(finished)
    finally:
        worker.stop()
        with configured.app_context():
            db.engine.dispose()

    assert body["status"] == "completed", body
    assert body["task_id"] == accepted["task_id"]
    first, second = body["steps"]
    assert (first["step"], first["status"]) == (0, "completed")
    assert (second["step"], second["status"]) == (1, "completed")
    assert first["result"] == {"image_url": "https://img.example/sunset.png"}
    assert second["result"] == {"symbol": "BTC", "prediction": 67250.5}
    (image_request,) = image.requests
    (crypto_request,) = crypto.requests
    assert (image_request.method, image_request.path) == ("POST", "/generate")
    assert image_request.body["params"] == {"prompt": "Sunset landscape"}
    assert (crypto_request.method, crypto_request.path) == ("POST", "/predict")
    assert crypto_request.body["params"] == {"symbol": "BTC"}
    # Each step is also readable on its own by its task id.
    step = client.get(f"/task/{first['task_id']}").get_json()
    assert step["workflow_id"] == accepted["task_id"]
    assert step["result"] == first["result"]


def test_get_task_status_of_a_workflow_before_any_worker_runs(app, test_env, fake_service):
    urls = {"IMAGE_SERVICE_URL": fake_service().url, "CRYPTO_SERVICE_URL": fake_service().url}
    configured = create_app(Settings.from_env({**os.environ, **test_env, **urls}))
    client = configured.test_client()
    try:
        task_id = client.post("/orchestrate", json=ORCHESTRATE).get_json()["task_id"]

        response = client.get(f"/task/{task_id}")
    finally:
        with configured.app_context():
            db.engine.dispose()

    assert response.status_code == 200
    body = response.get_json()
    assert (body["task_id"], body["status"], body["priority"]) == (task_id, "queued", "high")
    assert [step["status"] for step in body["steps"]] == ["assigned", "assigned"]


# ---- Health --------------------------------------------------------------------------------


def test_health_check_example(client):
    response = client.get("/health")

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "healthy"
    assert body["service"] == "orchestrator"
    assert body["redis"] == "connected"
    assert ISO.match(body["timestamp"])


# ---- Usage Examples, run as written --------------------------------------------------------


def test_usage_create_l20_bot_swarm(client, live_server):
    lines = run_snippet(USAGE_CREATE_L20_SWARM, live_server)

    assert lines[0] == "Created swarm with 10000 bots"
    match = re.fullmatch(r"Swarm ID: (swarm-[0-9a-f]{16})", lines[1])
    assert match, lines
    swarm = client.get(f"/swarms/{match.group(1)}").get_json()
    assert (swarm["name"], swarm["tier"], swarm["bot_count"]) == (
        "enterprise-processing-swarm",
        "L20",
        10000,
    )
    assert len(lines) == 2


def test_usage_distribute_task_across_swarm(client, live_server):
    swarm = client.post(
        "/swarms",
        json={
            "name": "enterprise-processing-swarm",
            "count": 10000,
            "tier": "L20",
            "capabilities": ["data_processing", "ml_inference", "analytics", "reporting"],
        },
    ).get_json()

    lines = run_snippet(USAGE_DISTRIBUTE_TASK, live_server, **{"swarm-123": swarm["id"]})

    assert lines == ["Task distributed to 10000 bots"]
    stored = db.session.execute(
        text("SELECT count(*) FROM tasks WHERE swarm_id = :s AND type = 'mass_data_processing'"),
        {"s": swarm["id"]},
    ).scalar_one()
    assert stored == 10000


def test_usage_monitor_bot_performance(client, live_server):
    client.post("/swarms", json={**CREATE_SWARM, "count": 2499})
    bot = client.post("/bots", json=CREATE_BOT).get_json()
    for _ in range(2):
        task_id = client.post(f"/bots/{bot['id']}/tasks", json={"type": "echo"}).get_json()
        complete(client, bot["id"], task_id["task_id"])

    lines = run_snippet(USAGE_MONITOR_BOTS, live_server, **{"bot-abc-123": bot["id"]})

    assert lines == [
        "Active bots: 2500",
        "Tasks executed: 2",
        "Utilization: 5.0%",
        "Bot bot-worker-1: 2 tasks completed",
    ]


def test_usage_monitor_swarm_health(client, live_server):
    swarm = client.post("/swarms", json={**CREATE_SWARM, "count": 8}).get_json()
    client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo"})
    for bot_id in swarm["bot_ids"][:2]:
        (task,) = client.get(f"/bots/{bot_id}/tasks").get_json()["items"]
        complete(client, bot_id, task["task_id"])
    client.patch(f"/bots/{swarm['bot_ids'][0]}", json={"status": "paused"})

    lines = run_snippet(USAGE_MONITOR_SWARM, live_server, **{"swarm-123": swarm["id"]})

    assert lines == [
        "Swarm: processing-swarm",
        "Active bots: 7 / 8",
        "Total tasks: 2",
        "Avg tasks/bot: 0.25",
    ]
