"""The Lua scripts of Durable Streams (``/v1/stream/{path}``): each write is one atomic step.

Every script takes ``KEYS = durable_keys(tag)`` (meta, log, producers, live channel). A
stream's data is a Redis stream whose entry ``<n>-0`` holds one append (for JSON streams,
one message) in field ``d`` and the stream's byte count after it in field ``b``: the
protocol offset of the position after entry ``n`` is made of ``n`` and that count.

Expiry is Redis's own: a stream with a TTL has every key re-armed (``PEXPIRE``) on each
read and write; one with an absolute expiry carries it as ``PEXPIREAT``. An expired stream
is simply absent.

Every append, close and delete is announced on the live channel (``durable_announce``), so
pods deliver live data without a read of their own. An idempotent producer's state is
checked and advanced in the same script as its append: a retry can never write twice.
"""

from .durable_announce import LUA_ANNOUNCE

_PRELUDE = (
    """
local meta, log, producers, live = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function int(x) return string.format('%d', x) end
-- Re-arm the stream's expiry: a sliding TTL on every touch, or its absolute deadline.
local function keep()
  local e = redis.call('HMGET', meta, 'ttl', 'exp_ms')
  if e[1] and e[1] ~= '' then
    local ms = tonumber(e[1]) * 1000
    if ms < 1 then ms = 1 end
    redis.call('PEXPIRE', meta, ms)
    redis.call('PEXPIRE', log, ms)
    redis.call('PEXPIRE', producers, ms)
  elseif e[2] and e[2] ~= '' then
    redis.call('PEXPIREAT', meta, e[2])
    redis.call('PEXPIREAT', log, e[2])
    redis.call('PEXPIREAT', producers, e[2])
  end
end
-- Append one entry: data ``d``, byte count after it ``b``, and ``e`` the number of the last
-- entry of its append (a JSON batch is one append of several entries).
local function add(n, b, e, data)
  redis.call('XADD', log, int(n) .. '-0', 'd', data, 'b', int(b), 'e', int(e))
end
-- Append messages ARGV[first..] as one append, returning the new entry and byte counts.
local function append_from(first)
  local n = tonumber(redis.call('HGET', meta, 'n') or '0')
  local b = tonumber(redis.call('HGET', meta, 'b') or '0')
  local e = n + #ARGV - first + 1
  for i = first, #ARGV do
    n = n + 1
    b = b + #ARGV[i]
    add(n, b, e, ARGV[i])
  end
  redis.call('HSET', meta, 'n', int(n), 'b', int(b))
  return n, b
end
local function announce(kind, prev, n, b, closed, data)
  redis.call('PUBLISH', live, """
    + LUA_ANNOUNCE
    + """)
end
-- Byte-wise ``a <= b`` (Lua's own string order follows the locale).
local function bytes_le(a, b)
  local len = math.min(#a, #b)
  for i = 1, len do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local function joined(first, joiner)
  if first > #ARGV then return '' end
  return table.concat(ARGV, joiner, first, #ARGV)
end
"""
)

# ARGV: content type, ttl ('' none), expires-at text ('' none), expires-at ms, closed ('1'
#       or ''), incarnation id, fork spec ('' when not a fork), source tag, then the count
#       ``c`` of inherited entries and ``c`` pairs (batch end, data) copied from the
#       source (a fork's first ``c`` entries, numbered as in the source), then the initial
#       messages.
# Reply: {status, n, b, closed} with status 'created', 'exists' (same configuration),
#       'conflict' (another configuration) or 'gone' (a deleted stream forks still use).
CREATE = (
    _PRELUDE
    + """
local cur = redis.call('HMGET', meta, 'ct', 'ttl', 'exp_ms', 'closed', 'n', 'b', 'fork',
                       'deleted')
if cur[1] then
  if cur[8] == '1' then return {'gone', cur[5], cur[6], cur[4] or ''} end
  local same = cur[1] == ARGV[1] and (cur[2] or '') == ARGV[2]
               and (cur[3] or '') == ARGV[4] and (cur[4] or '') == ARGV[5]
               and (cur[7] or '') == ARGV[7]
  if same then return {'exists', cur[5], cur[6], cur[4] or ''} end
  return {'conflict', cur[5], cur[6], cur[4] or ''}
end
-- Leftovers of an expired incarnation (keys expire one by one) must not show through.
redis.call('DEL', log, producers)
redis.call('HSET', meta, 'ct', ARGV[1], 'ttl', ARGV[2], 'exp', ARGV[3], 'exp_ms', ARGV[4],
           'closed', ARGV[5], 'inc', ARGV[6], 'fork', ARGV[7], 'src', ARGV[8], 'n', 0, 'b', 0)
local c = tonumber(ARGV[9])
local n, b = 0, 0
for i = 1, c do
  local data = ARGV[9 + 2 * i]
  n = n + 1
  b = b + #data
  add(n, b, tonumber(ARGV[8 + 2 * i]), data)
end
redis.call('HSET', meta, 'n', int(n), 'b', int(b))
n, b = append_from(10 + 2 * c)
keep()
return {'created', int(n), int(b), ARGV[5]}
"""
)

# ARGV: content type ('' when the body is empty), close ('1' or ''), producer id ('' none),
#       producer epoch, producer seq, Stream-Seq ('' none), joiner of the announced data,
#       then the messages to append.
# Reply: {status, ...}:
#   {'missing'} | {'closed', n, b} | {'closed_ok', n, b} | {'content_type', n, b}
#   | {'stale', epoch} | {'epoch_seq'} | {'gap', expected, received} | {'seq', n, b}
#   | {'dup', n, b, closed, epoch, seq} | {'ok', n, b, closed, epoch, seq}
APPEND = (
    _PRELUDE
    + """
local cur = redis.call('HMGET', meta, 'ct', 'closed', 'n', 'b', 'closer', 'seq', 'deleted')
if not cur[1] then return {'missing'} end
if cur[7] == '1' then return {'gone'} end
local n0, b0 = cur[3], cur[4]
local closing = ARGV[2] == '1'
local pid, epoch, pseq = ARGV[3], tonumber(ARGV[4] or '0'), tonumber(ARGV[5] or '0')
local has_body = #ARGV >= 8
if cur[2] == '1' then
  if pid ~= '' and cur[5] == (pid .. '\\n' .. ARGV[4] .. '\\n' .. ARGV[5]) then
    return {'closed_ok', n0, b0, ARGV[4], ARGV[5]}
  end
  if closing and not has_body then return {'closed_ok', n0, b0} end
  return {'closed', n0, b0}
end
if has_body and ARGV[1] ~= cur[1] then return {'content_type', n0, b0} end
local state_seq = -1
if pid ~= '' then
  local st = redis.call('HGET', producers, pid)
  if st then
    local sep = string.find(st, ':', 1, true)
    local st_epoch = tonumber(string.sub(st, 1, sep - 1))
    local st_seq = tonumber(string.sub(st, sep + 1))
    if epoch < st_epoch then return {'stale', int(st_epoch)} end
    if epoch > st_epoch then
      if pseq ~= 0 then return {'epoch_seq'} end
    else
      if pseq <= st_seq then
        return {'dup', n0, b0, cur[2] or '', ARGV[4], int(st_seq)}
      end
      if pseq > st_seq + 1 then return {'gap', int(st_seq + 1), ARGV[5]} end
    end
  elseif pseq ~= 0 then
    return {'gap', '0', ARGV[5]}
  end
end
if ARGV[6] ~= '' then
  if cur[6] and cur[6] ~= '' and bytes_le(ARGV[6], cur[6]) then return {'seq', n0, b0} end
  redis.call('HSET', meta, 'seq', ARGV[6])
end
local n, b = append_from(8)
if pid ~= '' then redis.call('HSET', producers, pid, ARGV[4] .. ':' .. ARGV[5]) end
local closed = ''
if closing then
  closed = '1'
  redis.call('HSET', meta, 'closed', '1')
  if pid ~= '' then
    redis.call('HSET', meta, 'closer', pid .. '\\n' .. ARGV[4] .. '\\n' .. ARGV[5])
  end
end
keep()
if n ~= tonumber(n0) or closing then
  announce('a', n0, int(n), int(b), closed, joined(8, ARGV[7]))
end
return {'ok', int(n), int(b), closed, ARGV[4], ARGV[5], n0}
"""
)

# ARGV: after entry number, count, touch ('1' re-arms a TTL; HEAD passes '').
# Reply: nil when absent, else {{ct, closed, n, b, inc, ttl, exp, deleted, exp_ms}, entries}.
READ = (
    _PRELUDE
    + """
local m = redis.call('HMGET', meta, 'ct', 'closed', 'n', 'b', 'inc', 'ttl', 'exp', 'deleted',
                     'exp_ms')
if not m[1] then return nil end
for i = 2, 9 do if not m[i] then m[i] = '' end end
local entries = {}
local count = tonumber(ARGV[2])
if count > 0 and tonumber(ARGV[1]) < tonumber(m[3]) then
  entries = redis.call('XRANGE', log, (tonumber(ARGV[1]) + 1) .. '-0', '+', 'COUNT', count)
end
if ARGV[3] == '1' then keep() end
return {m, entries}
"""
)

# A stream forks still copy from is only marked deleted (410 to clients, 409 to PUT) until
# its last fork goes. Reply: {'missing'} | {'gone'} (already deleted) | {'soft'}
#   | {'deleted', source tag of this fork or ''}.
DELETE = (
    _PRELUDE
    + """
local m = redis.call('HMGET', meta, 'ct', 'deleted', 'forks', 'src')
if not m[1] then return {'missing'} end
if m[2] == '1' then return {'gone'} end
if tonumber(m[3] or '0') > 0 then
  redis.call('HSET', meta, 'deleted', '1')
  announce('d', 0, 0, 0, '1', '')
  return {'soft'}
end
redis.call('DEL', meta, log, producers)
announce('d', 0, 0, 0, '1', '')
return {'deleted', m[4] or ''}
"""
)

# A fork of this stream was made. Reply: 1, or 0 when the stream is gone or deleted.
ADD_FORK = """
local meta = KEYS[1]
local m = redis.call('HMGET', meta, 'ct', 'deleted')
if not m[1] or m[2] == '1' then return 0 end
redis.call('HINCRBY', meta, 'forks', 1)
return 1
"""

# A fork of this stream was deleted; a deleted stream whose last fork went is removed.
# Reply: {'kept'} | {'removed', its own source tag or ''}.
DROP_FORK = (
    _PRELUDE
    + """
local m = redis.call('HMGET', meta, 'ct', 'deleted', 'src')
if not m[1] then return {'kept'} end
local left = redis.call('HINCRBY', meta, 'forks', -1)
if left <= 0 and m[2] == '1' then
  redis.call('DEL', meta, log, producers)
  return {'removed', m[3] or ''}
end
return {'kept'}
"""
)
