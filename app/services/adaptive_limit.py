"""Adaptive concurrency: how many calls a downstream service takes at once, found by measuring.

A service set to `max_concurrency: "auto"` (with `max_concurrency_ceiling`) has no fixed limit.
Its limit starts low and moves with what the calls see, the way TCP congestion control moves its
window (and as Netflix's concurrency-limits library applies it to services):

- Successful calls are gathered in windows of at least max(WINDOW_MIN_SAMPLES, limit) calls. At
  the end of a window its mean latency is compared with the service's no-load latency (the
  `baseline`: the lowest window mean seen, drifting slowly up so a service that became slower
  for good is learned). The gradient `TOLERANCE * baseline / mean`, capped at 1, says whether
  requests have started to queue inside the service:
  - below 1 (latency rose by more than the tolerance): the limit is multiplied by it (halved
    at most);
  - at 1 (latency holds), if the window really used the limit (its busiest moment had at least
    half the limit in flight, so an idle service does not grow a limit it never tests): the
    limit grows, by SLOW_START_FACTOR per window until the first cut or the first window whose
    latency rose by more than SLOW_START_EXIT (a sign the knee is near, so the next jump of 50%
    does not overshoot into errors), then by one per window.
- A 429, a 5xx or a timeout (a "drop") cuts the limit to BACKOFF_RATIO of itself at once.
- Every cut starts a new epoch. A call carries the epoch it started in; one from an older epoch
  neither cuts nor is measured, so a burst of failures from calls sent under the old limit counts
  as one signal, not twenty, and calls sent under a higher limit say nothing about the new one.

Connection errors and 4xx answers other than 429 move nothing: the first are the circuit
breaker's business (a dead URL among live ones says nothing about the service's capacity), the
second are the request's fault.

The state is one Redis hash per service, changed only by one Lua script, so every worker process on
every machine reads and feeds the same limit, and concurrent updates never lose one another.
Time is Redis's clock. If Redis cannot be read, `limit()` answers INITIAL_LIMIT (capped by the
ceiling): a conservative guess, never the ceiling.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import redis
from flask import current_app

from app.clients.downstream import DownstreamHTTPError, DownstreamTimeout

log = logging.getLogger(__name__)

KEY_PREFIX = "orchestrator:adaptive:"
AUTO = "auto"

MIN_LIMIT = 1
# Where a service's limit starts (capped by its ceiling) and what a process assumes when Redis
# cannot be read: low enough for any service, found again in a few windows by slow start.
INITIAL_LIMIT = 4
# Latency may rise this much over the baseline before it counts as queueing (Gradient2-like).
TOLERANCE = 1.5
# A drop (429, 5xx, timeout) keeps this share of the limit (multiplicative decrease).
BACKOFF_RATIO = 0.75
# A latency cut never takes more than half the limit in one window.
MIN_GRADIENT = 0.5
SLOW_START_FACTOR = 1.5
# Slow start ends once a window's latency is this much over the baseline, even within tolerance.
SLOW_START_EXIT = 1.25
WINDOW_MIN_SAMPLES = 10
# Each window's mean pulls the baseline up by this share of the gap (a lower mean replaces it).
BASELINE_DRIFT = 0.02
# A service nobody called for a day starts over.
IDLE_EXPIRY_S = 86_400

SUCCESS, DROP, IGNORE = "success", "drop", "ignore"

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 "

# KEYS[1] the service's hash, KEYS[2] (optional) its slots (token -> lease expiry). ARGV: outcome,
# latency ms, in flight when the call started (-1: count KEYS[2]'s live slots now, or unknown),
# the epoch it started in (-1 if unknown), ceiling, initial limit, minimum, tolerance,
# backoff ratio, minimum gradient, slow-start factor, window minimum samples, baseline drift,
# idle expiry, slow-start exit. Returns the new limit (a string: Lua numbers would come back as
# integers).
_RECORD = (
    _NOW
    + """
local key = KEYS[1]
local outcome = ARGV[1]
local latency = tonumber(ARGV[2])
local in_flight = tonumber(ARGV[3])
if in_flight < 0 and #KEYS > 1 then in_flight = redis.call('ZCOUNT', KEYS[2], now, '+inf') end
local epoch = tonumber(ARGV[4])
local ceiling = tonumber(ARGV[5])
local minimum = tonumber(ARGV[7])
local s = redis.call('HMGET', key, 'limit', 'baseline_ms', 'w_n', 'w_sum', 'w_peak', 'cuts',
                     'phase')
local limit = tonumber(s[1]) or tonumber(ARGV[6])
limit = math.max(minimum, math.min(ceiling, limit))
local cuts = tonumber(s[6]) or 0
local phase = s[7] or 'slow_start'
local current = epoch < 0 or epoch >= cuts
local function new_window()
  redis.call('HSET', key, 'w_n', 0, 'w_sum', 0, 'w_peak', 0)
end
local function cut(to)
  limit = math.max(minimum, to)
  phase = 'avoid'
  redis.call('HSET', key, 'cuts', cuts + 1, 'cut_at', now)
  new_window()
end
if outcome == 'drop' then
  redis.call('HINCRBY', key, 'drops', 1)
  if current then cut(limit * tonumber(ARGV[9])) end
elseif outcome == 'success' then
  redis.call('HINCRBY', key, 'samples', 1)
  if current then
    local n = (tonumber(s[3]) or 0) + 1
    local sum = (tonumber(s[4]) or 0) + latency
    local peak = math.max(tonumber(s[5]) or 0, in_flight)
    if n >= math.max(tonumber(ARGV[12]), math.floor(limit)) then
      local mean = sum / n
      local baseline = tonumber(s[2]) or mean
      local baseline_before = baseline
      local gradient = math.min(1, tonumber(ARGV[8]) * baseline / math.max(mean, 0.001))
      if mean < baseline then
        baseline = mean
      else
        baseline = baseline + (mean - baseline) * tonumber(ARGV[13])
      end
      redis.call('HSET', key, 'baseline_ms', baseline, 'window_ms', mean)
      if gradient < 1 then
        cut(limit * math.max(tonumber(ARGV[10]), gradient))
      else
        if in_flight < 0 or peak * 2 >= limit then
          if phase == 'slow_start' and mean > baseline_before * tonumber(ARGV[15]) then
            phase = 'avoid'
          end
          if phase == 'slow_start' then
            limit = limit * tonumber(ARGV[11])
          else
            limit = limit + 1
          end
          limit = math.min(ceiling, limit)
        end
        new_window()
      end
    else
      redis.call('HSET', key, 'w_n', n, 'w_sum', sum, 'w_peak', peak)
    end
  end
end
redis.call('HSET', key, 'limit', limit, 'phase', phase, 'updated_at', now)
redis.call('EXPIRE', key, ARGV[14])
return tostring(limit)
"""
)


class Limited(Protocol):
    """What the controller needs to know of a service (the registry's ServiceView has it)."""

    @property
    def name(self) -> str: ...

    @property
    def max_concurrency(self) -> int: ...

    @property
    def concurrency_auto(self) -> bool: ...

    @property
    def max_concurrency_ceiling(self) -> int | None: ...


@dataclass(frozen=True)
class AdaptiveState:
    """What GET /services/{name} shows of an automatic limit."""

    limit: int
    ceiling: int
    phase: str
    baseline_latency_ms: float | None
    window_latency_ms: float | None
    samples: int
    drops: int
    cuts: int


def limit(service: Limited) -> int:
    """The calls the service may have in flight now: its fixed max_concurrency, or the learned one."""
    if not service.concurrency_auto:
        return service.max_concurrency
    ceiling = _ceiling(service)
    try:
        stored = _redis().hget(_key(service.name), "limit")
    except redis.RedisError as error:
        log.warning(
            "adaptive limit of %s unreadable, using the initial one: %s", service.name, error
        )
        stored = None
    return _bounded(stored, ceiling)


def record(
    service: Limited,
    outcome: str,
    latency_ms: float,
    in_flight: int | None = None,
    epoch: int | None = None,
    in_flight_key: str | None = None,
) -> int | None:
    """Feed one call's outcome and latency to the service's limit; the new limit (None: fixed).

    `in_flight` is how many calls the service had when this one started (or `in_flight_key`, the
    service's slots in Redis, counted as it ends), so a window that never used its limit does not
    grow it; `epoch` is epoch() when it started, so a call sent under an older limit neither cuts
    nor is measured (None: unknown, taken as used and current). Never raises: the call's own
    result matters more than the limit's bookkeeping.
    """
    if not service.concurrency_auto or outcome == IGNORE:
        return None
    keys = [_key(service.name)] + ([in_flight_key] if in_flight_key else [])
    try:
        new = _redis().eval(
            _RECORD,
            len(keys),
            *keys,
            outcome,
            max(float(latency_ms), 0.0),
            -1 if in_flight is None else int(in_flight),
            -1 if epoch is None else int(epoch),
            _ceiling(service),
            _initial(service),
            MIN_LIMIT,
            TOLERANCE,
            BACKOFF_RATIO,
            MIN_GRADIENT,
            SLOW_START_FACTOR,
            WINDOW_MIN_SAMPLES,
            BASELINE_DRIFT,
            IDLE_EXPIRY_S,
            SLOW_START_EXIT,
        )
    except redis.RedisError as error:
        log.warning("adaptive limit of %s not updated: %s", service.name, error)
        return None
    return _bounded(new, _ceiling(service))


def outcome_of(error: BaseException | None) -> str:
    """How a call's result counts: SUCCESS, DROP (429, 5xx, timeout) or IGNORE (anything else)."""
    if error is None:
        return SUCCESS
    if isinstance(error, DownstreamTimeout):
        return DROP
    if isinstance(error, DownstreamHTTPError):
        status = error.status or 0
        return DROP if status == 429 or status >= 500 else IGNORE
    return IGNORE


def epoch(service: Limited) -> int | None:
    """How many times the service's limit was cut: a call started now belongs to this epoch."""
    if not service.concurrency_auto:
        return None
    try:
        return int(_redis().hget(_key(service.name), "cuts") or 0)
    except redis.RedisError:
        return None


@contextmanager
def measured(
    service: Limited, in_flight: int | None = None, in_flight_key: str | None = None
) -> Iterator[None]:
    """Time the call in the block and record its outcome; exceptions pass on unchanged."""
    if not service.concurrency_auto:
        yield
        return
    started_in = epoch(service)
    started = time.monotonic()
    outcome = SUCCESS
    try:
        yield
    except BaseException as error:
        outcome = outcome_of(error)
        raise
    finally:
        elapsed_ms = (time.monotonic() - started) * 1000
        record(service, outcome, elapsed_ms, in_flight, started_in, in_flight_key)


def state(service: Limited) -> AdaptiveState | None:
    """The automatic limit's state for the API (None for a fixed limit or unreadable Redis)."""
    if not service.concurrency_auto:
        return None
    try:
        stored = _redis().hgetall(_key(service.name))
    except redis.RedisError:
        return None
    raw = {_text(k): _text(v) for k, v in stored.items()}
    ceiling = _ceiling(service)
    return AdaptiveState(
        limit=_bounded(raw.get("limit"), ceiling),
        ceiling=ceiling,
        phase=raw.get("phase") or "slow_start",
        baseline_latency_ms=_rounded(raw.get("baseline_ms")),
        window_latency_ms=_rounded(raw.get("window_ms")),
        samples=int(raw.get("samples") or 0),
        drops=int(raw.get("drops") or 0),
        cuts=int(raw.get("cuts") or 0),
    )


def reset(name: str) -> None:
    """Forget what was learned of a service (it became automatic, or its URLs changed)."""
    try:
        _redis().delete(_key(name))
    except redis.RedisError as error:
        log.warning("adaptive limit of %s not reset: %s", name, error)


def _bounded(stored: bytes | str | None, ceiling: int) -> int:
    initial = min(ceiling, INITIAL_LIMIT)
    value = float(stored) if stored is not None else initial
    return max(MIN_LIMIT, min(ceiling, math.floor(value)))


def _ceiling(service: Limited) -> int:
    return service.max_concurrency_ceiling or service.max_concurrency


def _initial(service: Limited) -> int:
    return min(_ceiling(service), INITIAL_LIMIT)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _rounded(raw: str | None) -> float | None:
    return None if raw is None else round(float(raw), 1)


def _key(name: str) -> str:
    return KEY_PREFIX + name


def _redis() -> redis.Redis:
    return current_app.extensions["redis"]
