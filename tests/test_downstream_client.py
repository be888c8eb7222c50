"""The downstream client against real HTTP servers on loopback."""

from __future__ import annotations

import logging
import time

import pytest

from app.clients.downstream import (
    DownstreamBadResponse,
    DownstreamConnectionError,
    DownstreamError,
    DownstreamHTTPError,
    DownstreamTimeout,
    call_service,
)
from tests.fake_services import Scripted


def test_success_returns_json_and_sends_payload(fake_service):
    server = fake_service(default=(200, {"label": "cat", "score": 0.9}))

    result = call_service([server.url], "/v1/classify", {"image": "a.png"}, timeout=2)

    assert result == {"label": "cat", "score": 0.9}
    assert len(server.requests) == 1
    assert server.requests[0].method == "POST"
    assert server.requests[0].path == "/v1/classify"
    assert server.requests[0].body == {"image": "a.png"}


def test_json_that_is_not_an_object_is_wrapped(fake_service):
    server = fake_service(default=(200, [1, 2, 3]))

    assert call_service([server.url + "/"], "score", {}, timeout=2) == {"result": [1, 2, 3]}
    assert server.requests[0].path == "/score"


def test_dead_first_url_fails_over_to_second(fake_service, dead_url, caplog):
    server = fake_service(default=(200, {"ok": True}))
    caplog.set_level(logging.WARNING, logger="app.clients.downstream")

    result = call_service([dead_url, server.url], "/x", {"secret": "hunter2"}, timeout=2, retries=0)

    assert result == {"ok": True}
    assert len(server.requests) == 1
    failures = [r.getMessage() for r in caplog.records if r.name == "app.clients.downstream"]
    assert len(failures) == 1
    assert dead_url in failures[0] and "elapsed_ms=" in failures[0]
    assert "hunter2" not in caplog.text


def test_5xx_on_first_url_fails_over_within_the_round(fake_service):
    broken = fake_service(default=(502, {"error": "bad gateway"}))
    healthy = fake_service(default=(200, {"ok": 1}))

    assert call_service([broken.url, healthy.url], "/x", {}, timeout=2, retries=0) == {"ok": 1}
    assert (len(broken.requests), len(healthy.requests)) == (1, 1)


def test_503_then_200_is_retried(fake_service):
    server = fake_service(responses=[(503, {"error": "busy"})], default=(200, {"done": True}))

    result = call_service([server.url], "/x", {"n": 1}, timeout=2, retries=2, backoff=0.01)

    assert result == {"done": True}
    assert len(server.requests) == 2
    assert [r.body for r in server.requests] == [{"n": 1}, {"n": 1}]


def test_400_is_final_and_not_retried(fake_service):
    refusing = fake_service(default=(400, {"error": "field 'image' is required"}))
    spare = fake_service(default=(200, {"ok": True}))

    with pytest.raises(DownstreamHTTPError) as caught:
        call_service([refusing.url, spare.url], "/x", {}, timeout=2, retries=3, backoff=0.01)

    assert caught.value.status == 400
    assert caught.value.retryable is False
    assert caught.value.url == refusing.url + "/x"
    assert "field 'image' is required" in str(caught.value)
    assert len(refusing.requests) == 1
    assert spare.requests == []


def test_429_is_retryable_and_retried(fake_service):
    server = fake_service(default=(429, {"error": "slow down"}))

    with pytest.raises(DownstreamHTTPError) as caught:
        call_service([server.url], "/x", {}, timeout=2, retries=1, backoff=0.01)

    assert caught.value.status == 429
    assert caught.value.retryable is True
    assert len(server.requests) == 2


def test_redirect_is_not_followed(fake_service):
    elsewhere = fake_service(default=(200, {"followed": True}))
    server = fake_service(default=Scripted(307, {}, headers={"Location": elsewhere.url + "/y"}))

    with pytest.raises(DownstreamHTTPError) as caught:
        call_service([server.url], "/x", {}, timeout=2, retries=2, backoff=0.01)

    assert caught.value.status == 307
    assert caught.value.retryable is False
    assert len(server.requests) == 1
    assert elsewhere.requests == []


def test_slow_service_times_out_within_bounded_time(fake_service):
    server = fake_service(default=Scripted(200, {"late": True}, delay=3.0))

    started = time.monotonic()
    with pytest.raises(DownstreamTimeout) as caught:
        call_service([server.url], "/x", {}, timeout=0.2, retries=1, backoff=0.01)
    elapsed = time.monotonic() - started

    assert caught.value.retryable is True
    assert caught.value.status is None
    assert len(server.requests) == 2
    # Two attempts of 0.2 s and a short backoff, far below the server's 3 s delay.
    assert elapsed < 1.5


def test_non_json_success_is_a_final_error(fake_service):
    server = fake_service(default=(200, "<html>maintenance</html>"))

    with pytest.raises(DownstreamBadResponse) as caught:
        call_service([server.url], "/x", {}, timeout=2, retries=2, backoff=0.01)

    assert caught.value.retryable is False
    assert caught.value.status == 200
    assert "maintenance" in str(caught.value)
    assert len(server.requests) == 1


def test_all_urls_dead_raises_retryable_connection_error_after_backoff(dead_url):
    started = time.monotonic()
    with pytest.raises(DownstreamConnectionError) as caught:
        call_service([dead_url], "/x", {}, timeout=1, retries=2, backoff=0.1)
    elapsed = time.monotonic() - started

    assert caught.value.retryable is True
    assert caught.value.url == dead_url + "/x"
    # Backoffs of 0.1 s then 0.2 s, each with up to as much again of jitter.
    assert 0.3 <= elapsed < 1.5


def test_no_urls_is_a_final_error():
    with pytest.raises(DownstreamError) as caught:
        call_service([], "/x", {}, timeout=1)

    assert caught.value.retryable is False
