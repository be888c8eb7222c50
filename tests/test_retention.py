"""Retention: old finished work is deleted in batches, and no counter the API shows moves."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from app.extensions import db
from app.services import execution, retention
from tests.conftest import ADMIN_KEY


def _run_assigned() -> None:
    """Run every assigned task, as a worker would."""
    for _ in range(10):
        ids = [row[0] for row in db.session.execute(
            text("SELECT id FROM tasks WHERE status = 'assigned' ORDER BY id")
        )]  # fmt: skip
        db.session.commit()
        if not ids:
            return
        execution.run_chunk(ids)


def _age(days: int, where: str = "true") -> None:
    """Pretend the matching tasks, workflows and audit entries happened `days` ago."""
    shift = f"interval '{days} days'"
    db.session.execute(text(
        f"UPDATE tasks SET assigned_at = assigned_at - {shift},"
        f" started_at = started_at - {shift}, finished_at = finished_at - {shift} WHERE {where}"
    ))  # fmt: skip
    db.session.execute(text(f"UPDATE workflows SET finished_at = finished_at - {shift}"))
    db.session.execute(text(f"UPDATE audit_log SET at = at - {shift}"))
    db.session.execute(text(f"UPDATE task_payloads SET created_at = created_at - {shift}"))
    db.session.commit()


def _count(table: str, where: str = "true") -> int:
    return db.session.execute(text(f"SELECT count(*) FROM {table} WHERE {where}")).scalar_one()


def _figures(client, swarm_id: str, bot_id: str) -> dict:
    """Every counter the API shows for the swarm, one of its bots, its mass-actions (with their
    aggregates) and the service."""
    stats = client.get("/bots/stats").get_json()
    stats.pop("timestamp", None)
    mass_actions = [
        client.get(f"/mass-actions/{item['id']}").get_json()
        for item in client.get(f"/swarms/{swarm_id}/mass-actions").get_json()["items"]
    ]
    for view in mass_actions:
        view.pop("eta_seconds", None)
    return {
        "swarm": client.get(f"/swarms/{swarm_id}").get_json(),
        "bot": client.get(f"/bots/{bot_id}").get_json(),
        "mass_actions": mass_actions,
        "stats": stats,
    }


def test_a_purge_deletes_old_finished_work_and_changes_no_counter(client, monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 7)  # several batches even for this small history
    swarm = client.post(
        "/swarms", json={"name": "old", "count": 20, "tier": "standard", "capabilities": []}
    ).get_json()
    for run in range(3):
        assert client.post(f"/swarms/{swarm['id']}/tasks",
                           json={"type": "echo", "data": {"run": run}}).status_code == 202  # fmt: skip
    workflow = client.post("/orchestrate", json={"tasks": [{"type": "echo"}]}).get_json()
    _run_assigned()
    # One task still waits: it is old but not finished, and must stay.
    waiting_bot = client.post("/bots", json={"name": "late", "tier": "L20"}).get_json()
    waiting = client.post(f"/bots/{waiting_bot['id']}/tasks", json={"type": "echo"}).get_json()
    # Its bot is paused, so no worker takes it.
    client.patch(f"/bots/{waiting_bot['id']}", json={"status": "paused"})
    _age(8)
    # Work from yesterday stays too.
    assert client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo"}).status_code == 202
    _run_assigned()
    bot_id = client.get(f"/bots?swarm_id={swarm['id']}&limit=1").get_json()["items"][0]["id"]
    before = _figures(client, swarm["id"], bot_id)
    assert before["bot"]["tasks_completed"] == 4 and before["stats"]["tasks_executed"] == 81
    assert [view["counts"]["completed"] for view in before["mass_actions"]] == [20] * 4
    assert all(view["aggregate"]["tasks"] == {"completed": 20} for view in before["mass_actions"])
    assert _count("tasks") == 20 * 4 + 1 + 1

    report = retention.purge()

    assert (report.tasks, report.workflows) == (60, 1)
    assert _count("tasks") == 20 + 1  # yesterday's mass-action and the waiting task
    assert _count("tasks", f"id = {int(waiting['task_id'].split('-')[1])}") == 1
    assert _count("workflows") == 0
    assert client.get(f"/task/{workflow['task_id']}").status_code == 404
    # The workflow step's payload went; the mass-actions keep theirs, the waiting task uses its.
    assert report.payloads == 1
    assert _count("task_payloads") == 4 + 1
    assert _figures(client, swarm["id"], bot_id) == before
    # A second pass finds nothing more.
    assert retention.purge().tasks == 0


def test_audit_entries_go_after_their_own_retention(client):
    for name in ("a", "b", "c"):
        assert client.post("/bots", json={"name": name, "tier": "standard"}).status_code == 201
    assert _count("audit_log") == 3
    db.session.execute(text("UPDATE audit_log SET at = at - interval '91 days' WHERE id <= 2"))
    db.session.commit()

    assert retention.purge().audit == 2
    assert _count("audit_log") == 1


def test_retention_zero_keeps_everything(client, app, monkeypatch):
    client.post("/orchestrate", json={"tasks": [{"type": "echo"}]})
    _run_assigned()
    _age(400)
    settings = app.config["SETTINGS"]
    monkeypatch.setitem(
        app.config,
        "SETTINGS",
        type(settings)(
            **{**settings.__dict__, "task_retention_days": 0, "audit_retention_days": 0}
        ),
    )

    report = retention.purge()

    assert (report.tasks, report.workflows, report.audit, report.payloads) == (0, 0, 0, 0)
    assert _count("workflows") == 1


def test_the_purge_shows_in_metrics(app, client, monkeypatch):
    monkeypatch.setitem(
        app.config, "SETTINGS", type(app.config["SETTINGS"])(
            **{**app.config["SETTINGS"].__dict__, "metrics_public": True}
        )
    )  # fmt: skip
    bot = client.post("/bots", json={"name": "b", "tier": "standard"}).get_json()
    client.post(f"/bots/{bot['id']}/tasks", json={"type": "echo"})
    _run_assigned()
    _age(30)
    retention.purge()

    body = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).get_data(
        as_text=True
    )

    assert re.search(r'^orchestrator_retention_deleted_total\{kind="tasks"\} 1\.0$', body, re.M)
    assert re.search(r'^orchestrator_retention_deleted_total\{kind="payloads"\} 1\.0$', body, re.M)
    last = re.search(r"^orchestrator_retention_last_run_timestamp_seconds (\S+)$", body, re.M)
    assert last and float(last.group(1)) > 1.7e9


@pytest.mark.parametrize("variable", ["TASK_RETENTION_DAYS", "AUDIT_RETENTION_DAYS"])
def test_a_bad_retention_setting_stops_the_start(variable):
    from app.config import ConfigError, Settings

    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: "-1"})
