"""Idempotency-Key: a caller's retries replay its first answer and create nothing new; another
caller's identical key is its own; answers expire after IDEMPOTENCY_TTL and beat purges them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

import celeryconfig
from app.config import ConfigError, Settings
from app.dispatch import celery_of
from app.extensions import db
from app.services import idempotency, keys
from tests.workers import wait_for


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


# ---- per caller ------------------------------------------------------------------------------


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_two_tenants_reusing_one_key_and_body_get_independent_answers(client):
    tenant_a = _bearer(keys.create_key("a-ops", "operator", "tenant-a")[1])
    tenant_b = _bearer(keys.create_key("b-ops", "operator", "tenant-b")[1])
    body = {"name": "nightly", "tier": "L20", "capabilities": ["analytics"]}
    retry = {"Idempotency-Key": "create-nightly"}

    a = client.post("/bots", json=body, headers={**tenant_a, **retry})
    b = client.post("/bots", json=body, headers={**tenant_b, **retry})

    assert a.status_code == b.status_code == 201
    assert "Idempotent-Replayed" not in b.headers
    a_bot, b_bot = a.get_json(), b.get_json()
    assert a_bot["id"] != b_bot["id"]
    assert _count("bots") == 2
    # Each answer is its caller's own: B's answer names nothing of A's.
    assert client.get(f"/bots/{b_bot['id']}", headers=tenant_a).status_code == 404
    assert client.get(f"/bots/{a_bot['id']}", headers=tenant_b).status_code == 404
    # Each caller's retry replays its own answer.
    a_again = client.post("/bots", json=body, headers={**tenant_a, **retry})
    b_again = client.post("/bots", json=body, headers={**tenant_b, **retry})
    assert (a_again.get_json(), b_again.get_json()) == (a_bot, b_bot)
    assert (
        a_again.headers["Idempotent-Replayed"] == b_again.headers["Idempotent-Replayed"] == "true"
    )
    assert _count("bots") == 2


def test_keys_of_one_tenant_and_the_admin_key_are_different_callers(client):
    first = _bearer(keys.create_key("ops-1", "operator")[1])
    second = _bearer(keys.create_key("ops-2", "operator")[1])
    body = {"name": "s", "count": 3, "tier": "standard"}
    retry = {"Idempotency-Key": "same"}

    answers = [
        client.post("/swarms", json=body, headers={**headers, **retry})
        for headers in (first, second, {})  # {}: the test client's ADMIN_API_KEY
    ]

    assert [answer.status_code for answer in answers] == [201, 201, 201]
    assert len({answer.get_json()["id"] for answer in answers}) == 3
    assert _count("swarms") == 3 and _count("bots") == 9
    # A different body under the same key is refused only for the caller that used it.
    other = client.post("/swarms", json={**body, "count": 4}, headers={**first, **retry})
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"


def test_a_stored_key_named_like_the_admin_key_is_another_caller(client):
    impostor = _bearer(keys.create_key("admin (ADMIN_API_KEY)", "operator")[1])
    body = {"name": "b", "tier": "standard"}
    retry = {"Idempotency-Key": "k-1"}

    admin_answer = client.post("/bots", json=body, headers=retry).get_json()
    impostor_answer = client.post("/bots", json=body, headers={**impostor, **retry})

    assert impostor_answer.status_code == 201
    assert "Idempotent-Replayed" not in impostor_answer.headers
    assert impostor_answer.get_json()["id"] != admin_answer["id"]


# ---- expiry and purge ------------------------------------------------------------------------


def _age_answers(seconds: int) -> None:
    """Make every stored answer `seconds` older, as if that much time had passed."""
    db.session.execute(
        text("UPDATE idempotency_keys SET created_at = created_at - make_interval(secs => :s)"),
        {"s": seconds},
    )
    db.session.commit()


def test_an_answer_older_than_the_ttl_is_not_replayed(app, client):
    ttl = app.config["SETTINGS"].idempotency_ttl_s
    assert ttl == 86_400  # the default: a day
    body = {"name": "b", "tier": "standard"}
    retry = {"Idempotency-Key": "daily"}
    first = client.post("/bots", json=body, headers=retry).get_json()
    _age_answers(ttl - 60)
    assert client.post("/bots", json=body, headers=retry).get_json() == first
    _age_answers(120)

    late = client.post("/bots", json=body, headers=retry)

    assert late.status_code == 201
    assert "Idempotent-Replayed" not in late.headers
    assert late.get_json()["id"] != first["id"]
    assert _count("bots") == 2
    # The late request's answer is the one kept now, for a full TTL again.
    assert client.post("/bots", json=body, headers=retry).get_json() == late.get_json()


def test_purge_deletes_only_expired_answers_in_batches(app, client):
    ttl = app.config["SETTINGS"].idempotency_ttl_s
    db.session.execute(
        text(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, status_code, body, created_at)"
            " SELECT 'key:1', 'old-' || n, 'f', 201, '{}', now() - make_interval(secs => :age)"
            " FROM generate_series(1, 2500) AS n"
        ),
        {"age": ttl + 1},
    )
    # One abandoned claim (its process died mid-request) expires the same way.
    db.session.execute(
        text(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, created_at)"
            " VALUES ('key:2', 'stuck', 'f', now() - make_interval(secs => :age))"
        ),
        {"age": ttl + 1},
    )
    db.session.commit()
    fresh = client.post(
        "/bots", json={"name": "b", "tier": "L20"}, headers={"Idempotency-Key": "x"}
    )

    purged = idempotency.purge_expired(batch=1000)

    assert purged == 2501
    remaining = db.session.execute(text("SELECT scope, key FROM idempotency_keys")).all()
    assert remaining == [("admin", "x")]
    db.session.commit()
    replayed = client.post(
        "/bots", json={"name": "b", "tier": "L20"}, headers={"Idempotency-Key": "x"}
    )
    assert replayed.get_json() == fresh.get_json()
    assert idempotency.purge_expired() == 0


@pytest.mark.slow
def test_beat_schedules_the_purge_and_a_worker_runs_it(app, client, worker):
    entry = celeryconfig.beat_schedule["purge-idempotency-keys"]
    assert entry["task"] == "orchestrator.purge_idempotency_keys"
    client.post("/bots", json={"name": "b", "tier": "L20"}, headers={"Idempotency-Key": "old"})
    _age_answers(app.config["SETTINGS"].idempotency_ttl_s + 1)
    client.post("/bots", json={"name": "c", "tier": "L20"}, headers={"Idempotency-Key": "new"})

    celery_of(app).send_task(entry["task"], **entry.get("options", {}))

    def only_the_new_answer_left():
        keys_left = db.session.scalars(text("SELECT key FROM idempotency_keys")).all()
        db.session.commit()
        return keys_left == ["new"]

    wait_for(only_the_new_answer_left, timeout=30)


# ---- IDEMPOTENCY_TTL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, seconds",
    [("", 86_400), ("86400", 86_400), ("24h", 86_400), ("90s", 90), ("30m", 1800), ("7d", 604_800)],
)
def test_idempotency_ttl_accepts_seconds_or_a_unit(raw, seconds):
    assert Settings.from_env({"IDEMPOTENCY_TTL": raw}).idempotency_ttl_s == seconds


@pytest.mark.parametrize("raw", ["59", "31d", "a day", "-5", "1.5h", "10w"])
def test_idempotency_ttl_refuses_what_it_cannot_honour(raw):
    with pytest.raises(ConfigError, match="IDEMPOTENCY_TTL"):
        Settings.from_env({"IDEMPOTENCY_TTL": raw})
