"""The one failover and retry loop, in the registry: rounds over a service's URLs, backoff,
final errors, the Idempotency-Key header; the client under it makes one attempt."""

from __future__ import annotations

import time

import pytest

from app.clients.downstream import DownstreamConnectionError, DownstreamHTTPError
from app.services import registry
from tests.fake_services import Scripted

PAYLOAD = {"type": "image_generation", "params": {"prompt": "Sunset landscape"}}


@pytest.fixture()
def quick_backoff(monkeypatch):
    monkeypatch.setattr(registry, "RETRY_BACKOFF_S", 0.01)


def test_5xx_on_first_url_fails_over_within_the_round(app, fake_service):
    broken = fake_service(default=(502, {"error": "bad gateway"}))
    healthy = fake_service(default=(200, {"ok": 1}))
    registry.update_service("image", urls=[broken.url, healthy.url])

    assert registry.call("image_generation", PAYLOAD, retries=0) == {"ok": 1}
    assert (len(broken.requests), len(healthy.requests)) == (1, 1)


def test_503_then_200_is_retried_in_a_second_round(app, fake_service, quick_backoff):
    server = fake_service(responses=[(503, {"error": "busy"})], default=(200, {"done": True}))
    registry.update_service("image", urls=[server.url])

    assert registry.call("image_generation", PAYLOAD, retries=2) == {"done": True}
    assert [r.body for r in server.requests] == [PAYLOAD, PAYLOAD]


def test_429_every_round_ends_retryable_after_the_rounds(app, fake_service, quick_backoff):
    server = fake_service(default=(429, {"error": "slow down"}))
    registry.update_service("image", urls=[server.url])

    with pytest.raises(DownstreamHTTPError) as caught:
        registry.call("image_generation", PAYLOAD, retries=1)

    assert (caught.value.status, caught.value.retryable) == (429, True)
    assert len(server.requests) == 2


def test_400_is_final_and_the_spare_url_is_not_tried(app, fake_service, quick_backoff):
    refusing = fake_service(default=(400, {"error": "field 'image' is required"}))
    spare = fake_service(default=(200, {"ok": True}))
    registry.update_service("image", urls=[refusing.url, spare.url])

    with pytest.raises(DownstreamHTTPError) as caught:
        registry.call("image_generation", PAYLOAD, retries=3)

    assert (caught.value.status, caught.value.retryable) == (400, False)
    assert len(refusing.requests) == 1
    assert spare.requests == []


def test_redirect_is_final(app, fake_service, quick_backoff):
    elsewhere = fake_service(default=(200, {"followed": True}))
    server = fake_service(default=Scripted(307, {}, headers={"Location": elsewhere.url + "/y"}))
    registry.update_service("image", urls=[server.url])

    with pytest.raises(DownstreamHTTPError):
        registry.call("image_generation", PAYLOAD, retries=2)
    assert len(server.requests) == 1
    assert elsewhere.requests == []


def test_dead_url_is_retried_with_growing_backoff(app, dead_url, monkeypatch):
    monkeypatch.setattr(registry, "RETRY_BACKOFF_S", 0.1)
    registry.update_service("image", urls=[dead_url])

    started = time.monotonic()
    with pytest.raises(DownstreamConnectionError) as caught:
        registry.call("image_generation", PAYLOAD, retries=2)
    elapsed = time.monotonic() - started

    assert caught.value.retryable is True
    # Backoffs of 0.1 s then 0.2 s, each with up to as much again of jitter.
    assert 0.3 <= elapsed < 1.5


def test_each_call_carries_its_idempotency_key(app, fake_service):
    server = fake_service(default=(200, {"ok": True}))
    registry.update_service("image", urls=[server.url])

    registry.call("image_generation", PAYLOAD, retries=0, idempotency_key="41-2")

    assert server.requests[0].headers["Idempotency-Key"] == "41-2"


def test_backoff_grows_exponentially_with_jitter():
    for round_number, base in [(2, 0.2), (3, 0.4), (4, 0.8)]:
        delays = [registry.backoff_before(round_number) for _ in range(50)]
        assert all(base <= d <= 2 * base for d in delays)
