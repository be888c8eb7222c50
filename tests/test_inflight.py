"""The slot and waiting-line scripts (app/services/inflight.py) on the run's Redis: the limit,
hand-over before give-back, priority, pause, and expired slots of a dead holder."""

from __future__ import annotations

import time

from app.services import inflight
from app.tiers import TIERS
from tests.workers import wait_for

SERVICE = "image"
SLOTS = inflight.slots_key(SERVICE)
PAUSE = inflight.pause_key(SERVICE)
LINES = [inflight.line_key(SERVICE, tier) for tier in TIERS]


def start(redis_client, ids, tier="standard", limit=2, lease=30.0, holder="h"):
    keys = [SLOTS, PAUSE, inflight.line_key(SERVICE, tier), *LINES]
    reply = redis_client.eval(inflight.START, len(keys), *keys, limit, lease, holder, *ids)
    return inflight.split_reply(reply)


def refill(redis_client, tokens, lease=30.0, limit=2, holder="h"):
    keys = [SLOTS, PAUSE, *LINES]
    return inflight.split_reply(
        redis_client.eval(inflight.REFILL, len(keys), *keys, lease, limit, holder, *tokens)
    )


def test_start_takes_free_slots_only_and_the_rest_waits_in_line(redis_client):
    tokens, ids = start(redis_client, [1, 2, 3, 4, 5], limit=2)
    assert (len(tokens), ids) == (2, [1, 2])
    assert redis_client.zcard(SLOTS) == 2
    assert [int(x) for x in redis_client.lrange(LINES[2], 0, -1)] == [3, 4, 5]

    # Full: a second chunk only joins the line.
    assert start(redis_client, [6], limit=2) == ([], [])


def test_refill_hands_idle_slots_to_waiting_ids_before_giving_any_back(redis_client):
    tokens, _ = start(redis_client, [1, 2, 3], limit=2)
    kept, ids = refill(redis_client, tokens)
    assert (kept, ids) == (tokens[:1], [3])
    assert redis_client.zcard(SLOTS) == 1

    # Nothing waits: the last slot is given back.
    assert refill(redis_client, kept) == ([], [])
    assert redis_client.zcard(SLOTS) == 0


def test_waiting_l20_ids_go_first(redis_client):
    tokens, _ = start(redis_client, [1], limit=1)
    start(redis_client, [10, 11], tier="standard", limit=1)
    start(redis_client, [20], tier="L20", limit=1)
    assert refill(redis_client, tokens, limit=1)[1] == [20]


def test_a_pause_hands_nothing_on_and_take_gets_nothing(redis_client):
    tokens, _ = start(redis_client, [1, 2], limit=1)
    redis_client.set(PAUSE, "1", px=5000)
    assert refill(redis_client, tokens) == ([], [])
    assert redis_client.eval(inflight.TAKE, 4, PAUSE, *LINES, 5) == []
    assert start(redis_client, [3], limit=1) == ([], [])
    redis_client.delete(PAUSE)
    assert start(redis_client, [], limit=1)[1] == [2]


def test_slots_of_a_dead_holder_expire_and_renewed_ones_do_not(redis_client):
    dead, _ = start(redis_client, [1], limit=2, lease=0.2, holder="dead")
    alive, _ = start(redis_client, [2], limit=2, lease=0.2, holder="alive")
    redis_client.eval(inflight.RENEW, 1, SLOTS, 30.0, *alive)
    # Until the dead holder's lease has run out (the alive one's was renewed).
    wait_for(lambda: redis_client.zcount(SLOTS, time.time(), "+inf") == 1, timeout=5, interval=0.02)
    tokens, ids = start(redis_client, [3, 4], limit=2)
    assert (len(tokens), ids) == (1, [3]), "only the expired slot is free again"


def test_current_limit_is_the_configured_max_concurrency():
    class View:
        name = SERVICE
        max_concurrency = 7
        concurrency_auto = False
        max_concurrency_ceiling = None

    assert inflight.current_limit(View()) == 7
