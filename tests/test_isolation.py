"""Each test that asks for `app` starts from empty tables and an empty Redis DB: proven here.

The two tests run in this order (pytest keeps a module's order): the first writes rows through
the API and a Redis key, the second finds none of them. The second also holds when run alone.
"""

from __future__ import annotations

from sqlalchemy import text

from app.extensions import db
from app.services import keys
from tests.conftest import model_tables

MARKER = "isolation:marker"
# Filled by the first test, read by the second: what it wrote, table by table.
written: dict[str, int] = {}


def _row_counts() -> dict[str, int]:
    return {
        table: db.session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        for table in model_tables()
    }


def test_isolation_first_a_test_writes_rows_and_a_redis_key(app, client):
    swarm = client.post(
        "/swarms",
        json={"name": "leftovers", "count": 3, "tier": "standard", "capabilities": []},
        headers={"Idempotency-Key": "isolation-swarm"},
    ).get_json()
    assert client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo"}).status_code == 202
    assert client.post("/orchestrate", json={"tasks": [{"type": "echo"}]}).status_code == 202
    assert client.get("/services").status_code == 200
    keys.create_key("isolation", "viewer", None)
    app.extensions["redis"].set(MARKER, "1")

    written.update({table: n for table, n in _row_counts().items() if n})
    # Every kind of row the service writes on its main paths.
    assert {
        "bots",
        "swarms",
        "bot_census",
        "counters",
        "tasks",
        "task_payloads",
        "workflows",
        "services",
        "api_keys",
        "audit_log",
        "idempotency_keys",
    } <= set(written)


def test_isolation_then_the_next_test_starts_from_nothing(app, client):
    assert _row_counts() == dict.fromkeys(model_tables(), 0), f"left over from before: {written}"
    assert app.extensions["redis"].get(MARKER) is None
    # Ids start again too: the first task of this test is task-1 whatever came before.
    swarm = client.post(
        "/swarms", json={"name": "fresh", "count": 1, "tier": "L20", "capabilities": []}
    ).get_json()
    client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo"})
    assert db.session.execute(text("SELECT min(id) FROM tasks")).scalar_one() == 1
    # TRUNCATE reaches every table because every table is a model's: none made only by a migration.
    in_database = db.session.scalars(
        text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    ).all()
    assert set(in_database) - {"alembic_version"} == set(model_tables())
