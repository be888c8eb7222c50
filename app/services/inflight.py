"""How many calls may be in flight to one downstream service, and the slots that hold that limit.

`current_limit(view)` is the one place that says what a service's in-flight limit is right now;
everything that takes a slot asks it: the registry's fixed `max_concurrency`, or for
`max_concurrency: "auto"` the limit app/services/adaptive_limit.py learns at runtime. A learned
limit moves while calls run, so holders follow it as their calls end: `ADJUST` (before an idle
slot goes to a claimed task) and `REFILL` (when none is claimed) give back the slots above a limit
that fell and take free ones under a limit that rose.
"""

from __future__ import annotations

from app.clients.downstream import DownstreamError
from app.services import adaptive_limit
from app.services.adaptive_limit import Limited


def current_limit(view: Limited) -> int:
    """The number of calls that may be in flight to the service of `view`, over all workers."""
    return max(adaptive_limit.limit(view), 1)


def observe(view: Limited, error: DownstreamError | None, duration_ms: float) -> None:
    """Hear how one call ended (None: it succeeded; else its error: `status` 429, 5xx, or None
    for a timeout or a refused connection), as it ends.

    Neither limit needs it: the adaptive limit is fed per HTTP attempt inside
    `registry.attempt` (each URL's own answer and latency, for the pool and blocking calls alike),
    not per call, which may span several URLs.
    """


# ---- slots and the waiting line, in Redis ---------------------------------------------------
#
# Per service: a sorted set of slots (token -> lease expiry; an expired slot belonged to a
# holder that died and counts no more), one waiting line of task ids per tier, and a pause key
# a 429's Retry-After sets. Two scripts keep the rule "a task waits in a line only while every
# slot is taken, and a slot is given back only while every line is empty" atomic, so a freed slot
# never misses waiting work: `start` puts ids in the line and takes free slots for the first
# waiting ids; `refill` hands a holder's idle slots to the next waiting ids, giving back only
# what no one waits for.

SLOTS_PREFIX = "orchestrator:inflight:"
LINE_PREFIX = "orchestrator:waiting:"
PAUSE_PREFIX = "orchestrator:paused:"

# KEYS: slots, pause, own line, lines by priority (3). ARGV: limit, lease s, token prefix, ids...
# Returns {tokens..., "|", ids...}: the slots taken and the ids they are for (same order).
START = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if #ARGV > 3 then
  redis.call('RPUSH', KEYS[3], unpack(ARGV, 4))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
if redis.call('EXISTS', KEYS[2]) == 1 then return {'|'} end
local free = tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[1])
local ids = {}
for i = 4, #KEYS do
  if free <= #ids then break end
  local got = redis.call('LPOP', KEYS[i], free - #ids)
  if got then for _, id in ipairs(got) do ids[#ids + 1] = id end end
end
for i, _ in ipairs(ids) do
  local token = ARGV[3] .. ':' .. redis.call('INCR', KEYS[1] .. ':seq')
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), token)
  out[#out + 1] = token
end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
out[#out + 1] = '|'
for _, id in ipairs(ids) do out[#out + 1] = id end
return out
"""

# KEYS: slots, pause, lines by priority (3). ARGV: lease s, limit, token prefix, idle tokens...
# Hands idle slots to waiting ids (renewing their lease), as many as the limit allows now: fewer
# when it fell (the others are given back), more when it rose (new slots are taken). Gives back
# the rest (all when paused). Returns {tokens..., "|", ids...}.
REFILL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local idle = {}
for i = 4, #ARGV do idle[#idle + 1] = ARGV[i] end
local live = 0
for _, token in ipairs(idle) do
  if redis.call('ZSCORE', KEYS[1], token) then live = live + 1 end
end
-- The slots others hold, and so how many calls this holder may have: its idle slots at most,
-- unless the limit rose.
local others = redis.call('ZCARD', KEYS[1]) - live
local want = math.max(tonumber(ARGV[2]) - others, 0)
local ids = {}
if redis.call('EXISTS', KEYS[2]) == 0 then
  for i = 3, #KEYS do
    if want <= #ids then break end
    local got = redis.call('LPOP', KEYS[i], want - #ids)
    if got then for _, id in ipairs(got) do ids[#ids + 1] = id end end
  end
end
local out = {}
for _, token in ipairs(idle) do
  if #out < #ids then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), token)
    out[#out + 1] = token
  else
    redis.call('ZREM', KEYS[1], token)
  end
end
while #out < #ids do
  local token = ARGV[3] .. ':' .. redis.call('INCR', KEYS[1] .. ':seq')
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), token)
  out[#out + 1] = token
end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 60)
out[#out + 1] = '|'
for _, id in ipairs(ids) do out[#out + 1] = id end
return out
"""

# KEYS: slots, pause. ARGV: limit, lease s, token prefix, claimed tasks waiting, idle tokens...
# For a holder with claimed tasks and a learned limit: keeps as many of its idle slots as the limit
# allows now (giving back the rest) and, unless the service is paused, takes free slots up to the
# limit for the claimed tasks that have none. Returns the tokens the holder may use.
ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local idle = {}
for i = 5, #ARGV do idle[#idle + 1] = ARGV[i] end
local live = 0
for _, token in ipairs(idle) do
  if redis.call('ZSCORE', KEYS[1], token) then live = live + 1 end
end
-- Idle and new slots this holder may have: the limit less every other slot, its calls included.
local allowed = math.max(tonumber(ARGV[1]) - (redis.call('ZCARD', KEYS[1]) - live), 0)
local out = {}
for _, token in ipairs(idle) do
  if #out < allowed then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), token)
    out[#out + 1] = token
  else
    redis.call('ZREM', KEYS[1], token)
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  local wanted = math.min(tonumber(ARGV[4]), allowed)
  while #out < wanted do
    local token = ARGV[3] .. ':' .. redis.call('INCR', KEYS[1] .. ':seq')
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), token)
    out[#out + 1] = token
  end
end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
return out
"""

# KEYS: pause, lines by priority (3). ARGV: count. Up to count waiting ids (L20 first) for a
# holder to claim ahead of its slots freeing; none while the service is paused.
TAKE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {} end
local ids = {}
local want = tonumber(ARGV[1])
for i = 2, #KEYS do
  if want <= #ids then break end
  local got = redis.call('LPOP', KEYS[i], want - #ids)
  if got then for _, id in ipairs(got) do ids[#ids + 1] = id end end
end
return ids
"""

# KEYS: slots. ARGV: lease s, tokens... Renews the leases of slots still held.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
return 1
"""


def slots_key(service: str) -> str:
    return SLOTS_PREFIX + service


def pause_key(service: str) -> str:
    return PAUSE_PREFIX + service


def line_key(service: str, tier: str) -> str:
    return f"{LINE_PREFIX}{service}:{tier}"


def split_reply(reply: list) -> tuple[list[str], list[int]]:
    """A START or REFILL answer as (tokens, task ids)."""
    values = [v.decode() if isinstance(v, bytes) else str(v) for v in reply]
    bar = values.index("|")
    return values[:bar], [int(v) for v in values[bar + 1 :]]
