"""Workflows: DAGs, references, retries, failure policy, cancellation and deadlines.

Steps run through app.services.execution.run_chunk, the function a worker runs for each message,
against real HTTP servers on loopback standing in for the AI services.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from app import create_app
from app.config import Settings
from app.extensions import db
from app.services import execution
from app.services.reconciler import reconcile
from tests.fake_services import Scripted


@pytest.fixture()
def services(app, fake_service, test_env):
    """An app on the (emptied) database whose image and crypto services are fake servers the
    test scripts."""

    def build(image=(), crypto=(), image_default=None):
        image_server = fake_service(responses=image, default=image_default)
        crypto_server = fake_service(responses=crypto)
        settings = Settings.from_env(
            {
                **os.environ,
                **test_env,
                "IMAGE_SERVICE_URL": image_server.url,
                "CRYPTO_SERVICE_URL": crypto_server.url,
            }
        )
        app = create_app(settings)
        return app, image_server, crypto_server

    return build


def run_ready_steps() -> int:
    """Run every step that is ready, as a worker would; returns how many ran."""
    ids = [
        row[0]
        for row in db.session.execute(
            text("SELECT id FROM tasks WHERE status = 'assigned' ORDER BY id")
        )
    ]
    db.session.commit()
    return execution.run_chunk(ids)["claimed"] if ids else 0


def run_to_the_end(limit: int = 10) -> None:
    for _ in range(limit):
        if not run_ready_steps():
            return


def steps_by_name(workflow: dict) -> dict[str, dict]:
    return {step["name"]: step for step in workflow["steps"]}


def test_spec_example_runs_both_steps_in_parallel(services):
    app, image, crypto = services(
        image=[Scripted(body={"image_url": "http://img/1.png"})],
        crypto=[Scripted(body={"prediction": "up", "confidence": 0.7})],
    )
    client = app.test_client()
    with app.app_context():
        response = client.post(
            "/orchestrate",
            json={
                "tasks": [
                    {"type": "image_generation", "params": {"prompt": "Sunset landscape"}},
                    {"type": "crypto_prediction", "params": {"symbol": "BTC"}},
                ],
                "priority": "high",
            },
        )
        assert response.status_code == 202
        workflow = response.get_json()
        assert workflow["status"] == "queued" and workflow["tier"] == "advanced"
        assert [s["status"] for s in workflow["steps"]] == ["assigned", "assigned"]

        assert run_ready_steps() == 2
        done = client.get(f"/task/{workflow['task_id']}").get_json()
    assert done["status"] == "completed"
    steps = done["steps"]
    assert steps[0]["result"] == {"image_url": "http://img/1.png"}
    assert steps[1]["result"] == {"prediction": "up", "confidence": 0.7}
    assert image.requests[0].body["params"] == {"prompt": "Sunset landscape"}
    assert crypto.requests[0].body["params"] == {"symbol": "BTC"}
    assert all(step["attempts"] == 1 and step["duration_ms"] is not None for step in steps)


def test_three_step_dag_passes_results_along(services):
    app, image, _ = services(image=[Scripted(body={"text": "a red sunset"})])
    client = app.test_client()
    with app.app_context():
        workflow = client.post(
            "/orchestrate",
            json={
                "tasks": [
                    {"name": "caption", "type": "image_generation", "params": {"prompt": "x"}},
                    {
                        "name": "shout",
                        "type": "echo",
                        "depends_on": ["caption"],
                        "params": {"caption": {"$ref": "steps.caption.result.text"}},
                    },
                    {
                        "name": "report",
                        "type": "echo",
                        "depends_on": ["shout"],
                        "params": {"final": {"$ref": "steps.shout.result.echo.caption"}},
                    },
                ]
            },
        ).get_json()
        assert [s["status"] for s in workflow["steps"]] == ["assigned", "waiting", "waiting"]
        run_to_the_end()
        done = client.get(f"/task/{workflow['task_id']}").get_json()
    assert done["status"] == "completed"
    assert steps_by_name(done)["report"]["result"] == {"echo": {"final": "a red sunset"}}
    assert steps_by_name(done)["shout"]["depends_on"] == ["caption"]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (
            [
                {"name": "a", "type": "echo", "depends_on": ["b"]},
                {"name": "b", "type": "echo", "depends_on": ["a"]},
            ],
            "cycle",
        ),
        ([{"name": "a", "type": "echo", "depends_on": ["nope"]}], "unknown steps: nope"),
        (
            [
                {"name": "a", "type": "echo"},
                {"name": "b", "type": "echo", "params": {"x": {"$ref": "steps.a.result"}}},
            ],
            "not in its depends_on",
        ),
        ([{"name": "a", "type": "echo"}, {"name": "a", "type": "echo"}], "unique"),
    ],
)
def test_bad_graphs_are_refused_and_nothing_is_stored(client, tasks, message):
    response = client.post("/orchestrate", json={"tasks": tasks})
    assert response.status_code == 422
    assert message in response.get_json()["error"]["message"]
    assert db.session.execute(text("SELECT count(*) FROM workflows")).scalar_one() == 0
    assert db.session.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 0


def test_transient_failure_is_retried_then_succeeds(services):
    app, image, _ = services(image=[Scripted(status=503), Scripted(body={"ok": 1})])
    with app.app_context():
        workflow = (
            app.test_client()
            .post(
                "/orchestrate",
                json={"tasks": [{"type": "image_generation", "params": {}, "retries": 2}]},
            )
            .get_json()
        )
        run_ready_steps()
        done = app.test_client().get(f"/task/{workflow['task_id']}").get_json()
    assert done["status"] == "completed"
    assert len(image.requests) == 2


def test_client_error_is_final_and_fails_the_workflow(services):
    app, image, _ = services(image=[Scripted(status=400, body={"error": "bad prompt"})])
    with app.app_context():
        workflow = (
            app.test_client()
            .post(
                "/orchestrate",
                json={
                    "tasks": [
                        {"name": "img", "type": "image_generation", "params": {}, "retries": 3},
                        {"name": "after", "type": "echo", "depends_on": ["img"]},
                    ]
                },
            )
            .get_json()
        )
        run_to_the_end()
        done = app.test_client().get(f"/task/{workflow['task_id']}").get_json()
    assert len(image.requests) == 1
    assert done["status"] == "failed"
    assert "400" in steps_by_name(done)["img"]["error"]
    assert steps_by_name(done)["after"]["status"] == "cancelled"
    assert "img" in done["error"]


def test_timeout_fails_the_step(services):
    app, _, _ = services(image_default=Scripted(delay=1.0))
    with app.app_context():
        workflow = (
            app.test_client()
            .post(
                "/orchestrate",
                json={
                    "tasks": [
                        {"type": "image_generation", "params": {}, "timeout_s": 0.2, "retries": 0}
                    ]
                },
            )
            .get_json()
        )
        run_ready_steps()
        done = app.test_client().get(f"/task/{workflow['task_id']}").get_json()
    assert done["status"] == "failed"
    assert "time" in done["steps"][0]["error"].lower()


def test_continue_on_failure_lets_other_branches_finish(services):
    app, _, _ = services(image=[Scripted(status=422)])
    with app.app_context():
        workflow = (
            app.test_client()
            .post(
                "/orchestrate",
                json={
                    "tasks": [
                        {"name": "img", "type": "image_generation", "on_failure": "continue"},
                        {"name": "needs-img", "type": "echo", "depends_on": ["img"]},
                        {"name": "independent", "type": "echo", "params": {"v": 1}},
                    ]
                },
            )
            .get_json()
        )
        run_to_the_end()
        done = app.test_client().get(f"/task/{workflow['task_id']}").get_json()
    steps = steps_by_name(done)
    assert done["status"] == "completed"
    assert steps["img"]["status"] == "failed"
    assert steps["needs-img"]["status"] == "cancelled"
    assert steps["independent"]["result"] == {"echo": {"v": 1}}


def test_cancelled_steps_never_start(client):
    workflow = client.post(
        "/orchestrate",
        json={
            "tasks": [
                {"name": "a", "type": "echo"},
                {"name": "b", "type": "echo", "depends_on": ["a"]},
            ]
        },
    ).get_json()
    cancelled = client.delete(f"/task/{workflow['task_id']}")
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    assert run_ready_steps() == 0
    ids = [row[0] for row in db.session.execute(text("SELECT id FROM tasks"))]
    db.session.commit()
    assert execution.run_chunk(ids)["claimed"] == 0  # a late message changes nothing
    again = client.post(f"/task/{workflow['task_id']}/cancel")
    assert again.status_code == 200
    rows = db.session.execute(text("SELECT status, attempts FROM tasks")).all()
    assert rows == [("cancelled", 0), ("cancelled", 0)]
    assert client.get("/bots/stats").get_json()["tasks_executed"] == 0


def test_a_finished_workflow_cannot_be_cancelled(client):
    workflow = client.post("/orchestrate", json={"tasks": [{"type": "echo"}]}).get_json()
    run_ready_steps()
    response = client.delete(f"/task/{workflow['task_id']}")
    assert response.status_code == 409


def test_overdue_workflow_fails_at_its_deadline(client):
    workflow = client.post(
        "/orchestrate", json={"tasks": [{"type": "echo"}], "deadline_s": 60}
    ).get_json()
    db.session.execute(text("UPDATE workflows SET deadline_at = now() - interval '1 s'"))
    db.session.commit()
    assert reconcile().overdue_workflows == 1
    done = client.get(f"/task/{workflow['task_id']}").get_json()
    assert done["status"] == "failed" and done["error"] == "deadline exceeded"
    assert done["steps"][0]["status"] == "cancelled"


# ---- steps that run on a swarm ---------------------------------------------------------------


def _swarm(client, count: int, capabilities: list[str]) -> str:
    body = {"name": "analysts", "count": count, "tier": "advanced", "capabilities": capabilities}
    response = client.post("/swarms", json=body)
    assert response.status_code == 201
    return response.get_json()["id"]


def test_swarm_step_runs_as_a_mass_action_and_aggregates_its_results(client):
    swarm_id = _swarm(client, 50, ["analytics"])
    workflow = client.post(
        "/orchestrate",
        json={
            "tasks": [
                {
                    "name": "sentiment",
                    "type": "distributed_analysis",
                    "swarm_id": swarm_id,
                    "params": {
                        "dataset": "large_dataset.csv",
                        "analysis_type": "sentiment",
                        "chunk_size": 100,
                    },
                },
                {
                    "name": "report",
                    "type": "echo",
                    "depends_on": ["sentiment"],
                    "params": {"positive": {"$ref": "steps.sentiment.result.totals.positive"}},
                },
            ]
        },
    ).get_json()
    assert workflow["steps"][0]["status"] == "running"  # its 50 tasks are queued
    assert (
        db.session.execute(
            text("SELECT count(*) FROM tasks WHERE workflow_id = :w AND bot_id IS NOT NULL"),
            {"w": workflow["task_id"]},
        ).scalar_one()
        == 50
    )

    run_to_the_end()
    done = client.get(f"/task/{workflow['task_id']}").get_json()
    assert done["status"] == "completed"
    sentiment = steps_by_name(done)["sentiment"]["result"]
    assert (sentiment["tasks"], sentiment["completed"], sentiment["failed"]) == (50, 50, 0)
    totals = sentiment["totals"]
    assert totals["rows"] == 5000  # 50 slices of 100 rows cover the whole file
    assert totals["positive"] + totals["negative"] + totals["neutral"] == 5000
    assert steps_by_name(done)["report"]["result"] == {"echo": {"positive": totals["positive"]}}
    swarm = client.get(f"/swarms/{swarm_id}").get_json()
    assert swarm["total_tasks_completed"] == 50


def test_cancelling_a_workflow_ends_its_swarm_step_and_the_tasks_not_started(client):
    swarm_id = _swarm(client, 30, [])
    workflow = client.post(
        "/orchestrate",
        json={"tasks": [{"name": "all", "type": "echo", "swarm_id": swarm_id}]},
    ).get_json()
    assert client.delete(f"/task/{workflow['task_id']}").status_code == 200
    rows = dict(
        db.session.execute(
            text("SELECT status, count(*) FROM tasks WHERE workflow_id = :w GROUP BY status"),
            {"w": workflow["task_id"]},
        ).all()
    )
    assert rows == {"cancelled": 31}
    assert run_ready_steps() == 0
    swarm = client.get(f"/swarms/{swarm_id}").get_json()
    assert swarm["total_tasks_assigned"] == 30
    bot = client.get(f"/bots?swarm_id={swarm_id}&limit=1").get_json()["items"][0]
    assert bot["pending_tasks"] == 0


def test_a_swarm_step_needs_a_swarm_that_can_run_it(client):
    unknown = client.post(
        "/orchestrate", json={"tasks": [{"type": "echo", "swarm_id": "swarm-nope"}]}
    )
    assert unknown.status_code == 404
    swarm_id = _swarm(client, 3, [])
    lacking = client.post(
        "/orchestrate",
        json={"tasks": [{"type": "distributed_analysis", "swarm_id": swarm_id}]},
    )
    assert lacking.status_code == 422
    assert "analytics" in lacking.get_json()["error"]["message"]
    assert db.session.execute(text("SELECT count(*) FROM workflows")).scalar_one() == 0


@pytest.mark.slow
def test_cancel_while_workers_are_down_then_start_them_nothing_cancelled_runs(client, test_env):
    from tests.workers import WorkerProcess, queue_lengths, wait_for

    workflow = client.post(
        "/orchestrate",
        json={"tasks": [{"name": "a", "type": "echo"}, {"name": "b", "type": "echo"}]},
    ).get_json()
    assert sum(queue_lengths(test_env["REDIS_URL"]).values()) == 2  # published, nobody consumes
    assert client.delete(f"/task/{workflow['task_id']}").status_code == 200

    worker = WorkerProcess(test_env)
    worker.start()
    try:
        # Both messages reach the worker and each ends as a chunk that claimed nothing.
        wait_for(lambda: worker.log().count("chunk recorded") == 2, timeout=30)
        assert sum(queue_lengths(test_env["REDIS_URL"]).values()) == 0
        assert reconcile().republished == 0  # cancelled steps are not waiting work
    finally:
        worker.stop()
    rows = db.session.execute(text("SELECT status, attempts, started_at FROM tasks")).all()
    assert rows == [("cancelled", 0, None), ("cancelled", 0, None)]
    assert client.get(f"/task/{workflow['task_id']}").get_json()["status"] == "cancelled"
