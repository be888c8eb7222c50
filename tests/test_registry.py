"""Service discovery: the registry, failover, circuit breakers, probes and concurrency limits.

Real HTTP servers on loopback stand in for the AI services; breaker and semaphore state lives in
the test run's Redis DB, the registry in its PostgreSQL database.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from app.clients.downstream import DownstreamError
from app.services import breaker, registry
from tests.fake_services import Scripted
from tests.workers import WorkerProcess, wait_for

PAYLOAD = {"type": "image_generation", "params": {"prompt": "Sunset landscape"}}


@pytest.fixture()
def short_breaker(app, monkeypatch):
    """Breakers that open after 3 failures and half-open after 0.5 s."""
    settings = replace(app.config["SETTINGS"], breaker_failures=3, breaker_cooldown_s=0.5)
    monkeypatch.setitem(app.config, "SETTINGS", settings)
    return settings


def image_endpoint(client, url: str) -> dict:
    body = client.get("/services/image").get_json()
    return next(e for e in body["endpoints"] if e["url"] == url)


def _state(client, url: str) -> str:
    """The breaker state the API shows for one of the image service's URLs."""
    return image_endpoint(client, url)["breaker"]["state"]


def test_services_are_seeded_from_variables_and_put_is_never_overwritten(app):
    settings = app.config["SETTINGS"]
    registry.seed_from_settings(
        replace(settings, service_urls={"image": ["http://a.test:1", "http://b.test:2"]})
    )
    image = registry.get_service("image")
    assert image.urls == ["http://a.test:1", "http://b.test:2"]
    assert (image.source, image.variable, image.path) == ("env", "IMAGE_SERVICE_URL", "/generate")
    assert image.task_types == ["image_generation"]
    assert {s.name for s in registry.list_services()} == {
        "image",
        "video",
        "crypto",
        "fraud",
        "compression",
        "marketing",
    }

    # A process started with other URLs moves a row that still follows its variable...
    registry.seed_from_settings(replace(settings, service_urls={"image": ["http://c.test:3"]}))
    assert registry.get_service("image").urls == ["http://c.test:3"]

    # ...but never one changed through PUT.
    registry.update_service("image", timeout_s=4.0)
    registry.seed_from_settings(replace(settings, service_urls={"image": ["http://d.test:4"]}))
    image = registry.get_service("image")
    assert (image.urls, image.timeout_s, image.source) == (["http://c.test:3"], 4.0, "api")


def test_dead_first_url_fails_over_to_second(app, fake_service, dead_url):
    live = fake_service(default=(200, {"image": "sunset.png"}))
    registry.update_service("image", urls=[dead_url, live.url])

    assert registry.call("image_generation", PAYLOAD, retries=0) == {"image": "sunset.png"}

    assert len(live.requests) == 1
    assert live.requests[0].path == "/generate"
    assert live.requests[0].body == PAYLOAD
    assert breaker.states([dead_url])[dead_url].consecutive_failures == 1


def test_breaker_opens_after_repeated_failures_and_skips_the_url(
    client, fake_service, short_breaker
):
    failing = fake_service(default=(503, {"error": "overloaded"}))
    live = fake_service(default=(200, {"from": "second"}))
    registry.update_service("image", urls=[failing.url, live.url])

    for _ in range(3):
        assert registry.call("image_generation", PAYLOAD, retries=0) == {"from": "second"}
    assert len(failing.requests) == 3
    assert image_endpoint(client, failing.url)["breaker"]["state"] == "open"

    for _ in range(3):
        assert registry.call("image_generation", PAYLOAD, retries=0) == {"from": "second"}
    assert len(failing.requests) == 3, "an open breaker must keep calls away from the URL"
    assert len(live.requests) == 6


def test_breaker_half_opens_after_cooldown_for_one_trial(client, fake_service, short_breaker):
    # Fails four times (three to open, one failed trial), then recovers.
    flapping = fake_service(responses=[(503, {})] * 4, default=(200, {"from": "first"}))
    live = fake_service(default=(200, {"from": "second"}))
    registry.update_service("image", urls=[flapping.url, live.url])
    for _ in range(3):
        registry.call("image_generation", PAYLOAD, retries=0)
    assert len(flapping.requests) == 3

    wait_for(lambda: _state(client, flapping.url) == "half_open", timeout=10, interval=0.05)
    # The trial fails: open again for another cool-down.
    assert registry.call("image_generation", PAYLOAD, retries=0) == {"from": "second"}
    assert len(flapping.requests) == 4
    registry.call("image_generation", PAYLOAD, retries=0)
    assert len(flapping.requests) == 4
    assert image_endpoint(client, flapping.url)["breaker"]["state"] == "open"

    wait_for(lambda: _state(client, flapping.url) == "half_open", timeout=10, interval=0.05)
    # The trial succeeds: closed, and the first URL is first again.
    assert registry.call("image_generation", PAYLOAD, retries=0) == {"from": "first"}
    assert registry.call("image_generation", PAYLOAD, retries=0) == {"from": "first"}
    assert len(flapping.requests) == 6
    assert image_endpoint(client, flapping.url)["breaker"] == {
        "state": "closed",
        "consecutive_failures": 0,
        "retry_in_s": None,
    }


def test_only_one_caller_gets_the_half_open_trial(app, dead_url, short_breaker):
    for _ in range(3):
        breaker.record_failure(dead_url)
    assert not breaker.allow(dead_url, trial_ttl_s=5)
    wait_for(lambda: breaker.states([dead_url])[dead_url].state == "half_open", 10, 0.05)
    assert breaker.allow(dead_url, trial_ttl_s=5)
    assert not breaker.allow(dead_url, trial_ttl_s=5)


def test_every_breaker_open_fails_fast_without_calling(dead_url, short_breaker):
    registry.update_service("image", urls=[dead_url])
    for _ in range(3):
        with pytest.raises(DownstreamError, match="unreachable"):
            registry.call("image_generation", PAYLOAD, retries=0)

    with pytest.raises(DownstreamError, match="circuit breaker open") as caught:
        registry.call("image_generation", PAYLOAD, retries=0)
    assert caught.value.retryable


def test_put_changes_the_url_and_the_next_call_goes_to_the_new_server(client, fake_service):
    old = fake_service(default=(200, {"from": "old"}))
    new = fake_service(default=(200, {"from": "new"}))
    response = client.put("/services/image", json={"urls": [old.url + "/"]})
    assert response.status_code == 200
    assert response.get_json()["urls"] == [old.url]
    assert registry.call("image_generation", PAYLOAD) == {"from": "old"}

    response = client.put(
        "/services/image", json={"urls": [new.url], "path": "/v2/generate", "timeout_s": 3}
    )
    assert response.status_code == 200
    body = response.get_json()
    assert (body["urls"], body["path"], body["timeout_s"], body["source"]) == (
        [new.url],
        "/v2/generate",
        3.0,
        "api",
    )

    assert registry.call("image_generation", PAYLOAD) == {"from": "new"}
    assert [r.path for r in new.requests] == ["/v2/generate"]
    assert len(old.requests) == 1
    assert client.get("/services/image").get_json()["urls"] == [new.url]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"urls": ["ftp://files.test"]}, "urls"),
        ({"urls": ["not a url"]}, "urls"),
        ({"urls": []}, "urls"),
        ({"urls": ["http://a.test"] * 11}, "urls"),
        ({"urls": ["http://a.test", "http://a.test/"]}, "urls"),
        ({"task_types": ["echo"]}, "task_types"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": "soon"}, "timeout_s"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"path": "generate"}, "path"),
        ({"colour": "blue"}, "colour"),
        ({}, "_schema"),
    ],
)
def test_put_with_a_bad_value_returns_422_and_changes_nothing(client, body, field):
    before = client.get("/services/image").get_json()

    response = client.put("/services/image", json=body)

    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert field in error.get("fields", {}) or error.get("field") == field
    assert client.get("/services/image").get_json() == before


def test_unknown_service_is_404(client):
    assert client.get("/services/teleport").status_code == 404
    response = client.put("/services/teleport", json={"urls": ["http://a.test"]})
    assert response.status_code == 404
    assert "image" in response.get_json()["error"]["known_services"]


def test_put_moves_a_task_type_between_services(client, fake_service):
    server = fake_service(default=(200, {"from": "video service"}))
    client.put("/services/video", json={"urls": [server.url]})

    response = client.put(
        "/services/video", json={"task_types": ["video_generation", "image_generation"]}
    )

    assert response.status_code == 200
    assert client.get("/services/image").get_json()["task_types"] == []
    assert registry.call("image_generation", PAYLOAD) == {"from": "video service"}
    types = {t["name"]: t for t in client.get("/task-types").get_json()["items"]}
    assert (types["image_generation"]["service"], types["image_generation"]["available"]) == (
        "video",
        True,
    )


def test_ai_task_is_refused_until_its_service_has_a_url(client, fake_service):
    bot = client.post(
        "/bots", json={"name": "ml", "tier": "L20", "capabilities": ["ml_inference"]}
    ).get_json()
    refused = client.post(f"/bots/{bot['id']}/tasks", json={"type": "image_generation"})
    assert refused.status_code == 422
    assert refused.get_json()["error"]["missing_variable"] == "IMAGE_SERVICE_URL"

    client.put("/services/image", json={"urls": [fake_service().url]})

    accepted = client.post(f"/bots/{bot['id']}/tasks", json={"type": "image_generation"})
    assert accepted.status_code == 202


def test_probe_all_records_state_latency_and_time_shown_by_get_services(
    client, fake_service, dead_url
):
    healthy = fake_service(default=(200, {"status": "healthy"}))
    failing = fake_service(default=(503, {"status": "down"}))
    client.put("/services/image", json={"urls": [healthy.url, dead_url, failing.url]})
    before = image_endpoint(client, healthy.url)
    assert (before["state"], before["last_probe_at"]) == ("unknown", None)

    assert registry.probe_all() == {"probed": 3, "healthy": 1, "unhealthy": 2}

    assert [(r.method, r.path) for r in healthy.requests] == [("GET", "/health")]
    image = next(s for s in client.get("/services").get_json()["items"] if s["name"] == "image")
    by_url = {e["url"]: e for e in image["endpoints"]}
    assert by_url[healthy.url]["state"] == "healthy"
    assert by_url[healthy.url]["latency_ms"] >= 0
    assert by_url[healthy.url]["last_probe_at"].endswith("Z")
    assert by_url[dead_url]["state"] == "unhealthy"
    assert by_url[dead_url]["latency_ms"] is None
    assert by_url[failing.url]["state"] == "unhealthy"
    assert "503" in by_url[failing.url]["last_error"]


def test_a_url_the_probe_found_unhealthy_is_tried_last(client, fake_service):
    # The first answer (the probe's) is a 503; calls would succeed.
    sick = fake_service(responses=[(503, {})], default=(200, {"from": "sick"}))
    well = fake_service(default=(200, {"from": "well"}))
    client.put("/services/image", json={"urls": [sick.url, well.url]})
    registry.probe_all()

    assert registry.call("image_generation", PAYLOAD, retries=0) == {"from": "well"}
    assert len(sick.requests) == 1

    # With every other URL down, the demoted one is still tried.
    client.put("/services/image", json={"urls": [sick.url]})
    assert registry.call("image_generation", PAYLOAD, retries=0) == {"from": "sick"}


def test_concurrency_limit_holds_across_parallel_callers(app, client, fake_service):
    slow = fake_service(default=Scripted(200, {"done": True}, delay=0.3))
    client.put("/services/image", json={"urls": [slow.url], "max_concurrency": 2})
    results: list[object] = []

    def in_flight() -> int:
        return client.get("/services/image").get_json()["in_flight"]

    def call() -> None:
        with app.app_context():
            try:
                results.append(registry.call("image_generation", PAYLOAD, retries=0))
            except Exception as error:  # collected, so the assertion below names it
                results.append(error)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        # Two calls hold the service's two slots while the other four wait for one.
        wait_for(lambda: in_flight() == 2, timeout=10, interval=0.02)
    finally:
        for thread in threads:
            thread.join(timeout=20)

    assert results == [{"done": True}] * 6
    assert len(slow.requests) == 6
    assert slow.max_in_flight == 2
    assert in_flight() == 0


@pytest.mark.slow
def test_worker_runs_an_ai_task_against_the_registry_and_follows_a_put(
    app, client, test_env, fake_service
):
    first = fake_service(default=(200, {"image": "first.png"}))
    second = fake_service(default=(200, {"image": "second.png"}))
    # The worker starts with IMAGE_SERVICE_URL; this process seeds the same value.
    registry.seed_from_settings(
        replace(app.config["SETTINGS"], service_urls={"image": [first.url]})
    )
    worker = WorkerProcess(test_env, extra_env={"IMAGE_SERVICE_URL": first.url})
    worker.start()
    try:
        bot = client.post(
            "/bots", json={"name": "artist", "tier": "L20", "capabilities": ["ml_inference"]}
        ).get_json()

        def run_task() -> dict:
            accepted = client.post(
                f"/bots/{bot['id']}/tasks",
                json={"type": "image_generation", "data": {"prompt": "Sunset landscape"}},
            )
            assert accepted.status_code == 202, accepted.get_json()
            task_id = accepted.get_json()["task_id"]

            def finished():
                task = client.get(f"/task/{task_id}").get_json()
                return task if task["status"] in ("completed", "failed") else None

            return wait_for(finished, timeout=30)

        task = run_task()
        assert (task["status"], task["result"]) == ("completed", {"image": "first.png"})
        assert first.requests[0].body == PAYLOAD

        # Re-pointed while the worker runs: its next call goes to the new server.
        assert client.put("/services/image", json={"urls": [second.url]}).status_code == 200
        task = run_task()
        assert (task["status"], task["result"]) == ("completed", {"image": "second.png"})
        assert len(first.requests) == 1
    finally:
        worker.stop()


def test_a_reading_trusts_urls_with_no_breaker_state(app, fake_service, dead_url, short_breaker):
    live = fake_service(default=(200, {"ok": 1}))
    assert breaker.read([live.url, dead_url]).clean == {live.url, dead_url}

    breaker.record_failure(dead_url)
    assert breaker.read([live.url, dead_url]).clean == {live.url}


def test_a_call_under_a_clean_reading_still_counts_failures_and_resets_them(
    app, fake_service, dead_url, short_breaker
):
    live = fake_service(default=(200, {"from": "live"}))
    registry.update_service("image", urls=[dead_url, live.url])
    view = registry.callable_view("image_generation")
    reading = breaker.read(list(view.urls))
    assert reading.trusts(dead_url) and reading.trusts(live.url)

    # Both trusted: no breaker round trip for them, but the dead URL's failure is counted, the
    # call fails over to the live one, and the reading no longer trusts the dead URL.
    assert registry.attempt(view, PAYLOAD, 2, "1-1", reading=reading) == {"from": "live"}
    assert breaker.states([dead_url])[dead_url].consecutive_failures == 1
    assert not reading.trusts(dead_url) and reading.trusts(live.url)

    # A success on a URL seen failing since the reading resets its count, as without a reading.
    flaky = fake_service(responses=[(503, {})], default=(200, {"from": "flaky"}))
    registry.update_service("image", urls=[flaky.url])
    view = registry.callable_view("image_generation")
    reading = breaker.read(list(view.urls))
    with pytest.raises(DownstreamError):
        registry.attempt(view, PAYLOAD, 2, "2-1", reading=reading)
    assert breaker.states([flaky.url])[flaky.url].consecutive_failures == 1
    assert registry.attempt(view, PAYLOAD, 2, "3-1", reading=reading) == {"from": "flaky"}
    assert breaker.states([flaky.url])[flaky.url].consecutive_failures == 0

    # Read again after the dead URL's breaker opened: calls skip it.
    registry.update_service("image", urls=[dead_url, live.url])
    view = registry.callable_view("image_generation")
    for _ in range(2):
        registry.attempt(view, PAYLOAD, 2, "4-1", reading=breaker.read(list(view.urls)))
    assert breaker.states([dead_url])[dead_url].state == "open"
    before = (len(live.requests), len(breaker.read(list(view.urls)).clean))
    assert registry.attempt(view, PAYLOAD, 2, "5-1", reading=breaker.read(list(view.urls))) == {
        "from": "live"
    }
    assert before[1] == 1 and len(live.requests) == before[0] + 1
