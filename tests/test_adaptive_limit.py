"""Adaptive concurrency: `max_concurrency: "auto"` finds what a downstream service sustains.

The controller's state is in the test run's Redis DB; the service it measures is a real HTTP
server on loopback whose latency climbs once more than its capacity is in flight and which
answers 503 beyond a hard cap.
"""

from __future__ import annotations

import statistics
import threading
import time

import pytest

from app.clients.downstream import DownstreamError
from app.services import adaptive_limit, inflight, registry
from app.services.adaptive_limit import DROP, SUCCESS
from app.tiers import IO_QUEUES, TIER_QUEUES, TIERS
from tests.fake_services import Scripted
from tests.test_io_pool import create_swarm
from tests.test_mass_actions import progress, start
from tests.workers import WorkerProcess, wait_for

PAYLOAD = {"type": "image_generation", "params": {"prompt": "Sunset landscape"}}


def _auto(client, ceiling: int = 100, **extra) -> dict:
    response = client.put(
        "/services/image",
        json={"max_concurrency": "auto", "max_concurrency_ceiling": ceiling, **extra},
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _window(view, latency_ms: float, in_flight: int) -> int | None:
    """One full window of successes at one latency; the limit after it."""
    new = None
    for _ in range(max(adaptive_limit.WINDOW_MIN_SAMPLES, adaptive_limit.limit(view))):
        new = adaptive_limit.record(view, SUCCESS, latency_ms, in_flight)
    return new


# ---- the API -------------------------------------------------------------------------------


def test_put_auto_shows_the_learned_limit_its_ceiling_and_state(client):
    body = _auto(client, ceiling=40)

    assert body["max_concurrency"] == "auto"
    assert body["max_concurrency_ceiling"] == 40
    assert body["concurrency_limit"] == adaptive_limit.INITIAL_LIMIT
    assert body["adaptive"] == {
        "limit": adaptive_limit.INITIAL_LIMIT,
        "ceiling": 40,
        "phase": "slow_start",
        "baseline_latency_ms": None,
        "window_latency_ms": None,
        "samples": 0,
        "drops": 0,
        "cuts": 0,
    }
    assert client.get("/services/image").get_json() == body

    # A number makes the limit fixed again and drops the ceiling.
    fixed = client.put("/services/image", json={"max_concurrency": 8}).get_json()
    assert (fixed["max_concurrency"], fixed["max_concurrency_ceiling"]) == (8, None)
    assert (fixed["concurrency_limit"], fixed["adaptive"]) == (8, None)


def test_the_ceiling_can_change_alone_and_caps_the_limit(client):
    _auto(client, ceiling=40)
    view = registry.get_service("image")
    for _ in range(6):
        _window(view, 10, in_flight=1000)
    assert adaptive_limit.limit(view) == 40

    response = client.put("/services/image", json={"max_concurrency_ceiling": 12})

    assert response.status_code == 200
    assert response.get_json()["max_concurrency"] == "auto"
    assert response.get_json()["concurrency_limit"] == 12


@pytest.mark.parametrize(
    "body, field",
    [
        ({"max_concurrency": "auto"}, "max_concurrency_ceiling"),
        ({"max_concurrency": "AUTO", "max_concurrency_ceiling": 10}, "max_concurrency"),
        ({"max_concurrency": "fast"}, "max_concurrency"),
        ({"max_concurrency": 2.5}, "max_concurrency"),
        ({"max_concurrency": True}, "max_concurrency"),
        ({"max_concurrency": None}, "max_concurrency"),
        ({"max_concurrency": 10_001}, "max_concurrency"),
        ({"max_concurrency": "auto", "max_concurrency_ceiling": 0}, "max_concurrency_ceiling"),
        ({"max_concurrency": "auto", "max_concurrency_ceiling": 10_001}, "max_concurrency_ceiling"),
        ({"max_concurrency": "auto", "max_concurrency_ceiling": "64"}, "max_concurrency_ceiling"),
        ({"max_concurrency": 8, "max_concurrency_ceiling": 64}, "max_concurrency_ceiling"),
        ({"max_concurrency_ceiling": 64}, "max_concurrency_ceiling"),
    ],
)
def test_bad_concurrency_settings_return_422_and_change_nothing(client, body, field):
    before = client.get("/services/image").get_json()

    response = client.put("/services/image", json=body)

    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert field in error.get("fields", {}) or error.get("field") == field, error
    assert client.get("/services/image").get_json() == before


def test_metrics_show_each_service_s_limit(client):
    _auto(client, ceiling=40)
    client.put("/services/video", json={"max_concurrency": 7})

    text = client.get("/metrics").get_data(as_text=True)

    limit = adaptive_limit.INITIAL_LIMIT
    assert (
        f'orchestrator_downstream_concurrency_limit{{mode="auto",service="image"}} {limit}.0'
        in (text)
    )
    assert 'orchestrator_downstream_concurrency_limit{mode="fixed",service="video"} 7.0' in text
    assert 'orchestrator_downstream_concurrency_ceiling{service="image"} 40.0' in text


# ---- the controller ------------------------------------------------------------------------


def test_latency_that_holds_grows_the_limit_and_a_rise_cuts_it(client):
    _auto(client)
    view = registry.get_service("image")

    # Slow start: x1.5 per window while latency holds and the limit is used.
    assert [_window(view, 20, in_flight=1000) for _ in range(3)] == [6, 9, 13]
    # Latency three times the baseline: queueing; the cut is at most half.
    assert _window(view, 60, in_flight=13) == 6
    # After a cut, one more per window.
    assert [_window(view, 20, in_flight=6) for _ in range(2)] == [7, 8]
    # Within the tolerance (x1.5) latency still counts as holding.
    assert _window(view, 29, in_flight=8) == 9

    state = adaptive_limit.state(view)
    assert state is not None
    assert (state.phase, state.cuts, state.baseline_latency_ms) == (
        "avoid",
        1,
        pytest.approx(20, rel=0.05),
    )


def test_slow_start_ends_when_latency_starts_to_rise_even_within_tolerance(client):
    _auto(client)
    view = registry.get_service("image")
    assert _window(view, 20, in_flight=1000) == 6

    # 30% slower: not queueing enough to cut, but the knee is near: +1 from now on, not x1.5.
    assert _window(view, 26, in_flight=1000) == 7
    assert _window(view, 20, in_flight=1000) == 8

    state = adaptive_limit.state(view)
    assert state is not None
    assert (state.phase, state.cuts) == ("avoid", 0)


def test_a_window_that_did_not_use_its_limit_does_not_grow_it(client):
    _auto(client)
    view = registry.get_service("image")
    _window(view, 20, in_flight=1000)
    assert adaptive_limit.limit(view) == 6

    for _ in range(3):
        _window(view, 20, in_flight=2)

    assert adaptive_limit.limit(view) == 6


def test_a_burst_of_drops_cuts_once(client):
    _auto(client)
    view = registry.get_service("image")
    for _ in range(4):
        _window(view, 20, in_flight=1000)
    assert adaptive_limit.limit(view) == 20

    sent_before = adaptive_limit.epoch(view)

    # Calls that were all sent before the first of them failed: one cut (x0.75).
    for _ in range(10):
        adaptive_limit.record(view, DROP, 500, in_flight=20, epoch=sent_before)
    assert adaptive_limit.limit(view) == 15

    # A call sent after that cut fails too: a new signal.
    sent_after = adaptive_limit.epoch(view)
    assert sent_after == sent_before + 1
    assert adaptive_limit.record(view, DROP, 500, in_flight=15, epoch=sent_after) == 11
    assert adaptive_limit.state(view).drops == 11


def test_errors_map_to_outcomes():
    from app.clients.downstream import (
        DownstreamConnectionError,
        DownstreamHTTPError,
        DownstreamTimeout,
    )

    outcome = adaptive_limit.outcome_of
    assert outcome(None) == SUCCESS
    assert outcome(DownstreamTimeout("slow", retryable=True)) == DROP
    assert outcome(DownstreamHTTPError("busy", retryable=True, status=429)) == DROP
    assert outcome(DownstreamHTTPError("down", retryable=True, status=503)) == DROP
    assert outcome(DownstreamHTTPError("bad", retryable=False, status=400)) == "ignore"
    assert outcome(DownstreamConnectionError("refused", retryable=True)) == "ignore"


def test_a_fixed_service_is_not_measured(client, redis_client):
    client.put("/services/image", json={"max_concurrency": 5})
    view = registry.get_service("image")

    assert adaptive_limit.record(view, DROP, 10, in_flight=5) is None
    assert adaptive_limit.limit(view) == 5
    assert not redis_client.keys(adaptive_limit.KEY_PREFIX + "*")


def test_switching_to_auto_or_changing_urls_starts_over(client, fake_service):
    _auto(client)
    view = registry.get_service("image")
    _window(view, 20, in_flight=1000)
    assert adaptive_limit.limit(view) == 6

    client.put("/services/image", json={"urls": [fake_service().url]})

    assert client.get("/services/image").get_json()["adaptive"]["samples"] == 0
    assert adaptive_limit.limit(view) == adaptive_limit.INITIAL_LIMIT


# ---- against a service with a capacity ----------------------------------------------------

# The service answers in BASE_S while at most CAPACITY requests are in flight; each one more
# adds BASE_S again (it queues), and beyond HARD_CAP it answers 503 at once.
CAPACITY = 6
HARD_CAP = 10
BASE_S = 0.05
# More callers than the hard cap: a fixed limit as high as the demand would overload it.
CALLERS = 12
CALLS = 1000


def _capacity_answer(in_flight: int) -> Scripted:
    if in_flight > HARD_CAP:
        return Scripted(503, {"error": "overloaded"})
    extra = max(in_flight - CAPACITY, 0)
    return Scripted(200, {"image": "sunset.png"}, delay=BASE_S * (1 + extra))


def _load(app, calls: int, callers: int) -> tuple[list[object], list[int]]:
    """`calls` calls from `callers` threads; the results, and the limit sampled meanwhile."""
    results: list[object] = []
    limits: list[int] = []
    remaining = iter(range(calls))
    lock = threading.Lock()

    def caller() -> None:
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
            with app.app_context():
                try:
                    result: object = registry.call("image_generation", PAYLOAD, retries=0)
                except DownstreamError as error:
                    result = error
            with lock:
                results.append(result)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    view = registry.get_service("image")
    while any(thread.is_alive() for thread in threads):
        limits.append(adaptive_limit.limit(view))
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    return results, limits


@pytest.mark.slow  # 1,000 calls against a loaded service: about 13 s
def test_the_limit_settles_near_the_service_s_capacity_with_under_1pc_errors(
    app, client, fake_service
):
    service = fake_service(loaded=_capacity_answer)
    _auto(client, ceiling=64, urls=[service.url])

    results, limits = _load(app, CALLS, CALLERS)

    failed = [r for r in results if isinstance(r, Exception)]
    overloaded = sum(1 for r in service.requests if r.path == "/generate") - (
        len(results) - len(failed)
    )
    settled = statistics.median(limits[len(limits) // 2 :])
    state = adaptive_limit.state(registry.get_service("image"))
    print(
        f"\nsettled limit {settled} (capacity {CAPACITY}, hard cap {HARD_CAP}); "
        f"failed {len(failed)}/{len(results)}; peak in flight {service.max_in_flight}; {state}"
    )
    assert len(results) == CALLS
    assert len(failed) / CALLS < 0.01, failed[:3]
    assert overloaded == len(failed)
    assert CAPACITY - 2 <= settled <= CAPACITY + 2
    assert state is not None and state.cuts >= 1
    assert state.baseline_latency_ms == pytest.approx(BASE_S * 1000, rel=0.5)


def test_a_fixed_limit_as_high_as_the_demand_overloads_the_same_service(app, client, fake_service):
    # The same service and callers without adaptation: the check above can fail.
    service = fake_service(loaded=_capacity_answer)
    client.put("/services/image", json={"urls": [service.url], "max_concurrency": CALLERS})

    results, _ = _load(app, 200, CALLERS)

    failed = [r for r in results if isinstance(r, Exception)]
    assert len(failed) / len(results) > 0.05
    wait_for(lambda: service.in_flight == 0, timeout=5, interval=0.02)


# ---- through the I/O pool ------------------------------------------------------------------

# The same shape, at the pool's scale.
POOL_CAPACITY = 16
POOL_HARD_CAP = 24
POOL_TASKS = 2000


def _pool_capacity_answer(in_flight: int) -> Scripted:
    if in_flight > POOL_HARD_CAP:
        return Scripted(503, {"error": "overloaded"})
    extra = max(in_flight - POOL_CAPACITY, 0)
    return Scripted(200, {"image": "sunset.png"}, delay=BASE_S * (1 + extra))


@pytest.mark.slow
def test_a_fan_out_through_the_io_pool_finds_the_service_s_capacity(
    app, client, fake_service, test_env
):
    service = fake_service(loaded=_pool_capacity_answer)
    _auto(client, ceiling=64, urls=[service.url])
    # Production's layout: a prefork worker on the tier queues, a thread pool on the I/O ones;
    # its threads could hold every slot up to the ceiling, far past the hard cap.
    workers = [
        WorkerProcess(test_env, concurrency=1, queues=TIER_QUEUES),
        WorkerProcess(test_env, concurrency=4, queues=IO_QUEUES, pool="threads"),
    ]
    for worker in workers:
        worker.start()
    try:
        swarm = create_swarm(client, POOL_TASKS)
        accepted = start(client, swarm["id"], "image_generation", {"prompt": "p"})
        view = registry.get_service("image")
        limits: list[int] = []
        at_service: list[int] = []

        def finished() -> dict | None:
            limits.append(adaptive_limit.limit(view))
            at_service.append(service.in_flight)
            body = progress(client, accepted["mass_action_id"])
            return body if body["finished_at"] is not None else None

        body = wait_for(finished, timeout=120, interval=0.05)
    finally:
        for worker in workers:
            worker.stop()

    calls = [r for r in service.requests if r.path == "/generate"]
    overloaded = len(calls) - POOL_TASKS
    half = len(limits) // 2
    settled = statistics.median(limits[half:])
    # The pool calls in bursts (a claim statement, then the calls): the service sees fewer on
    # average than the limit allows, and short peaks up to it.
    level = statistics.mean(at_service[half:])
    state = adaptive_limit.state(registry.get_service("image"))
    print(
        f"\nI/O pool: settled limit {settled}, {level:.1f} in flight at the service (capacity "
        f"{POOL_CAPACITY}, hard cap {POOL_HARD_CAP}); 503s {overloaded}/{len(calls)} requests; "
        f"peak in flight {service.max_in_flight}; {state}"
    )
    assert (body["counts"]["completed"], body["counts"]["failed"]) == (POOL_TASKS, 0)
    assert overloaded / len(calls) < 0.01
    assert POOL_CAPACITY * 0.75 <= settled <= POOL_CAPACITY * 1.5
    assert state is not None and state.cuts >= 1


def test_refill_gives_back_slots_above_a_fallen_limit_and_takes_more_under_a_risen_one(
    app, redis_client
):
    slots, pause = inflight.slots_key("image"), inflight.pause_key("image")
    lines = [inflight.line_key("image", tier) for tier in TIERS]
    own_line = inflight.line_key("image", "standard")
    reply = redis_client.eval(
        inflight.START, 3 + len(lines), slots, pause, own_line, *lines, 4, 30, "a", *range(1, 11)
    )
    tokens, ids = inflight.split_reply(reply)
    assert (len(tokens), ids) == (4, [1, 2, 3, 4])

    def refill(limit: int, *idle: str) -> tuple[list[str], list[int]]:
        reply = redis_client.eval(
            inflight.REFILL, 2 + len(lines), slots, pause, *lines, 30, limit, "a", *idle
        )
        return inflight.split_reply(reply)

    # The limit fell to 2 while 4 calls ran: two ending calls give their slots back.
    assert refill(2, tokens[0], tokens[1]) == ([], [])
    assert redis_client.zcard(slots) == 2

    # It rose to 5: one ending call hands its slot on and takes three more.
    handed, started = refill(5, tokens[2])
    assert started == [5, 6, 7, 8]
    assert handed[0] == tokens[2] and len(set(handed)) == 4
    assert redis_client.zcard(slots) == 5


def test_adjust_keeps_a_holder_s_idle_slots_within_the_limit_and_adds_free_ones(app, redis_client):
    slots, pause = inflight.slots_key("image"), inflight.pause_key("image")

    def adjust(limit: int, claimed: int, *idle: str) -> list[str]:
        reply = redis_client.eval(inflight.ADJUST, 2, slots, pause, limit, 30, "h", claimed, *idle)
        return [v.decode() for v in reply]

    # Another holder has 3 calls in flight; this one has 8 claimed tasks and no slot yet.
    redis_client.zadd(slots, {f"other:{n}": time.time() + 30 for n in range(3)})
    mine = adjust(6, 8)
    assert len(mine) == 3 and redis_client.zcard(slots) == 6

    # The limit fell to 4: one idle slot is kept, two are given back.
    kept = adjust(4, 8, *mine)
    assert kept == mine[:1] and redis_client.zcard(slots) == 4

    # Paused: idle slots within the limit are kept, no new one is taken.
    redis_client.set(pause, "1", px=5000)
    assert adjust(10, 8, *kept) == kept
    redis_client.delete(pause)

    # It rose to 10: up to one slot per claimed task, the rest stay free.
    grown = adjust(10, 5, *kept)
    assert grown[0] == kept[0] and len(grown) == 5 and redis_client.zcard(slots) == 8
