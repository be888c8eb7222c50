"""The reconciler re-publishes lost work without multiplying it, and retires poison tasks."""

from __future__ import annotations

from sqlalchemy import text

from app.extensions import db
from app.services import execution
from app.services.outcomes import Outcome, record_outcomes
from app.services.reconciler import BROKER_MARKER_KEY, reconcile
from tests.workers import queue_lengths


def _mass_action(client, count: int, tier: str = "standard") -> str:
    swarm = client.post("/swarms", json={"name": "r", "count": count, "tier": tier}).get_json()
    response = client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo", "data": {}})
    assert response.status_code == 202
    return swarm["id"]


def test_flushed_broker_is_detected_and_work_republished_once(client, redis_client, test_env):
    reconcile()  # sets the marker, as beat would on a healthy broker
    _mass_action(client, 5000)
    assert queue_lengths(test_env["REDIS_URL"])["standard"] == 3  # 5000 ids in chunks of 2000
    redis_client.flushdb()  # every message and the marker are gone

    first = reconcile()
    assert first.republished == 5000
    assert queue_lengths(test_env["REDIS_URL"])["standard"] == 3
    assert redis_client.exists(BROKER_MARKER_KEY)

    second = reconcile()  # the queue holds the work again: nothing more is sent
    assert second.republished == 0
    assert queue_lengths(test_env["REDIS_URL"])["standard"] == 3


def test_a_draining_backlog_is_not_republished(client, test_env):
    reconcile()
    _mass_action(client, 3000)
    db.session.execute(text("UPDATE tasks SET assigned_at = now() - interval '1 hour'"))
    db.session.commit()
    before = queue_lengths(test_env["REDIS_URL"])
    assert reconcile().republished == 0
    assert queue_lengths(test_env["REDIS_URL"]) == before


def test_old_waiting_tasks_are_republished_when_their_queue_is_empty(client, redis_client):
    reconcile()
    _mass_action(client, 10, tier="L20")
    redis_client.delete("L20")  # the message vanished, the marker did not
    assert reconcile().republished == 0  # too young: may still be on its way
    db.session.execute(text("UPDATE tasks SET assigned_at = now() - interval '1 minute'"))
    db.session.commit()
    assert reconcile().republished == 10
    assert redis_client.llen("L20") == 1


def test_expired_lease_is_requeued_then_failed_after_the_attempt_limit(app, client):
    swarm_id = _mass_action(client, 4)
    ids = [row[0] for row in db.session.execute(text("SELECT id FROM tasks ORDER BY id"))]
    limit = app.config["SETTINGS"].max_task_attempts
    for attempt in range(1, limit + 1):
        claimed = execution.claim(ids)  # a worker takes them ... and dies
        assert [c.attempt for c in claimed] == [attempt] * 4
        db.session.execute(text("UPDATE tasks SET lease_expires_at = now() - interval '1 s'"))
        db.session.commit()
        report = reconcile()
        if attempt < limit:
            assert (report.requeued, report.failed) == (4, 0)
    assert (report.requeued, report.failed) == (0, 4)
    rows = db.session.execute(text("SELECT status, attempts, error FROM tasks")).all()
    assert all(status == "failed" and attempts == limit for status, attempts, _ in rows)
    assert all(f"after {limit} attempts" in error for _, _, error in rows)
    swarm = client.get(f"/swarms/{swarm_id}").get_json()
    assert swarm["total_tasks_failed"] == 4
    assert client.get("/bots/stats").get_json()["tasks_failed"] == 4


def test_a_late_worker_cannot_record_over_a_newer_attempt(client):
    _mass_action(client, 1)
    task_id = db.session.execute(text("SELECT id FROM tasks")).scalar_one()
    stale = execution.claim([task_id])[0]
    db.session.execute(text("UPDATE tasks SET lease_expires_at = now() - interval '1 s'"))
    db.session.commit()
    reconcile()
    fresh = execution.claim([task_id])[0]
    assert fresh.attempt == stale.attempt + 1
    late = Outcome(task_id, "completed", {"late": True}, None, stale.attempt)
    assert record_outcomes([late], ("running",), on_workflows=_no_workflow) == 0
    on_time = Outcome(task_id, "completed", {"late": False}, None, fresh.attempt)
    assert record_outcomes([on_time], ("running",), on_workflows=_no_workflow) == 1
    assert client.get("/bots/stats").get_json()["tasks_executed"] == 1


def _no_workflow(workflow_ids: list[str]):
    raise AssertionError(f"a plain mass-action's outcomes called the workflow hook: {workflow_ids}")
