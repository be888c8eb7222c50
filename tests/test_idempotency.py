"""Idempotency-Key: retries replay the first answer and create nothing new."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from app.extensions import db


def _count(table: str) -> int:
    return db.session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_retried_swarm_creation_returns_first_answer_and_creates_once(client):
    body = {"name": "s", "count": 50, "tier": "advanced"}
    headers = {"Idempotency-Key": "create-s-1"}
    first = client.post("/swarms", json=body, headers=headers)
    second = client.post("/swarms", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.get_json() == first.get_json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert _count("swarms") == 1 and _count("bots") == 50


def test_same_key_with_a_different_body_is_refused(client):
    headers = {"Idempotency-Key": "k"}
    client.post("/bots", json={"name": "a", "tier": "standard"}, headers=headers)
    other = client.post("/bots", json={"name": "b", "tier": "standard"}, headers=headers)
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert _count("bots") == 1


def test_concurrent_mass_actions_with_one_key_create_one_set_of_tasks(app, client):
    swarm = client.post("/swarms", json={"name": "s", "count": 2000, "tier": "standard"})
    swarm_id = swarm.get_json()["id"]
    headers = {"Idempotency-Key": "mass-1"}

    def send(_):
        with app.test_client() as own_client:
            response = own_client.post(
                f"/swarms/{swarm_id}/tasks", json={"type": "echo", "data": {}}, headers=headers
            )
            return response.status_code, response.get_json()

    with ThreadPoolExecutor(max_workers=5) as pool:
        answers = list(pool.map(send, range(5)))
    assert {status for status, _ in answers} == {202}
    assert len({answer["timestamp"] for _, answer in answers}) == 1
    assert _count("tasks") == 2000
    stats = client.get("/bots/stats").get_json()
    assert stats["tasks_assigned"] == 2000


def test_requests_without_a_key_are_not_deduplicated(client):
    for _ in range(2):
        client.post("/bots", json={"name": "a", "tier": "standard"})
    assert _count("bots") == 2
