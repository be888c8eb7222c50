"""Bad input is refused with the JSON error shape and changes nothing in the database."""

from __future__ import annotations

import json
import os

import pytest
from sqlalchemy import text

from app import create_app
from app.config import Settings
from app.extensions import db

VALID_SWARM = {"name": "ok-swarm", "count": 3, "tier": "L20", "capabilities": ["analytics"]}


def snapshot() -> dict[str, object]:
    """Every row count and running total a refused request must leave alone."""
    state: dict[str, object] = {}
    for table in ("bots", "swarms", "tasks", "task_payloads", "workflows", "counters"):
        state[table] = db.session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    state["counter_values"] = dict(
        db.session.execute(text("SELECT name, sum(value) FROM counters GROUP BY name")).all()
    )
    state["census"] = sorted(
        db.session.execute(text("SELECT swarm_id, tier, status, n FROM bot_census")).all()
    )
    state["bot_totals"] = tuple(
        db.session.execute(
            text(
                "SELECT coalesce(sum(total_tasks), 0), count(*) FILTER (WHERE status = 'active')"
                " FROM bots"
            )
        ).one()
    )
    db.session.commit()
    return state


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response is the JSON error shape with this status; returns the `error` object."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.content_type
    body = response.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["status"] == status
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


@pytest.fixture()
def seeded(client):
    """Some state for refused requests to (not) change: a swarm and a lone bot."""
    swarm = client.post("/swarms", json=VALID_SWARM)
    assert swarm.status_code == 201
    bot = client.post("/bots", json={"name": "lone", "tier": "standard", "capabilities": []})
    assert bot.status_code == 201
    return {"swarm": swarm.get_json(), "bot": bot.get_json()}


# ---- POST /swarms: the bad-input table ---------------------------------------------------------

COUNT_CASES = [
    pytest.param(0, "Must be between 1 and 50000.", id="zero"),
    pytest.param(-1, "Must be between 1 and 50000.", id="negative"),
    pytest.param(50_001, "Must be between 1 and 50000.", id="over-max-bots"),
    pytest.param(2**63, "Must be between 1 and 50000.", id="2**63"),
    pytest.param("10", "Not a valid integer.", id="string"),
    pytest.param(10.5, "Not a valid integer.", id="float"),
    pytest.param(True, "Not a valid integer.", id="boolean"),
    pytest.param(None, "Field may not be null.", id="null"),
]


@pytest.mark.parametrize("count, message", COUNT_CASES)
def test_create_swarm_with_bad_count_returns_422_and_creates_nothing(
    client, seeded, count, message
):
    before = snapshot()

    response = client.post("/swarms", json={**VALID_SWARM, "count": count})

    error = assert_error(response, 422)
    assert error["fields"] == {"count": [message]}
    assert snapshot() == before


def test_create_swarm_without_count_returns_422_naming_it(client, seeded):
    before = snapshot()
    body = {key: value for key, value in VALID_SWARM.items() if key != "count"}

    error = assert_error(client.post("/swarms", json=body), 422)

    assert error["fields"] == {"count": ["Missing data for required field."]}
    assert snapshot() == before


@pytest.mark.parametrize(
    "change, field",
    [
        pytest.param({"colour": "red"}, "colour", id="unknown-field"),
        pytest.param({"tier": "gold"}, "tier", id="bad-tier"),
        pytest.param({"tier": ""}, "tier", id="empty-tier"),
        pytest.param({"name": "x" * 300}, "name", id="name-300-chars"),
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"name": "evil\x00name"}, "name", id="name-nul-byte"),
        pytest.param({"name": "bell\x07\x1b[31m"}, "name", id="name-control-chars"),
        pytest.param({"capabilities": "analytics"}, "capabilities", id="capabilities-not-list"),
        pytest.param({"capabilities": ["ok", "bad\x00"]}, "capabilities", id="capability-nul"),
    ],
)
def test_create_swarm_with_invalid_field_returns_422_naming_it(client, seeded, change, field):
    before = snapshot()

    error = assert_error(client.post("/swarms", json={**VALID_SWARM, **change}), 422)

    assert list(error["fields"]) == [field]
    assert snapshot() == before


def test_create_swarm_with_malformed_json_returns_400(client, seeded):
    before = snapshot()

    response = client.post(
        "/swarms", data='{"name": "x", "count": 3,', content_type="application/json"
    )

    error = assert_error(response, 400, "bad_request")
    assert "not valid JSON" in error["message"]
    assert "fields" not in error
    assert snapshot() == before


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", None],
    ids=["text-plain", "form", "no-content-type"],
)
def test_create_swarm_with_non_json_content_type_returns_415(client, seeded, content_type):
    before = snapshot()
    kwargs = {"content_type": content_type} if content_type else {}

    response = client.post("/swarms", data=json.dumps(VALID_SWARM), **kwargs)

    error = assert_error(response, 415, "unsupported_media_type")
    assert "application/json" in error["message"]
    assert snapshot() == before


def test_create_swarm_with_body_over_max_body_bytes_returns_413(app, client, seeded):
    before = snapshot()
    limit = app.config["SETTINGS"].max_body_bytes
    body = json.dumps({**VALID_SWARM, "name": "x" * (limit + 1)})

    response = client.post("/swarms", data=body, content_type="application/json")

    assert_error(response, 413)
    assert snapshot() == before


def test_create_swarm_with_json_array_body_returns_422(client, seeded):
    before = snapshot()

    assert_error(client.post("/swarms", json=[VALID_SWARM]), 422)

    assert snapshot() == before


def test_create_bot_with_bad_tier_or_name_returns_422_and_creates_nothing(client, seeded):
    before = snapshot()

    for body in (
        {"name": "b", "tier": "platinum"},
        {"name": "b"},
        {"tier": "L20"},
        {"name": "a\x00", "tier": "L20"},
        {"name": "b", "tier": "L20", "extra": True},
    ):
        assert_error(client.post("/bots", json=body), 422)

    assert snapshot() == before


# ---- routes, methods, unknown ids -----------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/bots/x/y/z", "/swarm", "/tasks/task-1"])
def test_unknown_route_returns_404_json(client, path):
    assert_error(client.get(path), 404, "not_found")


@pytest.mark.parametrize(
    "method, path",
    [
        ("put", "/swarms"),
        ("delete", "/swarms"),
        ("post", "/health"),
        ("post", "/bots/stats"),
        ("get", "/orchestrate"),
        ("put", "/task/task-1"),
    ],
)
def test_wrong_method_returns_405_json(client, method, path):
    assert_error(getattr(client, method)(path), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "path",
    [
        "/bots/bot-0000000000000000",
        "/swarms/swarm-0000000000000000",
        "/task/task-999999",
        "/task/wf-0000000000000000",
        "/task/not-a-task-id",
        "/bots/bot-0000000000000000/tasks",
    ],
)
def test_get_unknown_id_returns_404_json(client, seeded, path):
    error = assert_error(client.get(path), 404, "not_found")
    assert path.rsplit("/", 1)[-1] in error["message"] or "bot-0000000000000000" in error["message"]


def test_mutating_unknown_bot_or_swarm_returns_404_and_changes_nothing(client, seeded):
    before = snapshot()

    assert_error(client.patch("/bots/bot-missing", json={"status": "paused"}), 404)
    assert_error(client.delete("/bots/bot-missing"), 404)
    assert_error(client.patch("/swarms/swarm-missing", json={"count": 5}), 404)
    assert_error(client.delete("/swarms/swarm-missing"), 404)
    assert_error(client.post("/bots/bot-missing/tasks", json={"type": "echo"}), 404)
    assert_error(client.post("/swarms/swarm-missing/tasks", json={"type": "echo"}), 404)

    assert snapshot() == before


# ---- task assignment refusals --------------------------------------------------------------


def test_unknown_task_type_returns_422_listing_known_types(app, client, seeded):
    known = sorted(app.extensions["task_types"])
    before = snapshot()
    bot_id = seeded["bot"]["id"]

    for path in (f"/bots/{bot_id}/tasks", f"/swarms/{seeded['swarm']['id']}/tasks"):
        error = assert_error(client.post(path, json={"type": "teleport", "data": {}}), 422)
        assert "teleport" in error["message"]
        assert error["known_types"] == known
        assert {"echo", "data_processing", "distributed_analysis"} <= set(error["known_types"])

    error = assert_error(
        client.post("/orchestrate", json={"tasks": [{"type": "teleport", "params": {}}]}), 422
    )
    assert error["known_types"] == known
    assert snapshot() == before


def test_task_type_needing_missing_capability_returns_422_naming_it(client, seeded):
    before = snapshot()
    bot = client.post(
        "/bots", json={"name": "reporter", "tier": "advanced", "capabilities": ["reporting"]}
    ).get_json()
    before = snapshot()

    error = assert_error(
        client.post(f"/bots/{bot['id']}/tasks", json={"type": "data_processing", "data": {}}),
        422,
    )
    assert error["missing_capability"] == "data_processing"
    assert "data_processing" in error["message"]

    # The seeded swarm has analytics but not data_processing.
    error = assert_error(
        client.post(
            f"/swarms/{seeded['swarm']['id']}/tasks", json={"type": "mass_data_processing"}
        ),
        422,
    )
    assert error["missing_capability"] == "data_processing"
    assert snapshot() == before


@pytest.mark.parametrize(
    "task_type, variable",
    [
        ("image_generation", "IMAGE_SERVICE_URL"),
        ("crypto_prediction", "CRYPTO_SERVICE_URL"),
        ("fraud_detection", "FRAUD_SERVICE_URL"),
    ],
)
def test_ai_task_type_without_service_url_returns_422_naming_the_variable(
    app, client, task_type, variable
):
    assert not app.config["SETTINGS"].service_urls.get(variable.split("_")[0].lower())
    bot = client.post(
        "/bots", json={"name": "ml", "tier": "L20", "capabilities": ["ml_inference"]}
    ).get_json()
    before = snapshot()

    error = assert_error(client.post(f"/bots/{bot['id']}/tasks", json={"type": task_type}), 422)
    assert error["missing_variable"] == variable
    assert variable in error["message"]

    error = assert_error(
        client.post("/orchestrate", json={"tasks": [{"type": task_type, "params": {}}]}), 422
    )
    assert error["missing_variable"] == variable
    assert snapshot() == before


def test_assigning_to_paused_bot_returns_409_and_creates_no_task(client, seeded):
    bot_id = seeded["bot"]["id"]
    assert client.patch(f"/bots/{bot_id}", json={"status": "paused"}).status_code == 200
    before = snapshot()

    error = assert_error(client.post(f"/bots/{bot_id}/tasks", json={"type": "echo"}), 409)

    assert "paused" in error["message"]
    assert snapshot() == before


def test_assigning_to_paused_swarm_returns_409_and_creates_no_task(client, seeded):
    swarm_id = seeded["swarm"]["id"]
    assert client.patch(f"/swarms/{swarm_id}", json={"status": "paused"}).status_code == 200
    before = snapshot()

    error = assert_error(client.post(f"/swarms/{swarm_id}/tasks", json={"type": "echo"}), 409)
    assert "paused" in error["message"]
    # A bot of the paused swarm is paused too, so it refuses directly as well.
    member = seeded["swarm"]["bot_ids"][0]
    assert_error(client.post(f"/bots/{member}/tasks", json={"type": "echo"}), 409)

    assert snapshot() == before


def test_assigning_to_retired_bot_or_swarm_returns_409(client, seeded):
    bot_id, swarm_id = seeded["bot"]["id"], seeded["swarm"]["id"]
    assert client.delete(f"/bots/{bot_id}").status_code == 200
    assert client.delete(f"/swarms/{swarm_id}").status_code == 200
    before = snapshot()

    assert_error(client.post(f"/bots/{bot_id}/tasks", json={"type": "echo"}), 409)
    assert_error(client.post(f"/swarms/{swarm_id}/tasks", json={"type": "echo"}), 409)
    assert_error(client.patch(f"/swarms/{swarm_id}", json={"count": 10}), 409)
    assert_error(client.patch(f"/bots/{bot_id}", json={"status": "active"}), 409)

    assert snapshot() == before


@pytest.mark.parametrize(
    "body",
    [
        {"status": "retired"},
        {"status": "sleeping"},
        {},
        {"count": -1},
        {"count": "5"},
        {"count": 50_001},
    ],
)
def test_patch_swarm_with_bad_body_returns_422(client, seeded, body):
    before = snapshot()

    assert_error(client.patch(f"/swarms/{seeded['swarm']['id']}", json=body), 422)

    assert snapshot() == before


@pytest.mark.parametrize("body", [{"status": "retired"}, {"status": "PAUSED"}, {}])
def test_patch_bot_with_bad_body_returns_422(client, seeded, body):
    before = snapshot()

    assert_error(client.patch(f"/bots/{seeded['bot']['id']}", json=body), 422)

    assert snapshot() == before


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=1001", "limit=ten", "tier=gold", "status=sleeping"],
)
def test_list_bots_with_bad_query_returns_422(client, query):
    assert_error(client.get(f"/bots?{query}"), 422)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"tasks": []},
        {"tasks": [{"params": {}}]},
        {"tasks": [{"type": "echo"}], "priority": "urgent"},
        {"tasks": "echo"},
    ],
)
def test_orchestrate_with_bad_body_returns_422_and_records_nothing(client, body):
    before = snapshot()

    assert_error(client.post("/orchestrate", json=body), 422)

    assert snapshot() == before


# ---- capacity --------------------------------------------------------------------------------


@pytest.fixture()
def small_app(app, test_env):
    """An app on the same (emptied) database whose capacity is MAX_BOTS=100."""
    flask_app = create_app(Settings.from_env({**os.environ, **test_env, "MAX_BOTS": "100"}))
    yield flask_app
    with flask_app.app_context():
        db.engine.dispose()


def test_swarm_over_capacity_returns_409_with_capacity_remaining_and_creates_nothing(small_app):
    client = small_app.test_client()
    assert client.post("/swarms", json={**VALID_SWARM, "count": 60}).status_code == 201
    assert client.post("/bots", json={"name": "b", "tier": "standard"}).status_code == 201
    before = snapshot()

    error = assert_error(client.post("/swarms", json={**VALID_SWARM, "count": 40}), 409)

    assert error["capacity_remaining"] == 39
    assert error["requested"] == 40
    assert snapshot() == before
    # Exactly the remainder still fits, and then nothing more does.
    assert client.post("/swarms", json={**VALID_SWARM, "count": 39}).status_code == 201
    full = snapshot()
    error = assert_error(client.post("/bots", json={"name": "one-more", "tier": "L20"}), 409)
    assert error["capacity_remaining"] == 0
    assert snapshot() == full
    stats = client.get("/bots/stats").get_json()
    assert stats["capacity_remaining"] == 0
    assert stats["utilization_percent"] == 100.0


def test_scaling_a_swarm_past_capacity_returns_409_and_adds_no_bot(small_app):
    client = small_app.test_client()
    swarm = client.post("/swarms", json={**VALID_SWARM, "count": 90}).get_json()
    before = snapshot()

    error = assert_error(client.patch(f"/swarms/{swarm['id']}", json={"count": 101}), 422)
    assert "count" in error["fields"]
    assert snapshot() == before

    client.post("/bots", json={"name": "squatter", "tier": "L20"})
    before = snapshot()
    error = assert_error(client.patch(f"/swarms/{swarm['id']}", json={"count": 100}), 409)
    assert error["capacity_remaining"] == 9
    assert snapshot() == before
    assert client.get(f"/swarms/{swarm['id']}").get_json()["bot_count"] == 90


def test_retired_bots_free_capacity(small_app):
    client = small_app.test_client()
    swarm = client.post("/swarms", json={**VALID_SWARM, "count": 100}).get_json()
    assert_error(client.post("/bots", json={"name": "b", "tier": "L20"}), 409)

    assert client.delete(f"/bots/{swarm['bot_ids'][0]}").status_code == 200

    assert client.post("/bots", json={"name": "b", "tier": "L20"}).status_code == 201
    assert_error(client.post("/bots", json={"name": "c", "tier": "L20"}), 409)
