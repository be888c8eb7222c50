"""Rate limits: one budget per caller across the whole API, one more for the heavy calls, the
X-RateLimit-* headers on every answer, and limit strings read by the `limits` library's parser.

tests/test_security.py holds the first checks (a sixth call within a second, a third swarm
creation within a minute); windows here are a minute or longer, so no check depends on timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from app import create_app
from app.api.limits import STRATEGY
from app.config import ConfigError, Settings
from app.extensions import db
from app.services import keys

ROOT = Path(__file__).resolve().parent.parent


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def limited(app, test_env):
    """Apps on the (emptied) database whose budgets are set per test:
    limited(RATE_LIMIT=..., RATE_LIMIT_HEAVY=...)."""
    made = []

    def build(**overrides: str):
        flask_app = create_app(Settings.from_env({**os.environ, **test_env, **overrides}))
        made.append(flask_app)
        return flask_app.test_client()

    yield build
    for flask_app in made:
        with flask_app.app_context():
            db.engine.dispose()


def rate_headers(response) -> tuple[int, int, int]:
    """(X-RateLimit-Limit, -Remaining, -Reset) of an answer; each must be there."""
    return tuple(
        int(response.headers[f"X-RateLimit-{name}"]) for name in ("Limit", "Remaining", "Reset")
    )


def test_one_budget_is_shared_by_every_route_of_a_caller(limited):
    client = limited(RATE_LIMIT="6 per minute", RATE_LIMIT_HEAVY="")
    caller, other = (bearer(keys.create_key(name, "operator")[1]) for name in ("one", "two"))
    calls = [
        ("GET", "/bots"),
        ("GET", "/swarms"),
        ("GET", "/bots/stats"),
        ("GET", "/task-types"),
        ("POST", "/bots"),
        ("GET", "/services"),
    ]
    body = {"name": "b", "tier": "L20"}

    statuses = [
        client.open(path, method=method, headers=caller, json=body if method == "POST" else None)
        for method, path in calls
    ]

    assert [answer.status_code for answer in statuses] == [200, 200, 200, 200, 201, 200]
    refused = client.get("/scaling", headers=caller)
    assert refused.status_code == 429
    error = refused.get_json()["error"]
    assert (error["status"], error["code"]) == (429, "rate_limited")
    assert "6 per 1 minute" in error["message"]
    # Another key has a budget of its own; a refused call created nothing.
    assert client.get("/scaling", headers=other).status_code == 200
    assert client.post("/bots", json=body, headers=caller).status_code == 429
    assert db.session.execute(text("SELECT count(*) FROM bots")).scalar_one() == 1
    db.session.commit()


def test_heavy_calls_share_one_budget_on_top_of_the_whole_api_one(limited):
    client = limited(RATE_LIMIT="100 per minute", RATE_LIMIT_HEAVY="2 per minute")
    caller = bearer(keys.create_key("ops", "operator")[1])
    swarm = client.post("/swarms", json={"name": "s", "count": 2, "tier": "L20"}, headers=caller)
    assert swarm.status_code == 201
    assert rate_headers(swarm)[:2] == (2, 1)  # the heavy budget is the nearer to running out
    swarm_id = swarm.get_json()["id"]
    scaled = client.patch(f"/swarms/{swarm_id}", json={"count": 3}, headers=caller)
    assert scaled.status_code == 200
    assert rate_headers(scaled)[:2] == (2, 0)

    # The third heavy call, on a third route, is over the shared heavy budget.
    refused = client.post(f"/swarms/{swarm_id}/tasks", json={"type": "echo"}, headers=caller)

    assert refused.status_code == 429
    assert "2 per 1 minute" in refused.get_json()["error"]["message"]
    assert db.session.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 0
    db.session.commit()
    # Light calls still pass, and report the whole-API budget: 100, less the four calls so far.
    light = client.get(f"/swarms/{swarm_id}", headers=caller)
    assert light.status_code == 200
    assert rate_headers(light)[:2] == (100, 96)


def test_every_answer_says_where_the_caller_stands(limited):
    client = limited(RATE_LIMIT="4 per minute", RATE_LIMIT_HEAVY="")
    caller = bearer(keys.create_key("reader", "viewer")[1])
    started = time.time()

    answers = [client.get("/bots", headers=caller) for _ in range(5)]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 200, 429]
    seen = [rate_headers(answer) for answer in answers]
    assert [(limit, remaining) for limit, remaining, _ in seen] == [
        (4, 3),
        (4, 2),
        (4, 1),
        (4, 0),
        (4, 0),
    ]
    # Reset is a Unix time within the minute's window; the 429 says how long to wait.
    for _, _, reset in seen:
        assert started < reset <= started + 62
    retry_after = int(answers[-1].headers["Retry-After"])
    assert 1 <= retry_after <= 61
    assert abs((seen[-1][2] - time.time()) - retry_after) <= 2
    # Refusals other than 429 carry the headers too (another key: another budget), and so do
    # answers to calls without a key (their budget is their address's).
    other = bearer(keys.create_key("other", "viewer")[1])
    missing = client.get("/bots/bot-0000000000000000", headers=other)
    assert missing.status_code == 404
    assert rate_headers(missing)[:2] == (4, 3)
    assert rate_headers(client.get("/health"))[:2] == (4, 3)


def test_of_several_limits_the_headers_report_the_nearest_to_running_out(limited):
    client = limited(RATE_LIMIT="50 per minute;3 per hour", RATE_LIMIT_HEAVY="")
    caller = bearer(keys.create_key("reader", "viewer")[1])

    answers = [client.get("/bots", headers=caller) for _ in range(4)]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert [rate_headers(answer)[:2] for answer in answers] == [(3, 2), (3, 1), (3, 0), (3, 0)]
    assert "3 per 1 hour" in answers[-1].get_json()["error"]["message"]
    assert int(answers[-1].headers["Retry-After"]) > 60


def test_budgets_are_counters_not_a_log_of_every_call(limited, redis_client):
    # The high default must stay cheap: a fixed number of small counters per caller and limit,
    # not one stored entry per call as the moving window keeps. (An hour's window, so that no
    # counter expires while a slow machine makes the calls.)
    assert STRATEGY != "moving-window"
    client = limited(RATE_LIMIT="100000 per hour", RATE_LIMIT_HEAVY="")
    caller = bearer(keys.create_key("busy", "viewer")[1])

    for _ in range(200):
        assert client.get("/task-types", headers=caller).status_code == 200

    limiter_keys = [key for key in redis_client.scan_iter("LIMITS*")]
    assert 1 <= len(limiter_keys) <= 2
    assert {redis_client.type(key) for key in limiter_keys} == {b"string"}
    assert sum(int(redis_client.get(key)) for key in limiter_keys) == 200


# ---- limit strings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "1000 per second",
        "10/second;500/minute",
        "10/second; 500/minute; 10000/day",
        "10 per second, 500 per minute",
        "100 per 5 minutes",
        "5/hour",
        "",
    ],
)
@pytest.mark.parametrize("variable", ["RATE_LIMIT", "RATE_LIMIT_HEAVY"])
def test_valid_limit_strings_are_accepted(variable, raw):
    settings = Settings.from_env({variable: raw})
    assert getattr(settings, variable.lower()) == raw


@pytest.mark.parametrize(
    "raw",
    [
        "10/fortnight",
        "ten per second",
        "0/second",
        "10/second;;500/minute",
        "10/second 500/minute",
        "per second",
        "10",
    ],
)
@pytest.mark.parametrize("variable", ["RATE_LIMIT", "RATE_LIMIT_HEAVY"])
def test_invalid_limit_strings_are_refused_naming_the_variable(variable, raw):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({variable: raw})
    message = str(refused.value)
    assert message.startswith(f"{variable} must be")
    assert repr(raw) in message
    assert "10/second;500/minute" in message


@pytest.mark.slow
def test_a_bad_limit_string_stops_the_start_with_the_message(test_env):
    env = {**os.environ, **test_env, "RATE_LIMIT": "10/second;500/fortnight"}

    started = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "routes"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert started.returncode != 0
    assert "RATE_LIMIT must be one or more limits" in started.stderr
    assert "'10/second;500/fortnight'" in started.stderr


def test_taking_a_call_answers_the_window_read_after_it_without_asking_redis(
    test_env, redis_client
):
    redis = redis_client
    from limits import parse
    from limits.storage import storage_from_string
    from limits.strategies import SlidingWindowCounterRateLimiter

    from app.api.limit_storage import SCHEME_PREFIX, WindowedRedisStorage

    storage = storage_from_string(SCHEME_PREFIX + test_env["REDIS_URL"], key_prefix="T-WINDOW")
    assert isinstance(storage, WindowedRedisStorage)
    limiter = SlidingWindowCounterRateLimiter(storage)
    limit = parse("3 per minute")
    try:
        assert [limiter.hit(limit, "caller") for _ in range(4)] == [True, True, True, False]
        # The window the refused take saw; Redis holds the same.
        fresh = storage.get_sliding_window(limit.key_for("caller"), limit.get_expiry())
        assert fresh[0] == 0 and fresh[2] == 3 and 60 < fresh[3] <= 120
        assert limiter.get_window_stats(limit, "caller").remaining == 0

        limiter.hit(limit, "other")
        # The counters go away: the read right after the take still answers from the take...
        for key in redis.scan_iter("T-WINDOW*"):
            redis.delete(key)
        assert limiter.get_window_stats(limit, "other").remaining == 2
        # ...once only; the next read asks Redis.
        assert limiter.get_window_stats(limit, "other").remaining == 3
    finally:
        for key in redis.scan_iter("T-WINDOW*"):
            redis.delete(key)


def test_taking_a_call_after_redis_forgot_the_scripts_loads_them_again(test_env, redis_client):
    from limits import parse
    from limits.storage import storage_from_string
    from limits.strategies import SlidingWindowCounterRateLimiter

    from app.api.limit_storage import SCHEME_PREFIX

    storage = storage_from_string(SCHEME_PREFIX + test_env["REDIS_URL"], key_prefix="T-FORGOT")
    limiter = SlidingWindowCounterRateLimiter(storage)
    limit = parse("2 per minute")
    try:
        assert limiter.hit(limit, "caller")
        # What a Redis restart does to the scripts the storage loaded.
        redis_client.script_flush()
        assert [limiter.hit(limit, "caller") for _ in range(2)] == [True, False]
        assert limiter.get_window_stats(limit, "caller").remaining == 0
    finally:
        for key in redis_client.scan_iter("T-FORGOT*"):
            redis_client.delete(key)
