"""The Lua scripts of webhooks: each step of a delivery's life is one atomic script.

All keys of a tenant's webhooks share the tenant feed's hash tag (see ``runlog.keys``), so
the scripts may build a delivery's key from its prefix (``ARGV``) and stay in one slot.

A delivery hash holds: ``endpoint``, ``type``, ``data`` (the run object JSON), ``t`` (the
feed event's time, microseconds), ``status`` (pending | delivered | failed), ``claims``
(attempts started), ``inflight`` ('1' while a claim awaits its answer), ``created_ms``,
``next_ms`` (when it is next due, '' once finished) and one field ``a:<k>`` per attempt,
the attempt's JSON as the dispatcher wrote it.
"""

from runlog.phases import TERMINAL_PHASES

_TERMINAL_LUA = "{" + ", ".join(f"{p}=1" for p in sorted(TERMINAL_PHASES)) + "}"

# KEYS: endpoints hash, feed meta, cursor, phases
# ARGV: endpoint id, endpoint JSON (without its feed position), max endpoints
# The endpoint remembers the feed position it was registered at: events before it are
# never delivered to it, however late the dispatcher reads them. The tenant's first
# endpoint also moves the cursor there: no dispatcher read the feed while nobody listened.
REGISTER = """
local count = redis.call('HLEN', KEYS[1])
if count >= tonumber(ARGV[3]) then
  return redis.error_reply('LIMIT too many webhooks')
end
local ep = cjson.decode(ARGV[2])
local pos = redis.call('HMGET', KEYS[2], 'epoch', 'n')
ep.from_epoch = pos[1] or ''
ep.from_n = tonumber(pos[2] or '0')
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(ep))
if count == 0 then
  redis.call('DEL', KEYS[4])
  if pos[1] then
    redis.call('HSET', KEYS[3], 'epoch', pos[1], 'n', ep.from_n)
  else
    redis.call('DEL', KEYS[3])
  end
end
return 1
"""

# KEYS: endpoints hash, the endpoint's recent list, the endpoint's due set
# ARGV: endpoint id, delivery prefix
# Its pending deliveries go with it.
UNREGISTER = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  redis.call('DEL', ARGV[2] .. id)
end
redis.call('DEL', KEYS[3])
return 1
"""

# KEYS: feed meta, feed log, endpoints, cursor, phases
# ARGV: id nonce, batch size, now ms, delivery prefix, recent prefix, recent max,
#       retention s, due prefix
# Turns the next feed events after the cursor into deliveries and moves the cursor past
# them, in one step: whichever pod runs it, each feed event becomes its deliveries once.
# Reply: the number of feed events read (the batch size means: call again).
INGEST = (
    "local terminal = "
    + _TERMINAL_LUA
    + """
local fmeta, flog, hooks, cursor, phases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local epoch = redis.call('HGET', fmeta, 'epoch')
if not epoch then return 0 end
local cur = redis.call('HMGET', cursor, 'epoch', 'n')
local after = 0
if cur[1] == epoch then after = tonumber(cur[2]) end
local last = tonumber(redis.call('HGET', fmeta, 'n') or '0')
if last <= after then return 0 end
local raw = redis.call('HGETALL', hooks)
if #raw == 0 then
  -- Nobody listens: skip ahead (a later endpoint only gets events after its creation).
  redis.call('HSET', cursor, 'epoch', epoch, 'n', last)
  redis.call('DEL', phases)
  return 0
end
local endpoints = {}
for i = 1, #raw, 2 do
  local ep = cjson.decode(raw[i + 1])
  local wants = {}
  for _, ty in ipairs(ep.events) do wants[ty] = true end
  local from = 0
  if ep.from_epoch == epoch then from = ep.from_n end
  endpoints[#endpoints + 1] = {id = raw[i], wants = wants, from = from}
end
local entries = redis.call('XRANGE', flog, '(' .. after .. '-0', '+', 'COUNT', ARGV[2])
local now = tonumber(ARGV[3])
local made = 0
local n = after
for _, entry in ipairs(entries) do
  n = tonumber(string.match(entry[1], '^(%d+)'))
  local f = {}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  local ok, run = false, nil
  if f.e == 'run' and f.d then ok, run = pcall(cjson.decode, f.d) end
  -- An entry that is not a run object is passed over: it must not stall the feed.
  if ok and type(run) == 'table' and type(run.run_id) == 'string'
     and type(run.phase) == 'string' then
    local prev = redis.call('HGET', phases, run.run_id)
    local types = {}
    -- A feed event also marks a cancel request (phase unchanged): no run.phase for it.
    if prev ~= run.phase then
      types[#types + 1] = 'run.phase'
      if terminal[run.phase] then types[#types + 1] = 'run.finished' end
    end
    if terminal[run.phase] then
      redis.call('HDEL', phases, run.run_id)
    else
      redis.call('HSET', phases, run.run_id, run.phase)
    end
    for _, ty in ipairs(types) do
      for _, ep in ipairs(endpoints) do
        if ep.wants[ty] and n > ep.from then
          local id = 'msg_' .. ARGV[1] .. string.format('%x', made)
          made = made + 1
          redis.call('HSET', ARGV[4] .. id, 'endpoint', ep.id, 'type', ty, 'data', f.d,
                     't', f.t or '0', 'status', 'pending', 'claims', 0, 'inflight', '0',
                     'created_ms', now, 'next_ms', now)
          redis.call('ZADD', ARGV[8] .. ep.id, now, id)
          local recent = ARGV[5] .. ep.id
          redis.call('LPUSH', recent, id)
          redis.call('LTRIM', recent, 0, tonumber(ARGV[6]) - 1)
        end
      end
    end
  end
end
if #entries == 0 then n = last end
redis.call('HSET', cursor, 'epoch', epoch, 'n', n)
redis.call('EXPIRE', phases, ARGV[7])
return #entries
"""
)

# KEYS: endpoints
# ARGV: now ms, lease ms, max claims, per-endpoint cap, max attempts, delivery prefix,
#       retention s, due prefix, first endpoint (a rotating start, for fairness),
#       then pairs (endpoint id, this pod's requests in flight to it)
# Claims due deliveries for this pod, endpoint by endpoint (at most the cap less what this
# pod has in flight there, so a slow endpoint holds no lease it cannot use, and its
# backlog never stands in front of another endpoint's). Each claim gets a lease (its due
# score moves to the lease's end) and a new claim number that fences the answer. A claim
# that was never answered (its pod died) is written down as a lost attempt.
# Reply: flat list of (delivery id, claim, endpoint JSON, type, data, t) per claim.
CLAIM = """
local hooks = KEYS[1]
local now, lease, max_take = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cap, max_attempts, prefix = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local busy = {}
for i = 10, #ARGV, 2 do busy[ARGV[i]] = tonumber(ARGV[i + 1]) end
local raw = redis.call('HGETALL', hooks)
local count = #raw / 2
local first = tonumber(ARGV[9]) % math.max(count, 1)
local out = {}
local taken = 0
for k = 0, count - 1 do
  if taken >= max_take then break end
  local i = ((first + k) % count) * 2 + 1
  local ep_id, ep = raw[i], raw[i + 1]
  local room = math.min(cap - (busy[ep_id] or 0), max_take - taken)
  if room > 0 then
    local due = ARGV[8] .. ep_id
    local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, room)
    for _, id in ipairs(ids) do
      local key = prefix .. id
      local d = redis.call('HMGET', key, 'claims', 'inflight', 'status', 'type', 'data', 't',
                           'next_ms')
      if d[3] ~= 'pending' then
        redis.call('ZREM', due, id)
      else
        local claims = tonumber(d[1]) + 1
        if d[2] == '1' then
          redis.call('HSET', key, 'a:' .. d[1], cjson.encode({
            at_ms = tonumber(d[7]) - lease, error = 'no answer recorded: the pod was lost'}))
        end
        if claims > max_attempts then
          redis.call('HSET', key, 'status', 'failed', 'inflight', '0', 'next_ms', '')
          redis.call('ZREM', due, id)
          redis.call('EXPIRE', key, ARGV[7])
        else
          redis.call('HSET', key, 'claims', claims, 'inflight', '1', 'next_ms', now + lease)
          redis.call('ZADD', due, now + lease, id)
          taken = taken + 1
          out[#out + 1] = id
          out[#out + 1] = claims
          out[#out + 1] = ep
          out[#out + 1] = d[4]
          out[#out + 1] = d[5]
          out[#out + 1] = d[6]
        end
      end
    end
  end
end
return out
"""

# KEYS: the endpoint's due set, delivery
# ARGV: delivery id, claim, outcome (delivered | retry | failed), attempt JSON, next due ms,
#       retention s
# Writes an attempt's answer, fenced by the claim: an answer that arrives after its lease
# was taken over (a new claim) changes nothing. Reply: 1 written, 0 stale.
RECORD = """
local d = redis.call('HMGET', KEYS[2], 'claims', 'inflight', 'status')
if d[1] ~= ARGV[2] or d[2] ~= '1' or d[3] ~= 'pending' then return 0 end
redis.call('HSET', KEYS[2], 'a:' .. ARGV[2], ARGV[4], 'inflight', '0')
if ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[2], 'next_ms', ARGV[5])
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
else
  redis.call('HSET', KEYS[2], 'status', ARGV[3], 'next_ms', '')
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
return 1
"""
