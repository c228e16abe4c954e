"""The Lua scripts that write a run's log: each write is one atomic step in Redis.

Every script takes ``KEYS = run_keys(run_id)`` (meta, log, dedup, live channel). An
event is stored as stream entry ``<n>-0`` with fields ``e`` (SSE event name), ``d``
(JSON data) and ``t`` (ts in microseconds), and announced on the live channel as
``<n>:<t>:<e>:<d>`` so that service pods need no read of their own to deliver it.
Errors come back as ``<CODE> <message>``; ``codes`` in the bridge maps them.
"""

from .phases import ALLOWED_MOVES

_ALLOWED_LUA = (
    "{"
    + ", ".join(
        f"{src}={{" + ", ".join(f"{dst}=1" for dst in sorted(dsts)) + "}"
        for src, dsts in ALLOWED_MOVES.items()
    )
    + "}"
)

# Shared prelude: write one event and announce it. ARGV layout differs per script, so the
# helpers take their values as arguments.
_PRELUDE = """
local meta, log, dedup, live = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function emit(maxlen, name, data, t)
  local n = redis.call('HINCRBY', meta, 'n', 1)
  redis.call('XADD', log, 'MAXLEN', '~', maxlen, n .. '-0', 'e', name, 'd', data, 't', t)
  redis.call('PUBLISH', live, n .. ':' .. t .. ':' .. name .. ':' .. data)
  return n
end
local function keep_for(seconds)
  redis.call('EXPIRE', meta, seconds)
  redis.call('EXPIRE', log, seconds)
  redis.call('EXPIRE', dedup, seconds)
end
-- A line of a followed file at or before the recorded position was already published.
local function seen_source(src, pos_from)
  if src == '' then return false end
  local done = tonumber(redis.call('HGET', meta, 'pos:' .. src) or '-1')
  return tonumber(pos_from) < done
end
"""

# ARGV: tenant, created_at, epoch, queued phase data, t, maxlen, retention
OPEN_RUN = (
    _PRELUDE
    + """
local cur = redis.call('HMGET', meta, 'tenant', 'phase', 'epoch')
if cur[1] then
  if cur[1] ~= ARGV[1] then
    return redis.error_reply('TENANT run belongs to another tenant')
  end
  return {cur[2], cur[3], 0}
end
-- A half-lost run (meta evicted, log kept) starts over as a new incarnation.
redis.call('DEL', log, dedup)
redis.call('HSET', meta, 'tenant', ARGV[1], 'phase', 'queued', 'created_at', ARGV[2],
           'updated_at', ARGV[2], 'epoch', ARGV[3], 'n', 0)
emit(ARGV[6], 'phase', ARGV[4], ARGV[5])
keep_for(ARGV[7])
return {'queued', ARGV[3], 1}
"""
)

# ARGV: seq field ('' = none), event, data, t, maxlen, retention, updated_at,
#       source ('' = none), line offset, next offset
APPEND_ROW = (
    _PRELUDE
    + """
local st = redis.call('HMGET', meta, 'epoch', 'terminal')
if not st[1] then return redis.error_reply('NORUN no such run') end
if ARGV[1] ~= '' then
  local prev = redis.call('HGET', dedup, ARGV[1])
  if prev then return {st[1], tonumber(prev), 1} end
end
if seen_source(ARGV[8], ARGV[9]) then return {st[1], 0, 1} end
if st[2] then
  return redis.error_reply('TERMINAL run is terminal; rows after the terminal record are refused')
end
local n = emit(ARGV[5], ARGV[2], ARGV[3], ARGV[4])
if ARGV[1] ~= '' then redis.call('HSET', dedup, ARGV[1], n) end
redis.call('HSET', meta, 'updated_at', ARGV[7])
if ARGV[8] ~= '' then redis.call('HSET', meta, 'pos:' .. ARGV[8], ARGV[10]) end
keep_for(ARGV[6])
return {st[1], n, 0}
"""
)

# ARGV: phase, halt_class ('' = none), phase data, terminal data ('' = not terminal), t,
#       maxlen, retention, updated_at, source ('' = none), line offset, next offset
SET_PHASE = (
    _PRELUDE
    + "local allowed = "
    + _ALLOWED_LUA
    + """
local cur = redis.call('HMGET', meta, 'phase', 'epoch')
if not cur[1] then return redis.error_reply('NORUN no such run') end
if seen_source(ARGV[9], ARGV[10]) then return {cur[2], 0, 1} end
local moves = allowed[cur[1]]
if not (moves and moves[ARGV[1]]) then
  if not moves then
    return redis.error_reply('TERMINAL run is already ' .. cur[1] .. '; it takes no more moves')
  end
  return redis.error_reply('BADMOVE invalid phase move ' .. cur[1] .. ' -> ' .. ARGV[1])
end
local n = emit(ARGV[6], 'phase', ARGV[3], ARGV[5])
redis.call('HSET', meta, 'phase', ARGV[1], 'updated_at', ARGV[8])
if ARGV[2] ~= '' then redis.call('HSET', meta, 'halt_class', ARGV[2]) end
if ARGV[4] ~= '' then
  n = emit(ARGV[6], 'terminal', ARGV[4], ARGV[5])
  redis.call('HSET', meta, 'terminal', n)
end
if ARGV[9] ~= '' then redis.call('HSET', meta, 'pos:' .. ARGV[9], ARGV[11]) end
keep_for(ARGV[7])
return {cur[2], n, 0}
"""
)
