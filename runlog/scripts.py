"""The Lua scripts that write a run's log: each write is one atomic step in Redis.

Every script takes ``KEYS = run_keys(run_id)`` (meta, log, dedup, live channel) first. An
event is stored as stream entry ``<n>-0`` with fields ``e`` (SSE event name), ``d`` (JSON
data) and ``t`` (ts in microseconds), and announced on the live channel (``announce``) so
that service pods need no read of their own to deliver it.

Every lifecycle change (a run created, a phase move, a cancel request) also appends a
``run`` event carrying the run object to its tenant's feed (a log of the same shape, see
``keys.feed_name``), in the same script: the feed can never disagree with the run. The
feed's keys are derived in Lua from the run's tenant (``feed_key``), which a Redis Cluster
does not allow across slots; there the callers pass ``feed = ''`` and no feed is written.

Errors come back as ``<CODE> <message>``; ``calls.translate_error`` maps them.
"""

from .announce import LUA_ANNOUNCE
from .keys import FEED_PREFIX, PREFIX
from .phases import ALLOWED_MOVES, TERMINAL_PHASES

_ALLOWED_LUA = (
    "{"
    + ", ".join(
        f"{src}={{" + ", ".join(f"{dst}=1" for dst in sorted(dsts)) + "}"
        for src, dsts in ALLOWED_MOVES.items()
    )
    + "}"
)

_TERMINAL_LUA = "{" + ", ".join(f"{p}=1" for p in sorted(TERMINAL_PHASES)) + "}"

# Shared prelude: write one event and announce it; keep the run's keys; write the tenant
# feed. ARGV layout differs per script, so the helpers take their values as arguments.
_PRELUDE = (
    """
local meta, log, dedup, live = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function append_to(m, l, c, maxlen, name, data, t)
  local n = redis.call('HINCRBY', m, 'n', 1)
  redis.call('XADD', l, 'MAXLEN', '~', maxlen, n .. '-0', 'e', name, 'd', data, 't', t)
  redis.call('PUBLISH', c, """
    + LUA_ANNOUNCE
    + """)
  return n
end
local function emit(maxlen, name, data, t)
  return append_to(meta, log, live, maxlen, name, data, t)
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
local function feed_key(tenant, part)
  return '"""
    + PREFIX
    + ":{"
    + FEED_PREFIX
    + """' .. tenant .. '}:' .. part
end
local function nullable(v)
  if v == false or v == nil or v == '' then return cjson.null end
  return v
end
-- The run object of the API (without the poll hint, which belongs to a poll).
local function run_object(run_id)
  local m = redis.call('HMGET', meta, 'phase', 'created_at', 'updated_at', 'halt_class', 'n',
                       'epoch', 'cancel_requested', 'steps', 'rows')
  local n = tonumber(m[5] or '0')
  local last = cjson.null
  if n > 0 then last = string.format('%s-%010d', m[6], n) end
  return cjson.encode({run_id = run_id, phase = m[1], created_at = nullable(m[2]),
    updated_at = nullable(m[3]), halt_class = nullable(m[4]), events = n,
    last_event_id = last, cancel_requested = (m[7] == '1'),
    steps = tonumber(m[8] or '0'), rows = tonumber(m[9] or '0')})
end
-- Append the run's object to its tenant's feed. ``feed_epoch`` is a fresh epoch, used only
-- when the feed does not exist yet; '' means no feed (Redis Cluster).
local function feed_write(run_id, feed_epoch, maxlen, retention, t)
  if feed_epoch == '' then return end
  local tenant = redis.call('HGET', meta, 'tenant')
  local fm, fl, fd, fc = feed_key(tenant, 'meta'), feed_key(tenant, 'log'),
                         feed_key(tenant, 'dedup'), feed_key(tenant, 'live')
  if redis.call('HSETNX', fm, 'epoch', feed_epoch) == 1 then
    redis.call('DEL', fl)
    redis.call('HSET', fm, 'tenant', tenant, 'n', 0, 'phase', 'running')
  end
  append_to(fm, fl, fc, maxlen, 'run', run_object(run_id), t)
  redis.call('EXPIRE', fm, retention)
  redis.call('EXPIRE', fl, retention)
end
"""
)

# ARGV: tenant, created_at, epoch, queued phase data, t, maxlen, retention, run_id,
#       feed epoch ('' = no feed)
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
feed_write(ARGV[8], ARGV[9], ARGV[6], ARGV[7], ARGV[5])
return {'queued', ARGV[3], 1}
"""
)

# KEYS: run keys, request, queue, idempotency record ('' = none)
# ARGV: tenant, created_at, epoch, queued phase data, t, maxlen, retention, run_id,
#       feed epoch ('' = no feed), request JSON, body digest, idempotency ttl_s
SUBMIT = (
    _PRELUDE
    + """
local request, queue, idem = KEYS[5], KEYS[6], KEYS[7]
if idem ~= '' then
  local prev = redis.call('GET', idem)
  if prev then
    local rec = cjson.decode(prev)
    if rec.digest ~= ARGV[11] then
      return redis.error_reply('REUSED the Idempotency-Key was used with another body')
    end
    return {'replayed', rec.run_id}
  end
end
if redis.call('EXISTS', meta) == 1 then
  return redis.error_reply('EXISTS a run with this run_id exists')
end
redis.call('DEL', log, dedup)
redis.call('HSET', meta, 'tenant', ARGV[1], 'phase', 'queued', 'created_at', ARGV[2],
           'updated_at', ARGV[2], 'epoch', ARGV[3], 'n', 0)
emit(ARGV[6], 'phase', ARGV[4], ARGV[5])
redis.call('SET', request, ARGV[10], 'EX', ARGV[7])
keep_for(ARGV[7])
redis.call('XADD', queue, '*', 'run_id', ARGV[8])
if idem ~= '' then
  redis.call('SET', idem, cjson.encode({run_id = ARGV[8], digest = ARGV[11]}), 'EX', ARGV[12])
end
feed_write(ARGV[8], ARGV[9], ARGV[6], ARGV[7], ARGV[5])
return {'created', ARGV[8]}
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
-- The run object counts steps and extracted rows, for dashboards and polls.
if ARGV[2] == 'step' then
  redis.call('HINCRBY', meta, 'steps', 1)
elseif ARGV[2] == 'extract' then
  redis.call('HINCRBY', meta, 'rows', 1)
end
if ARGV[8] ~= '' then redis.call('HSET', meta, 'pos:' .. ARGV[8], ARGV[10]) end
keep_for(ARGV[6])
return {st[1], n, 0}
"""
)

# ARGV: phase, halt_class ('' = none), phase data, terminal data ('' = not terminal), t,
#       maxlen, retention, updated_at, source ('' = none), line offset, next offset,
#       run_id, feed epoch ('' = no feed)
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
feed_write(ARGV[12], ARGV[13], ARGV[6], ARGV[7], ARGV[5])
return {cur[2], n, 0}
"""
)

# Cancel as the API asks: a queued run is cancelled at once (phase and terminal records);
# a running or recovering one gets ``cancel_requested`` for its runner to act on.
# ARGV: phase data, terminal data, t, maxlen, retention, updated_at, run_id, feed epoch
# Reply: {'cancelled' | 'requested', epoch, n}
CANCEL = (
    _PRELUDE
    + "local terminal_phases = "
    + _TERMINAL_LUA
    + """
local cur = redis.call('HMGET', meta, 'phase', 'epoch', 'cancel_requested')
if not cur[1] then return redis.error_reply('NORUN no such run') end
if terminal_phases[cur[1]] then
  return redis.error_reply('TERMINAL run is already ' .. cur[1] .. '; it takes no more moves')
end
if cur[1] == 'queued' then
  emit(ARGV[4], 'phase', ARGV[1], ARGV[3])
  local n = emit(ARGV[4], 'terminal', ARGV[2], ARGV[3])
  redis.call('HSET', meta, 'phase', 'cancelled', 'updated_at', ARGV[6], 'terminal', n)
  keep_for(ARGV[5])
  feed_write(ARGV[7], ARGV[8], ARGV[4], ARGV[5], ARGV[3])
  return {'cancelled', cur[2], n}
end
if cur[3] ~= '1' then
  redis.call('HSET', meta, 'cancel_requested', '1', 'updated_at', ARGV[6])
  feed_write(ARGV[7], ARGV[8], ARGV[4], ARGV[5], ARGV[3])
end
return {'requested', cur[2], 0}
"""
)
