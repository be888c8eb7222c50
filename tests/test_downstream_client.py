"""The downstream client: one attempt against one real HTTP server on loopback.

Failover across URLs and retries are the registry's (tests/test_registry_calls.py).
"""

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
    post,
)
from tests.fake_services import Scripted


def test_success_returns_json_and_sends_payload(fake_service):
    server = fake_service(default=(200, {"label": "cat", "score": 0.9}))

    result = post(server.url, "/v1/classify", {"image": "a.png"}, timeout=2)

    assert result == {"label": "cat", "score": 0.9}
    assert len(server.requests) == 1
    assert server.requests[0].method == "POST"
    assert server.requests[0].path == "/v1/classify"
    assert server.requests[0].body == {"image": "a.png"}


def test_headers_are_sent(fake_service):
    server = fake_service(default=(200, {"ok": True}))

    post(server.url, "/x", {}, timeout=2, headers={"Idempotency-Key": "7-1"})

    assert server.requests[0].headers["Idempotency-Key"] == "7-1"


def test_json_that_is_not_an_object_is_wrapped(fake_service):
    server = fake_service(default=(200, [1, 2, 3]))

    assert post(server.url + "/", "score", {}, timeout=2) == {"result": [1, 2, 3]}
    assert server.requests[0].path == "/score"


def test_dead_url_is_a_retryable_connection_error_logged_without_the_payload(dead_url, caplog):
    caplog.set_level(logging.WARNING, logger="app.clients.downstream")

    with pytest.raises(DownstreamConnectionError) as caught:
        post(dead_url, "/x", {"secret": "hunter2"}, timeout=1)

    assert caught.value.retryable is True
    assert caught.value.url == dead_url + "/x"
    failures = [r.getMessage() for r in caplog.records if r.name == "app.clients.downstream"]
    assert len(failures) == 1
    assert dead_url in failures[0] and "elapsed_ms=" in failures[0]
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retryable_and_tried_once(fake_service, status):
    server = fake_service(default=(status, {"error": "busy"}))

    with pytest.raises(DownstreamHTTPError) as caught:
        post(server.url, "/x", {}, timeout=2)

    assert (caught.value.status, caught.value.retryable) == (status, True)
    assert len(server.requests) == 1


def test_400_is_final(fake_service):
    refusing = fake_service(default=(400, {"error": "field 'image' is required"}))

    with pytest.raises(DownstreamHTTPError) as caught:
        post(refusing.url, "/x", {}, timeout=2)

    assert caught.value.status == 400
    assert caught.value.retryable is False
    assert caught.value.url == refusing.url + "/x"
    assert "field 'image' is required" in str(caught.value)
    assert len(refusing.requests) == 1


@pytest.mark.parametrize(
    "header, seconds", [("2.5", 2.5), ("0", 0.0), ("soon", None), ("-1", None), ("99999", 300.0)]
)
def test_429_is_retryable_and_carries_retry_after(fake_service, header, seconds):
    server = fake_service(
        default=Scripted(429, {"error": "slow down"}, headers={"Retry-After": header})
    )

    with pytest.raises(DownstreamHTTPError) as caught:
        post(server.url, "/x", {}, timeout=2)

    assert (caught.value.status, caught.value.retryable) == (429, True)
    assert caught.value.retry_after == seconds
    assert len(server.requests) == 1


def test_redirect_is_not_followed(fake_service):
    elsewhere = fake_service(default=(200, {"followed": True}))
    server = fake_service(default=Scripted(307, {}, headers={"Location": elsewhere.url + "/y"}))

    with pytest.raises(DownstreamHTTPError) as caught:
        post(server.url, "/x", {}, timeout=2)

    assert caught.value.status == 307
    assert caught.value.retryable is False
    assert len(server.requests) == 1
    assert elsewhere.requests == []


def test_slow_service_times_out_within_bounded_time(fake_service):
    server = fake_service(default=Scripted(200, {"late": True}, delay=3.0))

    started = time.monotonic()
    with pytest.raises(DownstreamTimeout) as caught:
        post(server.url, "/x", {}, timeout=0.2)
    elapsed = time.monotonic() - started

    assert caught.value.retryable is True
    assert caught.value.status is None
    assert len(server.requests) == 1
    assert elapsed < 1.5


def test_non_json_success_is_a_final_error(fake_service):
    server = fake_service(default=(200, "<html>maintenance</html>"))

    with pytest.raises(DownstreamBadResponse) as caught:
        post(server.url, "/x", {}, timeout=2)

    assert caught.value.retryable is False
    assert caught.value.status == 200
    assert "maintenance" in str(caught.value)
    assert len(server.requests) == 1


def test_no_url_is_a_final_error():
    with pytest.raises(DownstreamError) as caught:
        post("", "/x", {}, timeout=1)

    assert caught.value.retryable is False
