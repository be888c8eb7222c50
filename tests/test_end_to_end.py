"""A real `celery worker` runs the work; PostgreSQL's counters must come out exact."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from app.extensions import db
from tests.workers import wait_for

pytestmark = pytest.mark.slow  # a worker


def test_mass_action_runs_every_task_once_and_counts_exactly(client, worker):
    swarm = client.post(
        "/swarms", json={"name": "e2e", "count": 3000, "tier": "standard", "capabilities": []}
    ).get_json()
    accepted = client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo", "data": {"n": 1}})
    assert accepted.status_code == 202
    assert accepted.get_json()["assignments"] == 3000

    def done():
        body = client.get(f"/swarms/{swarm['id']}").get_json()
        return body if body["total_tasks_completed"] == 3000 else None

    body = wait_for(done, timeout=60.0)
    assert body["average_tasks_per_bot"] == 1.0
    rows = db.session.execute(
        text("SELECT status, count(*), max(attempts) FROM tasks GROUP BY status")
    ).all()
    assert rows == [("completed", 3000, 1)]
    per_bot = db.session.execute(
        text("SELECT min(completed_tasks), max(completed_tasks), sum(completed_tasks) FROM bots")
    ).one()
    assert tuple(per_bot) == (1, 1, 3000)
    assert client.get("/bots/stats").get_json()["tasks_executed"] == 3000
