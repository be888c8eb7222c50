"""Priority and isolation around the I/O pool, against real worker processes: an L20 call goes
ahead of a standard backlog of calls, and CPU work never waits behind calls."""

from __future__ import annotations

import time

import pytest

from tests.fake_services import Scripted
from tests.test_io_pool import _image_service, create_swarm, pools  # noqa: F401 - a fixture
from tests.test_mass_actions import ended, progress, start
from tests.workers import wait_for

# Production's two pools (tests/test_io_pool.py) run beside every test here.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("pools")]


def test_an_l20_call_goes_ahead_of_a_standard_backlog_of_calls(app, client, fake_service):
    service = fake_service(default=Scripted(200, {"image": "x.png"}, delay=0.05))
    _image_service(client, service.url, 2)
    backlog = start(client, create_swarm(client, 200)["id"], "image_generation", {"prompt": "p"})
    # The backlog is under way: 200 calls two at a time take at least 5 s.
    wait_for(lambda: len(service.requests) >= 6, timeout=30)

    [l20_bot] = create_swarm(client, 1, tier="l20")["bot_ids"]
    posted = time.monotonic()
    response = client.post(
        f"/bots/{l20_bot}/tasks", json={"type": "image_generation", "data": {"prompt": "vip"}}
    )
    assert response.status_code == 202, response.get_json()

    def l20_request():
        for index, request in enumerate(service.requests):
            if request.body["params"].get("prompt") == "vip":
                return index, request
        return None

    index, request = wait_for(l20_request, timeout=30)
    standard_before_it = [r for r in service.requests[:index] if r.at > posted]
    # It waited for the calls already holding a slot and the chunks already claimed, not for
    # the standard backlog behind them.
    assert len(standard_before_it) <= 16
    assert request.at - posted < 1.0
    assert progress(client, backlog["mass_action_id"])["counts"]["completed"] < 150
    assert ended(client, backlog["mass_action_id"], timeout=60)["counts"]["completed"] == 200


def test_cpu_work_runs_beside_a_backlog_of_calls_without_waiting_on_it(app, client, fake_service):
    # A slow service with one slot: 40 calls take at least 20 s.
    service = fake_service(default=Scripted(200, {"image": "x.png"}, delay=0.5))
    _image_service(client, service.url, 1)
    calls = start(client, create_swarm(client, 40)["id"], "image_generation", {"prompt": "p"})
    wait_for(lambda: service.requests, timeout=30)

    echo_swarm = client.post(
        "/swarms", json={"name": "echoes", "count": 500, "tier": "standard"}
    ).get_json()
    echoes = start(client, echo_swarm["id"], "echo", {"x": 1})
    body = ended(client, echoes["mass_action_id"], timeout=15)

    assert body["counts"]["completed"] == 500
    # The calls are still far from done: the echo tasks did not queue behind them.
    assert progress(client, calls["mass_action_id"])["counts"]["completed"] <= 20
    assert service.max_in_flight == 1
