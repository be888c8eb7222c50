"""The reads written straight from a row answer exactly what their documented schemas would."""

from __future__ import annotations

from app.api.schemas import BotOut, SwarmOut
from app.extensions import db
from app.models import Bot
from app.services import swarms


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


def test_unknown_bot_and_swarm_are_404_in_json(client):
    for path in ("/bots/bot-nope", "/swarms/swarm-nope"):
        answer = client.get(path)
        assert answer.status_code == 404
        assert answer.get_json()["error"]
