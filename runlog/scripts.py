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

_FENCED_OUT = """
-- A worker's write carries the fence its claim was given; once another worker has taken
-- the run over (the fence moved on), the late writer is refused. '' (or absent) = a write
-- outside the work queue (tail, replay, the phase CLI), which is not fenced.
local function fenced_out(mine, current)
  if mine == nil or mine == '' or mine == current then return false end
  return redis.error_reply('FENCED the run was taken over by another worker (fence '
    .. tostring(current or 'none') .. ', this claim ' .. mine .. '); nothing written')
end
"""

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
-- Keep the run's keys ``seconds`` more from ``t`` (the write's ts, microseconds), and
-- note in meta when that runs out: the row path reads it to renew only when it is due.
local function keep_for(seconds, t)
  redis.call('EXPIRE', meta, seconds)
  redis.call('EXPIRE', log, seconds)
  redis.call('EXPIRE', dedup, seconds)
  local at = math.floor(tonumber(t) / 1000000) + tonumber(seconds)
  redis.call('HSET', meta, 'exp_at', string.format('%.0f', at))
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
    + _FENCED_OUT
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
           'updated_at', ARGV[2], 'epoch', ARGV[3], 'n', 0, 'sm', 1)
emit(ARGV[6], 'phase', ARGV[4], ARGV[5])
keep_for(ARGV[7], ARGV[5])
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
           'updated_at', ARGV[2], 'epoch', ARGV[3], 'n', 0, 'sm', 1)
emit(ARGV[6], 'phase', ARGV[4], ARGV[5])
redis.call('SET', request, ARGV[10], 'EX', ARGV[7])
keep_for(ARGV[7], ARGV[5])
redis.call('XADD', queue, '*', 'run_id', ARGV[8])
if idem ~= '' then
  redis.call('SET', idem, cjson.encode({run_id = ARGV[8], digest = ARGV[11]}), 'EX', ARGV[12])
end
feed_write(ARGV[8], ARGV[9], ARGV[6], ARGV[7], ARGV[5])
return {'created', ARGV[8]}
"""
)

# ARGV: seq field ('' = none), event, data, t, maxlen, retention, updated_at,
#       source ('' = none), line offset, next offset, fence ('' = unfenced)
APPEND_ROW = (
    # Not the shared prelude: defining its closures on every call cost more Redis CPU than
    # the row's commands themselves, so the hot path carries only what it uses.
    """
local meta, log, dedup, live = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
"""
    + _FENCED_OUT
    + """
-- The hot path: four commands per row (HMGET, XADD, PUBLISH, HSET). Everything the row
-- needs to know is read in one HMGET (dedup record, source position, counters, when the
-- keys' expiry is due), everything it changes is written in one HSET; the keys' expiry is
-- renewed only once a tenth of the retention has passed since it was last set.
local seq, event, t, retention, src = ARGV[1], ARGV[2], ARGV[4], tonumber(ARGV[6]), ARGV[8]
local seq_f, pos_f = seq, 'pos:' .. src
if seq_f == '' then seq_f = 'n' end
if src == '' then pos_f = 'n' end
local st = redis.call('HMGET', meta, 'epoch', 'terminal', 'fence', 'n', 'steps', 'rows',
                      'exp_at', seq_f, pos_f, 'sm')
if not st[1] then return redis.error_reply('NORUN no such run') end
local refused = fenced_out(ARGV[11], st[3])
if refused then return refused end
if seq ~= '' then
  local prev = st[8]
  -- A run created before the records moved into meta (no 'sm') may hold some in dedup.
  if not prev and not st[10] then prev = redis.call('HGET', dedup, seq) end
  if prev then return {st[1], tonumber(prev), 1} end
end
if src ~= '' and tonumber(ARGV[9]) < tonumber(st[9] or '-1') then return {st[1], 0, 1} end
if st[2] then
  return redis.error_reply('TERMINAL run is terminal; rows after the terminal record are refused')
end
local n = tonumber(st[4] or '0') + 1
local name, data = event, ARGV[3]
redis.call('XADD', log, 'MAXLEN', '~', ARGV[5], n .. '-0', 'e', name, 'd', data, 't', t)
redis.call('PUBLISH', live, """
    + LUA_ANNOUNCE
    + """)
local set = {'n', n, 'updated_at', ARGV[7]}
-- The run object counts steps and extracted rows, for dashboards and polls.
if event == 'step' then
  set[#set + 1] = 'steps'; set[#set + 1] = tonumber(st[5] or '0') + 1
elseif event == 'extract' then
  set[#set + 1] = 'rows'; set[#set + 1] = tonumber(st[6] or '0') + 1
end
if seq ~= '' then set[#set + 1] = seq; set[#set + 1] = n end
if src ~= '' then set[#set + 1] = pos_f; set[#set + 1] = ARGV[10] end
local now_s = math.floor(tonumber(t) / 1000000)
local left = tonumber(st[7] or '0') - now_s
if left < retention * 0.9 or left > retention + 60 then
  redis.call('EXPIRE', meta, retention)
  redis.call('EXPIRE', log, retention)
  redis.call('EXPIRE', dedup, retention)
  set[#set + 1] = 'exp_at'; set[#set + 1] = string.format('%.0f', now_s + retention)
end
redis.call('HSET', meta, unpack(set))
return {st[1], n, 0}
"""
)

# ARGV: phase, halt_class ('' = none), phase data, terminal data ('' = not terminal), t,
#       maxlen, retention, updated_at, source ('' = none), line offset, next offset,
#       run_id, feed epoch ('' = no feed), fence ('' = unfenced)
SET_PHASE = (
    _PRELUDE
    + "local allowed = "
    + _ALLOWED_LUA
    + """
local cur = redis.call('HMGET', meta, 'phase', 'epoch', 'fence')
if not cur[1] then return redis.error_reply('NORUN no such run') end
local refused = fenced_out(ARGV[14], cur[3])
if refused then return refused end
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
keep_for(ARGV[7], ARGV[5])
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
  keep_for(ARGV[5], ARGV[3])
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


# --- The work queue's claims ------------------------------------------------------------
#
# A worker holds a run through three meta fields: ``fence`` (a counter bumped by every
# claim, takeover and hand-back: the holder's writes carry it, see ``fenced_out``),
# ``worker`` (the holder's consumer name) and ``lease_until`` (Redis clock, ms: the holder
# is presumed alive until then; its keep-alive pushes it on). The queue stream itself lives
# in another slot, so these scripts touch only the run's keys; the shells do the stream
# commands (XREADGROUP, XAUTOCLAIM, XCLAIM, XACK) around them.
#
# Replies of CLAIM and TAKEOVER: {outcome, phase, fence, cancel_requested (0/1), tenant,
# request JSON, resumed (0/1: the run was not queued, so earlier rows may exist)}. The
# outcome is 'held' (the run is now ours, moved to running), 'skip' (not ours to take:
# terminal, or queued no more), 'gone' (no such run) or 'alive' (its holder's lease has
# not run out).
_CLAIMS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Take the run for ``worker``: a fresh fence, the lease, then the move into running.
local function hold(worker, lease_ms, running, t, maxlen, retention, updated_at, run_id, fe)
  local fence = redis.call('HINCRBY', meta, 'fence', 1)
  redis.call('HSET', meta, 'worker', worker,
             'lease_until', string.format('%.0f', now_ms() + tonumber(lease_ms)))
  emit(maxlen, 'phase', running, t)
  redis.call('HSET', meta, 'phase', 'running', 'updated_at', updated_at)
  keep_for(retention, t)
  feed_write(run_id, fe, maxlen, retention, t)
  return fence
end
-- ``was`` is the phase before the claim: anything but queued means earlier rows may exist.
local function held_reply(request, fence, was)
  local m = redis.call('HMGET', meta, 'phase', 'cancel_requested', 'tenant')
  local cancel, resumed = 0, 0
  if m[2] == '1' then cancel = 1 end
  if was ~= 'queued' then resumed = 1 end
  return {'held', m[1], tostring(fence), cancel, m[3], redis.call('GET', request) or '', resumed}
end
local function not_held(outcome, phase)
  return {outcome, phase or '', '', 0, '', '', 0}
end
"""

# A fresh queue entry: take the run if it waits for a worker (queued, or handed back by a
# worker that stopped: recovering with no holder). KEYS: run keys, request.
# ARGV: worker, lease_ms, running phase data, t, maxlen, retention, updated_at, run_id,
#       feed epoch
CLAIM = (
    _PRELUDE
    + _CLAIMS
    + """
local request = KEYS[5]
local cur = redis.call('HMGET', meta, 'phase', 'worker')
if not cur[1] then return not_held('gone') end
local waiting = cur[1] == 'queued' or (cur[1] == 'recovering' and not cur[2])
if not waiting then return not_held('skip', cur[1]) end
local fence = hold(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8],
                   ARGV[9])
return held_reply(request, fence, cur[1])
"""
)

# An entry idle past the claim timeout in another worker's pending list (XAUTOCLAIM): take
# the run over unless its holder's lease still runs. A running run moves to recovering
# (its holder is presumed dead), then to running under the new holder; a queued one (its
# claimer died before claiming) is simply claimed. KEYS: run keys, request.
# ARGV: worker, lease_ms, recovering phase data, running phase data, t, maxlen, retention,
#       updated_at, run_id, feed epoch
TAKEOVER = (
    _PRELUDE
    + _CLAIMS
    + "local terminal_phases = "
    + _TERMINAL_LUA
    + """
local request = KEYS[5]
local cur = redis.call('HMGET', meta, 'phase', 'worker', 'lease_until')
if not cur[1] then return not_held('gone') end
if terminal_phases[cur[1]] then return not_held('skip', cur[1]) end
if cur[1] ~= 'queued' and cur[2] and tonumber(cur[3] or '0') > now_ms() then
  return not_held('alive', cur[1])
end
if cur[1] == 'running' then
  emit(ARGV[6], 'phase', ARGV[3], ARGV[5])
  redis.call('HSET', meta, 'phase', 'recovering', 'updated_at', ARGV[8])
  feed_write(ARGV[9], ARGV[10], ARGV[6], ARGV[7], ARGV[5])
end
local fence = hold(ARGV[1], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9],
                   ARGV[10])
return held_reply(request, fence, cur[1])
"""
)

# The holder's keep-alive: still ours? Then push the lease on. Reply {phase,
# cancel_requested (0/1)}; FENCED once another worker has the run.
# ARGV: fence, lease_ms
KEEPALIVE = (
    _PRELUDE
    + _CLAIMS
    + """
local cur = redis.call('HMGET', meta, 'phase', 'fence', 'cancel_requested')
if not cur[1] then return redis.error_reply('NORUN no such run') end
local refused = fenced_out(ARGV[1], cur[2])
if refused then return refused end
redis.call('HSET', meta, 'lease_until', string.format('%.0f', now_ms() + tonumber(ARGV[2])))
local cancel = 0
if cur[3] == '1' then cancel = 1 end
return {cur[1], cancel}
"""
)

# A holder that stops before the run ends hands it back: running -> recovering, no holder,
# a new fence (so nothing it still has in flight can land). The shell then queues the run
# again, and the next worker's CLAIM takes it at once. Reply {outcome}: 'released',
# 'terminal' (nothing to hand back), 'lost' (another worker has it) or 'gone'.
# ARGV: fence, recovering phase data, t, maxlen, retention, updated_at, run_id, feed epoch
RELEASE = (
    _PRELUDE
    + "local terminal_phases = "
    + _TERMINAL_LUA
    + """
local cur = redis.call('HMGET', meta, 'phase', 'fence')
if not cur[1] then return {'gone'} end
if cur[2] ~= ARGV[1] then return {'lost'} end
if terminal_phases[cur[1]] then return {'terminal'} end
if cur[1] == 'running' then
  emit(ARGV[4], 'phase', ARGV[2], ARGV[3])
  redis.call('HSET', meta, 'phase', 'recovering', 'updated_at', ARGV[6])
  keep_for(ARGV[5], ARGV[3])
  feed_write(ARGV[7], ARGV[8], ARGV[4], ARGV[5], ARGV[3])
end
redis.call('HINCRBY', meta, 'fence', 1)
redis.call('HDEL', meta, 'worker', 'lease_until')
return {'released'}
"""
)


# A log that went back (a failover lost its last writes) gets a new epoch, so every id
# changes and no client cursor can be mistaken for a position in it; the pods end the
# run's live streams (announcement with n = 0 and event name ``epoch``).
# ARGV: the epoch the writer saw, the new epoch, t. Reply: the epoch now in force.
REEPOCH = """
local meta, live = KEYS[1], KEYS[4]
local cur = redis.call('HGET', meta, 'epoch')
if not cur then return redis.error_reply('NORUN no such run') end
if cur ~= ARGV[1] then return cur end
redis.call('HSET', meta, 'epoch', ARGV[2])
redis.call('PUBLISH', live, '0:' .. ARGV[3] .. ':epoch:{}')
return ARGV[2]
"""
