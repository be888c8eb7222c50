"""Callbacks: one signed POST of a workflow's summary when it ends, to a real receiver on loopback.

The receiver checks the signature the way a user's would (HMAC-SHA256 of the raw body with the
shared secret, compared in constant time, and a timestamp no older than five minutes) and answers
what the test scripts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis as redis_lib
from sqlalchemy import text

from app.extensions import db
from app.services import callbacks
from tests.conftest import CALLBACK_SECRET
from tests.workers import WorkerProcess, wait_for

MAX_AGE = timedelta(minutes=5)


class Receiver:
    """An HTTP server on 127.0.0.1 that verifies each delivery and answers scripted statuses."""

    def __init__(self, statuses: list[int] | None = None, secret: str = CALLBACK_SECRET) -> None:
        self.statuses, self.secret = list(statuses or []), secret
        self.deliveries: list[dict] = []
        self.refused: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server hook's name
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.receive(raw, dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/orchestrator"

    def receive(self, raw: bytes, headers: dict[str, str]) -> int:
        expected = "sha256=" + hmac.new(self.secret.encode(), raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers.get("X-Orchestrator-Signature", "")):
            self.refused.append("bad signature")
            return 401
        body = json.loads(raw)
        sent = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
        if abs(datetime.now(UTC) - sent) > MAX_AGE:
            self.refused.append("too old")
            return 401
        self.deliveries.append(body)
        return self.statuses.pop(0) if self.statuses else 200

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None, secret: str = CALLBACK_SECRET) -> Receiver:
        made.append(Receiver(statuses, secret))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.fixture(scope="module")
def worker(test_env):
    process = WorkerProcess(test_env)
    process.start()
    yield process
    process.stop()


def _orchestrate(client, url: str, tasks=None):
    body = {"tasks": tasks or [{"name": "hello", "type": "echo", "params": {"x": 1}}],
            "callback_url": url}  # fmt: skip
    response = client.post("/orchestrate", json=body)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def _callback(client, workflow_id: str) -> dict:
    return client.get(f"/task/{workflow_id}").get_json()["callback"]


# First in the module: no worker runs yet (the module's worker starts with the next test).
def test_a_lost_delivery_message_is_published_again_by_the_reconciler(client, receiver, test_env):
    from app.services.reconciler import reconcile
    from tests.workers import queue_lengths

    hook = receiver()
    workflow = _orchestrate(client, hook.url)
    # Ending the workflow publishes its delivery; the message is lost (no worker runs yet).
    client.delete(f"/task/{workflow['task_id']}")
    assert queue_lengths(test_env["REDIS_URL"])["L20"] == 1
    redis_lib.Redis.from_url(test_env["REDIS_URL"]).delete("L20")
    db.session.execute(text("UPDATE callbacks SET next_attempt_at = now() - interval '1 minute'"))
    db.session.commit()

    assert reconcile().callbacks == 1
    assert queue_lengths(test_env["REDIS_URL"])["L20"] == 1
    assert callbacks.deliver(workflow["task_id"]).state == "delivered"
    assert [body["summary"]["status"] for body in hook.deliveries] == ["cancelled"]
    assert reconcile().callbacks == 0  # delivered: nothing left to publish


@pytest.mark.slow
def test_a_finished_workflow_posts_its_signed_summary_once(client, receiver, worker):
    hook = receiver()

    workflow = _orchestrate(client, hook.url)
    assert workflow["callback"] == {"url": hook.url, "state": "waiting", "attempts": 0,
                                    "last_status": None, "last_error": None,
                                    "delivered_at": None}  # fmt: skip

    wait_for(lambda: _callback(client, workflow["task_id"])["state"] == "delivered", 30)
    assert len(hook.deliveries) == 1 and hook.refused == []
    body = hook.deliveries[0]
    assert body["event"] == "workflow.finished"
    assert body["resource_id"] == body["delivery_id"] == workflow["task_id"]
    assert body["attempt"] == 1
    summary = body["summary"]
    assert (summary["id"], summary["status"]) == (workflow["task_id"], "completed")
    assert summary["steps"] == [{"name": "hello", "type": "echo", "status": "completed",
                                 "error": None, "result": {"echo": {"x": 1}}}]  # fmt: skip
    shown = _callback(client, workflow["task_id"])
    assert (shown["attempts"], shown["last_status"]) == (1, 200)
    assert shown["delivered_at"]
    # Once delivered, a repeated message sends nothing more.
    assert callbacks.deliver(workflow["task_id"]).state == "skipped"
    assert len(hook.deliveries) == 1


@pytest.mark.slow
def test_a_failing_receiver_is_retried_with_backoff_until_it_accepts(client, receiver, worker):
    hook = receiver(statuses=[503, 500])

    workflow = _orchestrate(client, hook.url)

    wait_for(lambda: _callback(client, workflow["task_id"])["state"] == "delivered", 40)
    assert [body["attempt"] for body in hook.deliveries] == [1, 2, 3]
    # Same delivery, new timestamp (and so a new signature) on every attempt.
    assert len({body["delivery_id"] for body in hook.deliveries}) == 1
    stamps = [
        datetime.fromisoformat(b["timestamp"].replace("Z", "+00:00")) for b in hook.deliveries
    ]
    # Backoff: about 1 s, then about 2 s, scheduled as Celery countdowns.
    assert (stamps[1] - stamps[0]).total_seconds() >= 0.9
    assert (stamps[2] - stamps[1]).total_seconds() >= 1.9
    assert _callback(client, workflow["task_id"])["attempts"] == 3


@pytest.mark.slow
def test_a_receiver_that_refuses_the_signature_ends_the_delivery_as_failed(
    client, receiver, worker
):
    hook = receiver(secret="another-secret-entirely")

    workflow = _orchestrate(client, hook.url)

    wait_for(lambda: _callback(client, workflow["task_id"])["state"] == "failed", 30)
    assert hook.refused == ["bad signature"] and hook.deliveries == []
    shown = _callback(client, workflow["task_id"])
    assert (shown["attempts"], shown["last_status"], shown["last_error"]) == (
        1,
        401,
        "answered 401",
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest",
        "http://10.1.2.3:8080/hook",
        "ftp://127.0.0.1/x",
        "http://user:pw@127.0.0.1/hook",
    ],  # fmt: skip
)
def test_a_callback_url_outside_the_allowlist_is_refused_and_nothing_is_created(client, url):
    response = client.post("/orchestrate", json={"tasks": [{"type": "echo"}], "callback_url": url})

    assert response.status_code == 422, response.get_json()
    assert db.session.execute(text("SELECT count(*) FROM workflows")).scalar_one() == 0


def test_without_a_callback_secret_no_callback_url_is_taken(test_env):
    import os

    from app import create_app
    from app.config import Settings

    env = {**os.environ, **test_env}
    env.pop("CALLBACK_SECRET")
    app = create_app(Settings.from_env(env))
    with app.app_context():
        response = app.test_client().post(
            "/orchestrate",
            json={"tasks": [{"type": "echo"}], "callback_url": "http://127.0.0.1:9/x"},
        )
        assert response.status_code == 422
        assert "CALLBACK_SECRET" in response.get_json()["error"]["message"]


# ---- mass-actions -------------------------------------------------------------------------------


def _swarm(client, count: int) -> str:
    body = {
        "name": "hooked",
        "count": count,
        "tier": "advanced",
        "capabilities": ["data_processing"],
    }
    response = client.post("/swarms", json=body)
    assert response.status_code == 201
    return response.get_json()["id"]


@pytest.mark.slow
def test_a_finished_mass_action_posts_its_counts_and_aggregate(client, receiver, worker):
    hook = receiver()
    swarm_id = _swarm(client, 6)
    data = {"dataset": "customer_data_2024.csv", "operations": ["clean", "analyze"]}

    created = client.post(
        f"/swarms/{swarm_id}/tasks",
        json={"type": "mass_data_processing", "data": data, "callback_url": hook.url},
    )
    assert created.status_code == 202, created.get_json()
    mass_action_id = created.get_json()["mass_action_id"]

    def delivered():
        view = client.get(f"/mass-actions/{mass_action_id}").get_json()
        return view if view["callback"]["state"] == "delivered" else None

    view = wait_for(delivered, 30)
    assert len(hook.deliveries) == 1 and hook.refused == []
    body = hook.deliveries[0]
    assert (body["event"], body["resource_id"]) == ("mass_action.finished", mass_action_id)
    summary = body["summary"]
    assert (summary["kind"], summary["status"], summary["swarm_id"]) == (
        "mass_action",
        "completed",
        swarm_id,
    )
    assert summary["counts"] == {"total": 6, "completed": 6, "failed": 0, "cancelled": 0}
    # The one answer: the six parts merged, as one task over the 1,000 rows.
    assert summary["aggregate"]["result"]["rows_in"] == 1000
    assert summary["aggregate"] == view["aggregate"]
    assert view["callback"]["attempts"] == 1


def test_a_mass_action_with_nothing_to_run_tells_its_receiver_at_once(client, receiver):
    hook = receiver()
    swarm_id = _swarm(client, 2)
    for bot in client.get(f"/bots?swarm_id={swarm_id}").get_json()["items"]:
        client.patch(f"/bots/{bot['id']}", json={"status": "paused"})

    created = client.post(
        f"/swarms/{swarm_id}/tasks", json={"type": "echo", "callback_url": hook.url}
    ).get_json()

    # It ended as it started (no active bot): the delivery is pending (or, with a worker
    # running, already made).
    mass_action_id = created["mass_action_id"]
    callbacks.deliver(mass_action_id)
    wait_for(lambda: hook.deliveries, 30)
    assert hook.deliveries[0]["summary"]["counts"]["total"] == 0
    view = client.get(f"/mass-actions/{mass_action_id}").get_json()
    assert view["callback"]["state"] == "delivered"


def test_a_mass_action_with_a_refused_callback_url_is_not_created(client):
    swarm_id = _swarm(client, 2)

    response = client.post(
        f"/swarms/{swarm_id}/tasks",
        json={"type": "echo", "callback_url": "http://169.254.169.254/hook"},
    )

    assert response.status_code == 422
    assert client.get(f"/swarms/{swarm_id}/mass-actions").get_json()["items"] == []
