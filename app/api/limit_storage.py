"""The rate limits' Redis storage: the `limits` library's own, with one round trip per request.

flask-limiter takes the call (one script) and then, for the X-RateLimit headers, reads the window
again (a second script, a second round trip to Redis on every request). Here the take sends both
of the library's scripts in one pipeline: the read, run right after the take, answers the window
as the take left it, and is held for the header read that follows in the same thread. A window
is handed out once and only for a second; any other read goes to Redis as before.
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from limits.storage import RedisStorage
from redis import Redis
from redis.exceptions import NoScriptError

# `windowed+redis://...`: the URI scheme that picks this storage (app/api/limits.py).
SCHEME_PREFIX = "windowed+"
FRESH_SECONDS = 1.0
# Windows a thread keeps unread at most (one per limit of its last request, normally).
MAX_HELD = 32

# (previous count, previous ttl in s, current count, current ttl in s), as the library answers.
Window = tuple[int, float, int, float]


def _window(reply: Any) -> Window:
    """The sliding-window script's reply ([counts and ttls in ms], or nil) as a Window."""
    if not reply:
        return 0, 0.0, 0, 0.0
    previous, previous_ttl, current, current_ttl = reply
    return (
        int(previous or 0),
        max(0.0, float(previous_ttl or 0)) / 1000,
        int(current or 0),
        max(0.0, float(current_ttl or 0)) / 1000,
    )


class WindowedRedisStorage(RedisStorage):
    """RedisStorage whose sliding-window take also answers the next read of that window."""

    STORAGE_SCHEME = [SCHEME_PREFIX + scheme for scheme in ("redis", "rediss", "redis+unix")]

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri.removeprefix(SCHEME_PREFIX), **options)
        self._held = threading.local()

    def _windows(self) -> dict[str, tuple[float, Window]]:
        held = getattr(self._held, "windows", None)
        if held is None:
            held = self._held.windows = {}
        return held

    def _take_and_read(self, keys: list[str], limit: int, expiry: int, amount: int) -> list[Any]:
        """Both scripts, by their hashes, in one round trip: [taken, window after the take]."""
        # limits types its client as a protocol of the calls it makes; it is a redis.Redis.
        pipe = cast(Redis, self.get_connection()).pipeline(transaction=False)
        pipe.evalsha(self.lua_acquire_sliding_window.sha, 2, *keys, limit, expiry, amount)
        pipe.evalsha(self.lua_sliding_window.sha, 2, *keys, expiry)
        return pipe.execute()

    def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        keys = [
            self.prefixed_key(self._previous_window_key(key)),
            self.prefixed_key(self._current_window_key(key)),
        ]
        try:
            taken, window = self._take_and_read(keys, limit, expiry, amount)
        except NoScriptError:
            # Redis forgot the scripts (a restart): the library's own calls load them again.
            taken = self.lua_acquire_sliding_window(keys, [limit, expiry, amount])
            window = self.lua_sliding_window(keys, [expiry])
        held = self._windows()
        if len(held) >= MAX_HELD:
            held.clear()
        held[key] = (time.monotonic(), _window(window))
        return bool(taken)

    def get_sliding_window(self, key: str, expiry: int) -> Window:
        kept = self._windows().pop(key, None)
        if kept is not None and time.monotonic() - kept[0] < FRESH_SECONDS:
            return kept[1]
        return super().get_sliding_window(key, expiry)
