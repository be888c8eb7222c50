"""The I/O pool against real worker processes: concurrent calls, the limit held, retries and
429s rescheduled, every task ended once (app/services/calls.py)."""

from __future__ import annotations

import pytest

from app.services import registry
from app.tiers import IO_QUEUES, TIER_QUEUES
from tests.fake_services import Scripted
from tests.test_mass_actions import counts_from_rows, ended, start
from tests.workers import WorkerProcess

pytestmark = pytest.mark.slow


@pytest.fixture()
def pools(app, test_env):
    """Production's layout: a prefork worker on the tier queues, a thread pool on the I/O ones."""
    workers = [
        WorkerProcess(test_env, concurrency=1, queues=TIER_QUEUES),
        WorkerProcess(test_env, concurrency=4, queues=IO_QUEUES, pool="threads"),
    ]
    for worker in workers:
        worker.start()
    yield workers
    for worker in workers:
        worker.stop()


def create_swarm(client, count: int, tier: str = "standard") -> dict:
    response = client.post(
        "/swarms",
        json={"name": "artists", "count": count, "tier": tier, "capabilities": ["ml_inference"]},
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _image_service(client, url: str, limit: int) -> None:
    response = client.put("/services/image", json={"urls": [url], "max_concurrency": limit})
    assert response.status_code == 200, response.get_json()


def test_a_fan_out_keeps_every_slot_busy_and_never_more(app, client, fake_service, pools):
    service = fake_service(default=Scripted(200, {"image": "x.png"}, delay=0.05))
    _image_service(client, service.url, 8)
    swarm = create_swarm(client, 200)

    accepted = start(client, swarm["id"], "image_generation", {"prompt": "p"})
    body = ended(client, accepted["mass_action_id"])

    assert (body["counts"]["completed"], body["counts"]["failed"]) == (200, 0)
    assert counts_from_rows(accepted["mass_action_id"])["completed"] == 200
    assert len(service.requests) == 200
    # The limit holds, and the pool uses all of it (one call at a time would peak at 1).
    assert service.max_in_flight == 8
    keys = {r.headers["Idempotency-Key"] for r in service.requests}
    assert len(keys) == 200 and all(k.endswith("-1") for k in keys)
    # Each call's duration reaches the AI merge rule's latency figures.
    aggregate = client.get(f"/mass-actions/{accepted['mass_action_id']}").get_json()["aggregate"]
    assert aggregate["latency_ms"]["p50"] >= 50


def test_a_service_failing_30_percent_ends_every_task_counted_once(
    app, client, fake_service, pools, monkeypatch
):
    # Every 10 requests, 3 answer 503 (deterministic, spread over the run).
    service = fake_service(
        answer=lambda n: (503, {"error": "busy"}) if n % 10 in (1, 4, 7) else (200, {"ok": n})
    )
    _image_service(client, service.url, 16)
    swarm = create_swarm(client, 300)

    accepted = start(client, swarm["id"], "image_generation", {"prompt": "p"})
    body = ended(client, accepted["mass_action_id"], timeout=120)

    rows = counts_from_rows(accepted["mass_action_id"])
    assert body["counts"]["completed"] + body["counts"]["failed"] == 300
    assert (rows["completed"], rows["failed"], rows["total"]) == (
        body["counts"]["completed"],
        body["counts"]["failed"],
        300,
    )
    # Retried, not failed on the first 503: far more than 70% completed.
    assert body["counts"]["completed"] >= 270
    assert service.max_in_flight <= 16
    retried = [r for r in service.requests if not r.headers["Idempotency-Key"].endswith("-1")]
    assert retried, "some calls must have been retried"


def test_a_429_pauses_the_whole_service_for_its_retry_after(app, client, fake_service, pools):
    service = fake_service(
        responses=[Scripted(429, {"error": "slow down"}, headers={"Retry-After": "1.5"})],
        default=(200, {"ok": True}),
    )
    _image_service(client, service.url, 1)
    swarm = create_swarm(client, 6)

    accepted = start(client, swarm["id"], "image_generation", {"prompt": "p"})
    body = ended(client, accepted["mass_action_id"])

    assert (body["counts"]["completed"], body["counts"]["failed"]) == (6, 0)
    first, second = service.requests[0], service.requests[1]
    # No call of any task reached the service while it asked for a pause.
    assert second.at - first.at >= 1.4


def test_a_limit_put_while_calls_run_is_followed(app, client, fake_service, pools):
    service = fake_service(default=Scripted(200, {"ok": True}, delay=0.05))
    _image_service(client, service.url, 2)
    swarm = create_swarm(client, 60)

    accepted = start(client, swarm["id"], "image_generation", {"prompt": "p"})
    ended(client, accepted["mass_action_id"])

    assert service.max_in_flight == 2


def test_the_view_cache_is_dropped_when_a_put_changes_the_registry(app, fake_service):
    first = fake_service(default=(200, {"from": "first"}))
    second = fake_service(default=(200, {"from": "second"}))
    registry.update_service("image", urls=[first.url])
    assert registry.call("image_generation", {}, retries=0) == {"from": "first"}

    registry.update_service("image", urls=[second.url])

    assert registry.call("image_generation", {}, retries=0) == {"from": "second"}


def test_cached_views_read_the_table_once_while_nothing_changes(app, monkeypatch):
    registry.cached_views()
    loads = []
    monkeypatch.setattr(registry, "_load_all", lambda: loads.append(1) or [])
    for _ in range(50):
        registry.cached_views()
    assert loads == []
    registry.views_changed()
    registry.cached_views()
    assert loads == [1]
