"""The rate limits' Redis storage: limits' own, except that taking a call from a sliding window
also answers where the window then stands.

flask-limiter takes the call (one script) and, for the X-RateLimit headers, reads the window
again (a second script, a second round trip to Redis on every request). Here the script that
takes the call returns the window as it left it, and the read that follows in the same thread
gets that answer without asking Redis. A window is handed out once and only for a second; any
other read goes to Redis as before.
"""

from __future__ import annotations

import threading
import time

from limits.storage import RedisStorage

# `windowed+redis://...`: the URI scheme that picks this storage (app/api/limits.py).
SCHEME_PREFIX = "windowed+"
FRESH_SECONDS = 1.0
# Windows a thread keeps unread at most (one per limit of its last request, normally).
MAX_HELD = 32

# KEYS: the previous and the current window's counters. ARGV: limit, expiry (s), amount.
# As limits' acquire_sliding_window.lua (shift an expired window, weigh the previous one), but
# returns {taken, previous count, previous ttl ms, current count, current ttl ms} after the take.
_TAKE = """
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2]) * 1000
local amount = tonumber(ARGV[3])

local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
if current_ttl > 0 and current_ttl < expiry then
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
end

local previous_count = tonumber(redis.call('get', KEYS[1])) or 0
local previous_ttl = math.max(tonumber(redis.call('pttl', KEYS[1])), 0)
local current_count = tonumber(redis.call('get', KEYS[2])) or 0
current_ttl = math.max(tonumber(redis.call('pttl', KEYS[2])), 0)

local taken = 0
local weighted = math.floor(previous_count * previous_ttl / expiry) + current_count
if amount <= limit and weighted + amount <= limit then
    if redis.call('exists', KEYS[2]) == 1 then
        redis.call('incrby', KEYS[2], amount)
    else
        redis.call('set', KEYS[2], amount, 'PX', expiry * 2)
        current_ttl = expiry * 2
    end
    current_count = current_count + amount
    taken = 1
end
return {taken, previous_count, previous_ttl, current_count, current_ttl}
"""

Window = tuple[int, float, int, float]


class WindowedRedisStorage(RedisStorage):
    """RedisStorage whose sliding-window take also answers the next read of that window."""

    STORAGE_SCHEME = [SCHEME_PREFIX + scheme for scheme in ("redis", "rediss", "redis+unix")]

    def __init__(self, uri: str, **options) -> None:
        super().__init__(uri.removeprefix(SCHEME_PREFIX), **options)
        self._held = threading.local()

    def initialize_storage(self, uri: str) -> None:
        super().initialize_storage(uri)
        self._take = self.get_connection().register_script(_TAKE.encode())

    def _windows(self) -> dict[str, tuple[float, Window]]:
        held = getattr(self._held, "windows", None)
        if held is None:
            held = self._held.windows = {}
        return held

    def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        previous_key = self.prefixed_key(self._previous_window_key(key))
        current_key = self.prefixed_key(self._current_window_key(key))
        taken, previous_count, previous_ttl, current_count, current_ttl = self._take(
            [previous_key, current_key], [limit, expiry, amount]
        )
        held = self._windows()
        if len(held) >= MAX_HELD:
            held.clear()
        held[key] = (
            time.monotonic(),
            (int(previous_count), previous_ttl / 1000, int(current_count), current_ttl / 1000),
        )
        return bool(taken)

    def get_sliding_window(self, key: str, expiry: int) -> Window:
        kept = self._windows().pop(key, None)
        if kept is not None and time.monotonic() - kept[0] < FRESH_SECONDS:
            return kept[1]
        return super().get_sliding_window(key, expiry)
