"""A circuit breaker per downstream URL, kept in Redis so every worker process shares it.

closed --(BREAKER_FAILURES consecutive failures)--> open --(BREAKER_COOLDOWN_S)--> half-open:
exactly one caller gets a trial call; its success closes the breaker, its failure opens it again
for another cool-down. Only failures that say the URL is down count (connection errors, timeouts,
5xx, 429): a 4xx is the service answering. Each transition is one Lua script, so concurrent
workers never both take the trial or lose a failure count. Time is Redis's clock, the same for
every machine.

If Redis itself fails, the breaker lets calls through: the broker is Redis too, so a worker that
got the message will most likely reach Redis again soon, and refusing every call would turn a
blip into failed tasks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from flask import current_app

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
KEY_PREFIX = "orchestrator:breaker:"
# A breaker nobody touched for a day is forgotten (a URL removed from the registry, say).
IDLE_EXPIRY_S = 86_400

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 "

# KEYS[1] breaker hash; ARGV cool-down, trial ttl. Returns 1 if the caller may call the URL.
_ALLOW = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return 1 end
if state == 'open' then
  local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at'))
  if now - opened < tonumber(ARGV[1]) then return 0 end
else
  -- half_open: one trial is out; another may go only if that one's caller vanished.
  local trial_until = tonumber(redis.call('HGET', KEYS[1], 'trial_until') or '0')
  if now < trial_until then return 0 end
end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'trial_until', now + tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

# KEYS[1] breaker hash; ARGV failures to open, idle expiry. Returns the new state.
_FAILURE = (
    _NOW
    + """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state ~= 'closed' or failures >= tonumber(ARGV[1]) then
  state = 'open'
  redis.call('HSET', KEYS[1], 'state', state, 'opened_at', now)
  redis.call('HDEL', KEYS[1], 'trial_until')
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return state
"""
)


@dataclass(frozen=True)
class BreakerState:
    """What GET /services shows for one URL."""

    state: str
    consecutive_failures: int
    # Seconds until an open breaker lets a trial call through; None unless open.
    retry_in_s: float | None = None


def allow(url: str, trial_ttl_s: float) -> bool:
    """Whether a call may go to url now: closed, or the single half-open trial (taken here).

    trial_ttl_s bounds how long one trial holds the half-open state: longer than the call can
    take, so a caller that dies mid-trial does not keep the URL shut forever.
    """
    settings = current_app.config["SETTINGS"]
    try:
        allowed = _redis().eval(
            _ALLOW,
            1,
            _key(url),
            settings.breaker_cooldown_s,
            trial_ttl_s,
            IDLE_EXPIRY_S,
        )
    except redis.RedisError as error:
        log.warning("breaker unavailable for %s, letting the call through: %s", url, error)
        return True
    return bool(allowed)


@dataclass(frozen=True)
class Reading:
    """Which URLs had a closed breaker with no failure counted, read at `at` (monotonic)."""

    clean: frozenset[str] = frozenset()
    at: float = float("-inf")

    def trusts(self, url: str) -> bool:
        """Whether a call may skip `allow` and `record_success` for url: it was clean when read,
        and no call of this process has seen it fail since."""
        return url in self.clean and _failed_here.get(url, float("-inf")) < self.at


# When a call of this process last saw each URL fail (monotonic seconds).
_failed_here: dict[str, float] = {}


def read(urls: list[str]) -> Reading:
    """Read which URLs have a clean breaker, in one round trip for all of them.

    A caller making many calls at once (the I/O pool) reads this every tenth of a second and
    skips `allow` and `record_success` for the URLs it trusts (`Reading.trusts`): both would
    change nothing for a closed breaker with no failures. Once a call of this process sees a URL
    fail, the reading no longer trusts it, so the successes that follow reset the count call by
    call as before; calls of other processes notice from their next reading. Any other state
    goes through the scripts call by call. If Redis fails, no URL is trusted.
    """
    at = time.monotonic()
    if not urls:
        return Reading(frozenset(), at)
    try:
        with _redis().pipeline(transaction=False) as pipe:
            for url in urls:
                pipe.exists(_key(url))
            present = pipe.execute()
    except redis.RedisError:
        return Reading(frozenset(), at)
    return Reading(frozenset(u for u, found in zip(urls, present, strict=True) if not found), at)


def record_success(url: str) -> None:
    """The URL answered: close its breaker and forget its failures."""
    try:
        _redis().delete(_key(url))
    except redis.RedisError as error:
        log.warning("breaker unavailable, success of %s not recorded: %s", url, error)


def record_failure(url: str) -> str:
    """The URL failed (down, timed out, 5xx): count it; returns the breaker's new state."""
    _failed_here[url] = time.monotonic()
    settings = current_app.config["SETTINGS"]
    try:
        state = _redis().eval(_FAILURE, 1, _key(url), settings.breaker_failures, IDLE_EXPIRY_S)
    except redis.RedisError as error:
        log.warning("breaker unavailable, failure of %s not recorded: %s", url, error)
        return CLOSED
    state = state.decode() if isinstance(state, bytes) else str(state)
    if state == OPEN:
        log.warning("circuit breaker open for %s", url)
    return state


def states(urls: list[str]) -> dict[str, BreakerState]:
    """The breaker of each URL as callers see it now (an open one past its cool-down is half-open)."""
    if not urls:
        return {}
    cooldown = current_app.config["SETTINGS"].breaker_cooldown_s
    client = _redis()
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.time()
            for url in urls:
                pipe.hgetall(_key(url))
            seconds_micros, *hashes = pipe.execute()
    except redis.RedisError:
        return {url: BreakerState("unknown", 0) for url in urls}
    now = seconds_micros[0] + seconds_micros[1] / 1_000_000
    result = {}
    for url, raw in zip(urls, hashes, strict=True):
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        state = fields.get("state", CLOSED)
        failures = int(fields.get("failures", 0))
        retry_in = None
        if state == OPEN:
            retry_in = round(float(fields["opened_at"]) + cooldown - now, 3)
            if retry_in <= 0:
                state, retry_in = HALF_OPEN, None
        result[url] = BreakerState(state, failures, retry_in)
    return result


def _key(url: str) -> str:
    return KEY_PREFIX + url


def _redis() -> redis.Redis:
    return current_app.extensions["redis"]
