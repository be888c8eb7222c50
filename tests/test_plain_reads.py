"""The reads written straight from a row answer exactly what their documented schemas would."""

from __future__ import annotations

from app.api.schemas import BotOut, MassActionOut, SwarmOut
from app.extensions import db
from app.models import Bot
from app.services import mass_actions, swarms
from tests.workers import wait_for


def test_a_bot_answers_what_its_schema_dumps(client):
    swarm = client.post("/swarms", json={"name": "s", "count": 3, "tier": "l20"}).get_json()
    bot_id = swarm["bot_ids"][1]
    client.post(f"/bots/{bot_id}/tasks", json={"type": "echo", "data": {}})
    answer = client.get(f"/bots/{bot_id}")
    assert answer.status_code == 200
    assert answer.content_type == "application/json"
    expected = BotOut().dump(db.session.get(Bot, bot_id))
    assert list(answer.get_json()) == list(expected)
    assert answer.get_json() == expected
    assert expected["total_tasks"] == expected["pending_tasks"] == 1


def test_a_swarm_answers_what_its_schema_dumps_with_its_shards_counted(client):
    swarm = client.post("/swarms", json={"name": "s", "count": 4, "tier": "advanced"}).get_json()
    for bot_id in swarm["bot_ids"][:2]:
        client.post(f"/bots/{bot_id}/tasks", json={"type": "echo", "data": {}})
    client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo"})
    client.patch(f"/bots/{swarm['bot_ids'][3]}", json={"status": "paused"})
    answer = client.get(f"/swarms/{swarm['id']}").get_json()
    expected = SwarmOut().dump(swarms.view_swarm(swarm["id"]))
    assert list(answer) == list(expected)
    assert answer == expected
    assert (answer["total_tasks_assigned"], answer["bot_count"], answer["active_bots"]) == (6, 4, 3)


def test_unknown_bot_swarm_and_mass_action_are_404_in_json(client):
    for path in ("/bots/bot-nope", "/swarms/swarm-nope", "/mass-actions/ma-nope"):
        answer = client.get(path)
        assert answer.status_code == 404
        assert answer.get_json()["error"]


def _answers_what_its_schema_dumps(client, mass_action_id: str) -> dict:
    answer = client.get(f"/mass-actions/{mass_action_id}")
    assert answer.status_code == 200
    assert answer.content_type == "application/json"
    db.session.expire_all()
    expected = MassActionOut().dump(mass_actions.view_mass_action(mass_action_id))
    body = answer.get_json()
    assert list(body) == list(expected)
    assert body == expected
    return body


def _start(client, count: int, task: dict) -> str:
    body = {"name": "s", "count": count, "tier": "standard", "capabilities": ["data_processing"]}
    swarm = client.post("/swarms", json=body).get_json()
    created = client.post(f"/swarms/{swarm['id']}/tasks", json=task)
    assert created.status_code == 202, created.get_json()
    return created.get_json()["mass_action_id"]


def test_a_mass_action_answers_what_its_schema_dumps_queued_and_with_its_aggregate(client, worker):
    task = {"type": "data_processing", "data": {"records": [{"a": "1"}, {"a": "2"}]}}
    mass_action_id = _start(client, 5, task)
    queued = _answers_what_its_schema_dumps(client, mass_action_id)
    assert queued["counts"]["total"] == 5

    def finished():
        return client.get(f"/mass-actions/{mass_action_id}").get_json()["finished_at"]

    wait_for(finished, timeout=60)
    done = _answers_what_its_schema_dumps(client, mass_action_id)
    assert done["status"] == "completed"
    assert done["aggregate"]["tasks"] == {"completed": 5}
    assert done["aggregate"]["merged_tasks"] == 5 and done["aggregate"]["result"] is not None


def test_a_cancelled_mass_action_with_a_callback_answers_what_its_schema_dumps(client):
    task = {"type": "echo", "data": {}, "callback_url": "http://127.0.0.1:9/hook"}
    mass_action_id = _start(client, 3, task)
    waiting = _answers_what_its_schema_dumps(client, mass_action_id)
    assert waiting["callback"]["state"] == "waiting"

    assert client.delete(f"/mass-actions/{mass_action_id}").status_code == 200
    cancelled = _answers_what_its_schema_dumps(client, mass_action_id)
    assert cancelled["status"] == "cancelled" and cancelled["counts"]["cancelled"] == 3
    assert cancelled["cancel_requested_at"] is not None
    assert cancelled["callback"]["state"] == "pending"
