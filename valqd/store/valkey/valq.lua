#!lua name=valq
--[[
The VALQ semantics as a Valkey Functions library: the same queues, replies and errors as
valqd's embedded engine (valqd/engine) behind its command layer (valqd/commands/valq.py).
The differential test (tests/test_valkey_library.py) runs the same random operations on
both and compares every reply and the canonical dump (valqd/engine/dump.py).

Calling: FCALL valq_<subcommand> 1 valq:{<queue>} <the VALQ arguments after the queue>
e.g. FCALL valq_push 1 valq:{jobs} hello 10 PRIORITY 5. REDRIVE ... TO other declares the
other queue's key too (2 keys). Replies are RESP2 shapes: a map is a flat array with keys
in ascending order (a front end turns it into a RESP3 map).

Keys: every key of one queue shares the hash tag {<queue>}, so each call is atomic in one
slot of a cluster:
  valq:{q}            hash: settings, sequences, paused, the queue's clock, counters
  valq:{q}:msgs       hash: id -> packed record (header, then body)
  valq:{q}:ready      zset: score -priority, member "1"..pad(id) or, for a delayed
                      message that fell due, "0"..pad(rank)..pad(id): POP takes the first
  valq:{q}:lease      zset: lease deadline, member pad(id)
  valq:{q}:delay      zset: due time, member pad(id)
  valq:{q}:dlq        zset: when it entered the DLQ, member pad(id)
  valq:{q}:dedup      hash: key -> "id expires_at";  valq:{q}:dedupx zset: expires_at, key
  valq:{q}:why        hash: id -> last NACK reason
Equal scores are ordered by member bytes, which with fixed-width ids is id order: every
tie is broken as the engine breaks it. Nothing iterates a hash, nothing is random.

Time: the server's TIME, read inside the function; a queue's clock (field `clock`) never
goes backwards. Before each call, the due events of the queue (a lease running out, a
delay falling due, a DLQ retention ending, dedup keys expiring) are applied one at a time
at their own time, in the engine's order, at most TICK_BUDGET of them per call. A call
validates all of its arguments before its first write of its own.

Test build: valqd.store.valkey.library_source(test_clock=True) sets TEST_CLOCK below to
true and the version gets a "-testclock" suffix. In that build (and only in it) every
function takes the clock, in Unix ms, as its first argument after the keys. The production
build has no such argument, so no caller can move a production queue's clock.

Numbers are Lua doubles: ids, times and counts are exact up to 2^53. Delays so long that
the due time passes 2^53 ms (about year 287,000) are kept, but their due time is not
exact (the engine saturates due times at (2^64-1) s).
]]

local VERSION = 1
local TEST_CLOCK = false
local TICK_BUDGET = 1000

local HEADER = '<dddHi4'  -- enqueued_at, promote_seq, lease_no, attempts, priority
local HEADER_SIZE = 30
local MAX_ATTEMPTS_STORED = 65535
local MAX_COUNT = 1000
local U64_MAX = '18446744073709551615'
local I64_MAX = '9223372036854775807'
local RECEIPT_MESSAGE = 'invalid lease receipt'
local I64_MIN = '-9223372036854775808'
local NOT_AN_INTEGER = 'value is not an integer or out of range'
local ID_MESSAGE = 'message id must be a positive integer'
local DELAY_MESSAGE = 'delay must be an integer between 0 and 18446744073709551615'
local MAX_DELAY_MS = 18446744073709551615 * 1000

-- `due`: no event of the queue falls due before it (a lower bound, so that a call finds
-- nothing due without looking at four indexes); 0 when unknown
local SETTINGS = {'vt', 'mda', 'rp', 'backoff', 'bbase', 'bmax', 'dedupw', 'maxlen',
                  'paused', 'ids', 'pseq', 'lseq', 'clock', 'due'}
local NEVER = 2 ^ 80  -- later than any due time
local COUNTERS = {'pushed', 'delivered', 'acked', 'nacked', 'expired', 'dead_lettered',
                  'dropped', 'deduplicated', 'redriven', 'cancelled'}
local SETTING_KEYWORDS = {VISIBILITY = true, MAXATTEMPTS = true, RETENTION = true,
                          BACKOFF = true, DEDUPWINDOW = true, MAXLEN = true}

-- errors ----------------------------------------------------------------------------------

local Failure = {}  -- the metatable of an error this library raises on purpose

local function fail(code, message)
  error(setmetatable({code = code, message = message}, Failure))
end

local function err(message) fail('ERR', message) end

-- A name as Python's bytes.decode('utf-8', 'backslashreplace') shows it: well-formed
-- UTF-8 as it is, every other byte as \xNN.
local function show(raw)
  local out, i, n = {}, 1, #raw
  while i <= n do
    local b = raw:byte(i)
    local len, low, high = 0, 0x80, 0xBF
    if b < 0x80 then len = 1
    elseif b >= 0xC2 and b <= 0xDF then len = 2
    elseif b >= 0xE0 and b <= 0xEF then
      len = 3
      if b == 0xE0 then low = 0xA0 elseif b == 0xED then high = 0x9F end
    elseif b >= 0xF0 and b <= 0xF4 then
      len = 4
      if b == 0xF0 then low = 0x90 elseif b == 0xF4 then high = 0x8F end
    end
    local good = len > 0 and i + len - 1 <= n
    if good and len > 1 then
      local second = raw:byte(i + 1)
      good = second >= low and second <= high
      for j = i + 2, i + len - 1 do
        local c = raw:byte(j)
        if c < 0x80 or c > 0xBF then good = false end
      end
    end
    if good then
      out[#out + 1] = raw:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = string.format('\\x%02x', b)
      i = i + 1
    end
  end
  return table.concat(out)
end

local function no_queue(name) fail('NOQUEUE', "no such queue '" .. show(name) .. "'") end

local function no_message(name, id)
  fail('NOMSG', 'no message with id ' .. id .. " in queue '" .. show(name) .. "'")
end

local function no_lease(name, id, why)
  fail('NOLEASE', 'message ' .. id .. " in queue '" .. show(name) .. "' " ..
       (why or 'is not leased with that receipt'))
end

-- numbers -----------------------------------------------------------------------------------

local function fmt(n) return string.format('%.0f', n) end

local function pad(n) return string.format('%016.0f', n) end

-- compare two canonical decimal strings: -1, 0, 1
local function compare_decimal(a, b)
  local an, bn = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if an ~= bn then return an and -1 or 1 end
  local sign = an and -1 or 1
  if an then a, b = a:sub(2), b:sub(2) end
  if #a ~= #b then return (#a < #b and -1 or 1) * sign end
  if a == b then return 0 end
  return (a < b and -1 or 1) * sign
end

-- An integer argument as Valkey's string2ll reads it: optional '-', digits with no leading
-- zero; between low and high (canonical decimal strings). Returns the number and its text.
local function parse_int(raw, low, high, message)
  message = message or NOT_AN_INTEGER
  if raw == nil or not (raw:match('^%-?[1-9]%d*$') or raw == '0') then err(message) end
  if compare_decimal(raw, low or I64_MIN) < 0 or compare_decimal(raw, high or I64_MAX) > 0 then
    err(message)
  end
  return tonumber(raw), raw
end

local function check_range(what, value, low, high)
  if value < low or value > high then
    err(what .. ' must be between ' .. fmt(low) .. ' and ' .. fmt(high))
  end
  return value
end

-- the argument cursor -------------------------------------------------------------------

local Args = {}
Args.__index = Args

local function cursor(argv, pos) return setmetatable({argv = argv, pos = pos}, Args) end

function Args:remaining() return #self.argv - self.pos + 1 end

function Args:peek_upper()
  local word = self.argv[self.pos]
  return word and word:upper()
end

function Args:next_bytes()
  local value = self.argv[self.pos]
  if value == nil then err('syntax error') end
  self.pos = self.pos + 1
  return value
end

function Args:next_int(low, high, message)
  return parse_int(self:next_bytes(), low, high, message)
end

function Args:next_keyword() return self:next_bytes():upper() end

-- a queue -----------------------------------------------------------------------------------

local function name_of(key)
  if type(key) ~= 'string' or key:sub(1, 6) ~= 'valq:{' or key:sub(-1) ~= '}' or #key < 7 then
    err('the key must be valq:{<queue>}')
  end
  return key:sub(7, -2)
end

local Queue = {}
-- the queue's other keys, made from its key when first used
local SUFFIXES = {msgs = ':msgs', ready = ':ready', lease = ':lease', delay = ':delay',
                  dlq = ':dlq', dedup = ':dedup', dedupx = ':dedupx', why = ':why'}
Queue.__index = function(q, field)
  local method = Queue[field]
  if method ~= nil then return method end
  local suffix = SUFFIXES[field]
  if suffix == nil then return nil end
  local key = rawget(q, 'key') .. suffix
  rawset(q, field, key)
  return key
end
local NUMERIC = {'vt', 'mda', 'rp', 'bbase', 'bmax', 'dedupw', 'ids', 'pseq', 'lseq', 'clock'}

local function queue_at(key)
  local q = setmetatable({key = key, name = name_of(key)}, Queue)
  local values = redis.call('HMGET', key, unpack(SETTINGS))
  q.exists = values[1] ~= false
  if q.exists then
    for i = 1, #SETTINGS do q[SETTINGS[i]] = values[i] end
    for i = 1, #NUMERIC do q[NUMERIC[i]] = tonumber(q[NUMERIC[i]]) end
    q.due = tonumber(q.due) or 0
    q.paused = q.paused == '1'
  end
  return q
end

local function existing(key)
  local q = queue_at(key)
  if not q.exists then no_queue(q.name) end
  return q
end

function Queue:set(field, value)
  self[field] = value
  redis.call('HSET', self.key, field, type(value) == 'number' and fmt(value) or value)
end

-- an event at `at` was added to one of the indexes: keep `due` a lower bound
function Queue:note_due(at)
  if at < self.due then self:set('due', at) end
end

function Queue:count(counter, by)
  redis.call('HINCRBY', self.key, 'c_' .. counter, by or 1)
end

function Queue:backoff_ms(attempts)
  if self.backoff == 'fixed' then return self.bbase * 1000 end
  if self.backoff == 'exponential' then
    local exponent = math.min(math.max(attempts - 1, 0), 64)
    return math.min(self.bbase * 2 ^ exponent, self.bmax) * 1000
  end
  return 0
end

-- records: enqueued_at, promote_seq, lease_no, attempts, priority, body
function Queue:record(id)
  local rec = redis.call('HGET', self.msgs, fmt(id))
  if not rec then return nil end
  local enq, pseq, lease_no, attempts, priority = struct.unpack(HEADER, rec)
  return {enq = enq, pseq = pseq, lease_no = lease_no, attempts = attempts,
          priority = priority, body = rec:sub(HEADER_SIZE + 1)}
end

function Queue:write(id, r)
  redis.call('HSET', self.msgs, fmt(id), struct.pack(HEADER, r.enq, r.pseq, r.lease_no,
             math.min(r.attempts, MAX_ATTEMPTS_STORED), r.priority) .. r.body)
end

local function order_member(id, r)
  if r.pseq > 0 then return '0' .. pad(r.pseq) .. pad(id) end
  return '1' .. pad(id)
end

local function id_of_member(member) return tonumber(member:sub(-16)) end

-- (state, time): inflight -> deadline, delayed -> due time, dlq -> dead_at, ready -> 0;
-- nil when there is no such message
function Queue:state_at(id, r)
  local member = pad(id)
  local at = redis.call('ZSCORE', self.lease, member)
  if at then return 'inflight', tonumber(at) end
  at = redis.call('ZSCORE', self.delay, member)
  if at then return 'delayed', tonumber(at) end
  at = redis.call('ZSCORE', self.dlq, member)
  if at then return 'dlq', tonumber(at) end
  if r or redis.call('HEXISTS', self.msgs, fmt(id)) == 1 then return 'ready', 0 end
  return nil
end

-- take a message out of whichever state index holds it (the record stays)
function Queue:unlink(id, state, r)
  if state == 'inflight' then redis.call('ZREM', self.lease, pad(id))
  elseif state == 'delayed' then redis.call('ZREM', self.delay, pad(id))
  elseif state == 'dlq' then redis.call('ZREM', self.dlq, pad(id))
  else redis.call('ZREM', self.ready, order_member(id, r)) end
end

function Queue:make_ready(id, r)
  redis.call('ZADD', self.ready, -r.priority, order_member(id, r))
end

function Queue:remove(id, state, r)
  self:unlink(id, state, r)
  redis.call('HDEL', self.msgs, fmt(id))
  redis.call('HDEL', self.why, fmt(id))
end

function Queue:stored_count()
  return redis.call('HLEN', self.msgs) - redis.call('ZCARD', self.dlq)
end

-- the ready head: id, record; nil when none
function Queue:ready_head()
  local head = redis.call('ZRANGE', self.ready, 0, 0)[1]
  if not head then return nil end
  local id = id_of_member(head)
  return id, self:record(id)
end

-- a delivery (POP) or an EXTEND of a ready message: hide until deadline
function Queue:lease_message(id, r, state, deadline, attempts, lease_no)
  if state == 'ready' then
    redis.call('ZREM', self.ready, order_member(id, r))
  end
  if attempts ~= r.attempts or lease_no ~= r.lease_no then
    r.attempts, r.lease_no = attempts, lease_no
    self:write(id, r)
  end
  if lease_no > self.lseq then self:set('lseq', lease_no) end
  redis.call('ZADD', self.lease, deadline, pad(id))
  self:note_due(deadline)
end

-- an in-flight message returns: visible now, or delayed until due (backoff)
function Queue:release(id, r, due)
  redis.call('ZREM', self.lease, pad(id))
  if due > 0 then
    redis.call('ZADD', self.delay, due, pad(id))
    self:note_due(due)
  else
    self:make_ready(id, r)
  end
end

function Queue:bury(id, state, r, dead_at)
  self:unlink(id, state, r)
  redis.call('ZADD', self.dlq, dead_at, pad(id))
  self:note_due(dead_at + self.rp * 1000)
end

-- due events ------------------------------------------------------------------------------

local function head_of(key)
  local got = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if got[1] == nil then return nil end
  return got[1], tonumber(got[2])
end

-- the earliest due event: time, kind ('lease', 'delay', 'drop', 'dedup'), member; on a tie
-- in that order, as the engine's Queue.next_due
function Queue:next_due()
  local best_at, best_kind, best_member
  local member, at = head_of(self.lease)
  if member then best_at, best_kind, best_member = at, 'lease', member end
  member, at = head_of(self.delay)
  if member and (best_at == nil or at < best_at) then
    best_at, best_kind, best_member = at, 'delay', member
  end
  member, at = head_of(self.dlq)
  if member then
    at = at + self.rp * 1000
    if best_at == nil or at < best_at then best_at, best_kind, best_member = at, 'drop', member end
  end
  member, at = head_of(self.dedupx)
  if member and (best_at == nil or at < best_at) then
    best_at, best_kind, best_member = at, 'dedup', member
  end
  return best_at, best_kind, best_member
end

-- apply the queue's due events, earliest first, at most `budget`; returns how many
function Queue:run_due(now, budget)
  local done = 0
  while done < budget do
    local at, kind, member = self:next_due()
    if at == nil or at > now then break end
    if kind == 'dedup' then
      local keys = redis.call('ZRANGEBYSCORE', self.dedupx, '-inf', now, 'LIMIT', 0, budget)
      for _, key in ipairs(keys) do redis.call('HDEL', self.dedup, key) end
      redis.call('ZREM', self.dedupx, unpack(keys))
    else
      local id = tonumber(member)
      local r = self:record(id)
      if kind == 'lease' then
        if r.attempts >= self.mda then
          self:count('expired')
          self:bury(id, 'inflight', r, at)
          self:count('dead_lettered')
        else
          local wait = self:backoff_ms(r.attempts)
          self:release(id, r, wait > 0 and at + wait or 0)
          self:count('expired')
        end
      elseif kind == 'delay' then
        redis.call('ZREM', self.delay, member)
        if r.attempts == 0 then
          r.pseq = self.pseq + 1
          self:write(id, r)
          self:set('pseq', r.pseq)
        end
        self:make_ready(id, r)
      else
        self:remove(id, 'dlq', r)
        self:count('dropped')
      end
    end
    done = done + 1
  end
  return done
end

-- Open a queue for a call at `now`: the queue's clock never goes backwards, and what fell
-- due is applied first (at most TICK_BUDGET events). Returns the call's clock.
local function opened(q, now)
  if q.exists then
    if q.clock > now then now = q.clock else q:set('clock', now) end
    if q.due <= now then
      local done = q:run_due(now, TICK_BUDGET)
      q:set('due', done < TICK_BUDGET and (q:next_due() or NEVER) or 0)
    end
  end
  return now
end

-- settings ------------------------------------------------------------------------------------

local function new_settings(base)
  local s = {}
  for _, field in ipairs({'vt', 'mda', 'rp', 'backoff', 'bbase', 'bmax', 'dedupw',
                          'maxlen'}) do
    s[field] = base[field]
  end
  return s
end

local DEFAULTS = {vt = 30, mda = 5, rp = 86400, backoff = 'none', bbase = 0, bmax = 0,
                  dedupw = 300, maxlen = 0}

-- visibility_timeout, max_delivery_attempts, retention_period: as engine.make_settings
local function set_three(s, vt, mda, rp)
  if vt ~= nil then s.vt = check_range('visibility_timeout', vt, 1, 43200) end
  if mda ~= nil then s.mda = check_range('max_delivery_attempts', mda, 1, 20) end
  if rp ~= nil then s.rp = check_range('retention_period', rp, 60, 604800) end
end

-- VISIBILITY s, MAXATTEMPTS n, RETENTION s, BACKOFF ..., DEDUPWINDOW s, MAXLEN n
local function settings_keywords(args, s)
  local seen = {}
  while args:remaining() > 0 do
    local word = args:next_keyword()
    if seen[word] then err(word .. ' given twice') end
    seen[word] = true
    if word == 'VISIBILITY' then set_three(s, args:next_int(), nil, nil)
    elseif word == 'MAXATTEMPTS' then set_three(s, nil, args:next_int(), nil)
    elseif word == 'RETENTION' then set_three(s, nil, nil, args:next_int())
    elseif word == 'BACKOFF' then
      local kind = args:next_keyword():lower()
      local first, ceiling = 0, 0
      if kind == 'fixed' then
        first = args:next_int()
        ceiling = first
      elseif kind == 'exponential' then
        first = args:next_int()
        ceiling = args:next_int()
      elseif kind ~= 'none' then
        err('backoff must be NONE, FIXED or EXPONENTIAL')
      end
      check_range('backoff seconds', first, 0, 604800)
      check_range('backoff seconds', ceiling, 0, 604800)
      if kind == 'exponential' and ceiling < first then
        err('exponential backoff max must not be below its base')
      end
      s.backoff, s.bbase, s.bmax = kind, first, ceiling
    elseif word == 'DEDUPWINDOW' then
      s.dedupw = check_range('dedup_window', args:next_int(), 1, 604800)
    elseif word == 'MAXLEN' then
      local value, text = args:next_int()
      if value < 0 then err('maxlen must be between 0 and 9223372036854775807') end
      s.maxlen = text
    else
      err('syntax error')
    end
  end
  return s
end

local function store_settings(q, s)
  redis.call('HSET', q.key, 'vt', fmt(s.vt), 'mda', fmt(s.mda), 'rp', fmt(s.rp),
             'backoff', s.backoff, 'bbase', fmt(s.bbase), 'bmax', fmt(s.bmax),
             'dedupw', fmt(s.dedupw), 'maxlen', type(s.maxlen) == 'string' and s.maxlen
             or fmt(s.maxlen))
end

-- replies -------------------------------------------------------------------------------------

local function flat_map(pairs_)
  local out = {}
  for _, pair in ipairs(pairs_) do
    out[#out + 1] = pair[1]
    out[#out + 1] = pair[2]
  end
  return out
end

local function by_key(a, b) return a[1] < b[1] end

-- the map of GET and PEEK
function Queue:message_info(id, r)
  local state, at = self:state_at(id, r)
  local reason = redis.call('HGET', self.why, fmt(id))
  local fields = {{'attempts', fmt(r.attempts)}, {'body', r.body},
                  {'enqueued_at', fmt(r.enq)}, {'id', fmt(id)},
                  {'priority', fmt(r.priority)}, {'state', state},
                  {'last_reason', reason}}
  local time_field = ({inflight = 'lease_deadline', delayed = 'due_at', dlq = 'dead_at'})[state]
  if time_field then fields[#fields + 1] = {time_field, fmt(at)} end
  table.sort(fields, by_key)
  return flat_map(fields)
end

-- the subcommands: each takes (keys, args, now) with args after the queue's key ----------------

local commands = {}

-- VALQ CREATE queue [vt [mda [rp]]] [VISIBILITY s] ... -> "created <queue>"; BUSYQUEUE
function commands.create(keys, argv, now)
  local q = queue_at(keys[1])
  local args = cursor(argv, 1)
  local numbers = {}
  while args:remaining() > 0 and #numbers < 3 and not SETTING_KEYWORDS[args:peek_upper()] do
    numbers[#numbers + 1] = args:next_int()
  end
  local s = new_settings(DEFAULTS)
  set_three(s, numbers[1], numbers[2], numbers[3])
  settings_keywords(args, s)
  if q.exists then fail('BUSYQUEUE', "queue '" .. show(q.name) .. "' already exists") end
  store_settings(q, s)
  redis.call('HSET', q.key, 'paused', '0', 'ids', '0', 'pseq', '0', 'lseq', '0',
             'clock', fmt(now), 'due', fmt(NEVER))
  for _, counter in ipairs(COUNTERS) do redis.call('HSET', q.key, 'c_' .. counter, '0') end
  return 'created ' .. q.name
end

-- VALQ UPDATE queue vt mda rp | VALQ UPDATE queue [VISIBILITY s] ... -> "updated q"
function commands.update(keys, argv, now)
  local q = queue_at(keys[1])
  local args = cursor(argv, 1)
  local s
  if args:remaining() == 0 or not SETTING_KEYWORDS[args:peek_upper()] then
    if #argv ~= 3 then err("wrong number of arguments for 'valq|update' command") end
    local vt, mda, rp = args:next_int(), args:next_int(), args:next_int()
    if not q.exists then no_queue(q.name) end
    s = new_settings(q)
    set_three(s, vt, mda, rp)
  else
    if not q.exists then no_queue(q.name) end
    s = settings_keywords(args, new_settings(q))
  end
  opened(q, now)
  store_settings(q, s)
  q:set('due', 0)  -- a new retention period moves the DLQ's deadlines
  return 'updated q'
end

-- VALQ DELETE queue -> "deleted <queue>", also when there is none
function commands.delete(keys, argv, now)
  local q = queue_at(keys[1])
  if #argv ~= 0 then err("wrong number of arguments for 'valq|delete' command") end
  redis.call('DEL', q.key, q.msgs, q.ready, q.lease, q.delay, q.dlq, q.dedup, q.dedupx, q.why)
  return 'deleted ' .. q.name
end

-- 1 when the queue exists, else 0 (VALQ LIST, one queue at a time)
function commands.exists(keys, argv, now)
  return queue_at(keys[1]).exists and 1 or 0
end

-- VALQ INFO queue -> map of 7 bulk strings
function commands.info(keys, argv, now)
  local q = existing(keys[1])
  opened(q, now)
  local inflight = redis.call('ZCARD', q.lease)
  return flat_map({
    {'delayed_msgs', fmt(redis.call('ZCARD', q.delay))},
    {'dlq_msgs', fmt(redis.call('ZCARD', q.dlq))},
    {'id_sequence', fmt(q.ids)},
    {'max_delivery_attempts', fmt(q.mda)},
    {'msgs', fmt(redis.call('ZCARD', q.ready) + inflight)},
    {'retention_period', fmt(q.rp)},
    {'visibility_timeout', fmt(q.vt)}})
end

-- VALQ STATS queue -> map: counts, settings, counters, oldest_ready_age_ms; `blocked` is
-- always 0 here (blocked clients live in a front end, which fills it in)
function commands.stats(keys, argv, now)
  local q = existing(keys[1])
  now = opened(q, now)
  local fields = {}
  local values = redis.call('HMGET', q.key, unpack((function()
    local names = {}
    for i, counter in ipairs(COUNTERS) do names[i] = 'c_' .. counter end
    return names
  end)()))
  for i, counter in ipairs(COUNTERS) do fields[#fields + 1] = {counter, values[i] or '0'} end
  local backoff = q.backoff
  if backoff == 'fixed' then backoff = 'fixed ' .. fmt(q.bbase)
  elseif backoff == 'exponential' then backoff = 'exponential ' .. fmt(q.bbase) .. ' ' .. fmt(q.bmax) end
  local age = 0
  local _, head = q:ready_head()
  if head then age = math.max(0, now - head.enq) end
  for _, pair in ipairs({
      {'backoff', backoff}, {'blocked', '0'}, {'dedup_window', fmt(q.dedupw)},
      {'delayed', fmt(redis.call('ZCARD', q.delay))}, {'dlq', fmt(redis.call('ZCARD', q.dlq))},
      {'id_sequence', fmt(q.ids)}, {'inflight', fmt(redis.call('ZCARD', q.lease))},
      {'max_delivery_attempts', fmt(q.mda)}, {'maxlen', q.maxlen},
      {'oldest_ready_age_ms', fmt(age)}, {'paused', q.paused and '1' or '0'},
      {'ready', fmt(redis.call('ZCARD', q.ready))}, {'retention_period', fmt(q.rp)},
      {'visibility_timeout', fmt(q.vt)}}) do
    fields[#fields + 1] = pair
  end
  table.sort(fields, by_key)
  return flat_map(fields)
end

local PARTS = {main = true, dlq = true, delayed = true}

-- VALQ PURGE queue [main|dlq|delayed] -> integer removed
function commands.purge(keys, argv, now)
  if #argv > 1 then err('syntax error') end
  local part = 'main'
  if #argv == 1 then
    part = argv[1]:lower()
    if not PARTS[part] then err('purge type must be one of main, dlq, delayed') end
  end
  local q = existing(keys[1])
  opened(q, now)
  local ids = {}
  if part == 'main' then
    for _, member in ipairs(redis.call('ZRANGE', q.ready, 0, -1)) do
      ids[#ids + 1] = id_of_member(member)
    end
    for _, member in ipairs(redis.call('ZRANGE', q.lease, 0, -1)) do
      ids[#ids + 1] = tonumber(member)
    end
    redis.call('DEL', q.ready, q.lease)
  else
    local index = part == 'delayed' and q.delay or q.dlq
    for _, member in ipairs(redis.call('ZRANGE', index, 0, -1)) do
      ids[#ids + 1] = tonumber(member)
    end
    redis.call('DEL', index)
  end
  for _, id in ipairs(ids) do
    redis.call('HDEL', q.msgs, fmt(id))
    redis.call('HDEL', q.why, fmt(id))
  end
  return #ids
end

local function set_paused(keys, argv, now, paused)
  local q = existing(keys[1])
  opened(q, now)
  q:set('paused', paused and '1' or '0')
  return (paused and 'paused ' or 'resumed ') .. q.name
end

-- VALQ PAUSE queue -> "paused <queue>";  VALQ RESUME queue -> "resumed <queue>"
function commands.pause(keys, argv, now) return set_paused(keys, argv, now, true) end
function commands.resume(keys, argv, now) return set_paused(keys, argv, now, false) end

-- producing ---------------------------------------------------------------------------------

local function due_time(now, delay)
  return math.min(now + delay * 1000, MAX_DELAY_MS)
end

-- store one message (the caller checked maxlen); returns its id. A redriven message
-- (`redriven`) is not counted as pushed.
function Queue:add(now, body, delay, priority, redriven)
  local id = self.ids + 1
  self:set('ids', id)
  self:write(id, {enq = now, pseq = 0, lease_no = 0, attempts = 0, priority = priority,
                  body = body})
  if delay > 0 then
    redis.call('ZADD', self.delay, due_time(now, delay), pad(id))
    self:note_due(due_time(now, delay))
  else
    redis.call('ZADD', self.ready, -priority, '1' .. pad(id))
  end
  if not redriven then self:count('pushed') end
  return id
end

function Queue:check_room(adding)
  local maxlen = tonumber(self.maxlen)
  if maxlen > 0 and self:stored_count() + adding > maxlen then
    fail('QUEUEFULL', "queue '" .. show(self.name) .. "' is full (maxlen " .. self.maxlen .. ')')
  end
end

-- VALQ PUSH queue body [delay] [PRIORITY p] [DEDUP key] -> bulk id
function commands.push(keys, argv, now)
  local body = argv[1]
  if body == nil then err("wrong number of arguments for 'valq|push' command") end
  local args = cursor(argv, 2)
  local delay, priority, dedup = 0, 0, nil
  local word = args:peek_upper()
  if word and word ~= 'PRIORITY' and word ~= 'DEDUP' then
    delay = parse_int(args:next_bytes(), '0', U64_MAX, DELAY_MESSAGE)
  end
  while args:remaining() > 0 do
    word = args:next_keyword()
    if word == 'PRIORITY' then
      priority = args:next_int('-2147483648', '2147483647',
                               'priority must be an integer between -2147483648 and 2147483647')
    elseif word == 'DEDUP' then
      dedup = args:next_bytes()
    else
      err('syntax error')
    end
  end
  local q = existing(keys[1])
  now = opened(q, now)
  if dedup then
    local seen = redis.call('HGET', q.dedup, dedup)
    if seen then
      local id, expires = seen:match('^(%d+) (%d+)$')
      if tonumber(expires) > now then
        q:count('deduplicated')
        return id
      end
    end
  end
  q:check_room(1)
  local id = q:add(now, body, delay, priority)
  if dedup then
    local expires = now + q.dedupw * 1000
    redis.call('HSET', q.dedup, dedup, fmt(id) .. ' ' .. fmt(expires))
    redis.call('ZADD', q.dedupx, expires, dedup)
    q:note_due(expires)
  end
  return fmt(id)
end

-- VALQ MPUSH queue body [body ...] -> array of ids; all or nothing
function commands.mpush(keys, argv, now)
  if #argv == 0 then err("wrong number of arguments for 'valq|mpush' command") end
  local q = existing(keys[1])
  now = opened(q, now)
  q:check_room(#argv)
  local ids = {}
  for i, body in ipairs(argv) do ids[i] = fmt(q:add(now, body, 0, 0)) end
  return ids
end

-- consuming -------------------------------------------------------------------------------

local function pop_options(args)
  local opts = {withmeta = false, noack = false}
  while args:remaining() > 0 do
    local word = args:next_keyword()
    if word == 'COUNT' and opts.count == nil then
      opts.count = args:next_int('1', '1000', 'COUNT must be between 1 and 1000')
    elseif word == 'BLOCK' and opts.block == nil then
      opts.block = args:next_int('0', I64_MAX, 'timeout is not an integer or out of range')
    elseif word == 'WITHMETA' then opts.withmeta = true
    elseif word == 'NOACK' then opts.noack = true
    else err('syntax error') end
  end
  if opts.block ~= nil then
    err('BLOCK is not served by the library: a front end waits and calls again')
  end
  return opts
end

-- deliver up to `count` from the head: leased, or with `noack` removed as delivered
function Queue:pop_many(now, count, noack, withmeta)
  local out = {}
  if self.paused then return out end
  local deadline = now + self.vt * 1000
  local members = redis.call('ZRANGE', self.ready, 0, count - 1)
  for _, member in ipairs(members) do
    local id = id_of_member(member)
    local r = self:record(id)
    local attempts = r.attempts + 1
    local lease_no, lease_deadline = 0, 0
    if noack then
      self:remove(id, 'ready', r)
    else
      lease_no, lease_deadline = self.lseq + 1, deadline
      self:lease_message(id, r, 'ready', deadline, attempts, lease_no)
    end
    self:count('delivered')
    if withmeta then
      out[#out + 1] = {'attempts', fmt(attempts), 'body', r.body, 'enqueued_at', fmt(r.enq),
                       'id', fmt(id), 'lease',
                       lease_no > 0 and fmt(id) .. '-' .. fmt(lease_no) or '',
                       'lease_deadline', fmt(lease_deadline), 'priority', fmt(r.priority)}
    else
      out[#out + 1] = {'body', r.body, 'id', fmt(id)}
    end
  end
  return out
end

-- VALQ POP queue [COUNT n] [WITHMETA] [NOACK] -> one map or "", with COUNT an array
function commands.pop(keys, argv, now)
  local opts = pop_options(cursor(argv, 1))
  local q = existing(keys[1])
  now = opened(q, now)
  local maps = q:pop_many(now, opts.count or 1, opts.noack, opts.withmeta)
  if opts.count ~= nil then return maps end
  return maps[1] or ''
end

-- [LEASE receipt] (and [REASON text]) -> lease_no or nil, reason or nil
local function lease_option(args, id, with_reason)
  local lease_no, reason
  while args:remaining() > 0 do
    local word = args:next_keyword()
    if word == 'LEASE' and lease_no == nil then
      local raw = args:next_bytes()
      local dash = raw:find('-', 1, true)
      if not dash then err(RECEIPT_MESSAGE) end
      local owner = parse_int(raw:sub(1, dash - 1), '0', U64_MAX, RECEIPT_MESSAGE)
      local number = parse_int(raw:sub(dash + 1), '0', U64_MAX, RECEIPT_MESSAGE)
      lease_no = owner == id and number or -1
    elseif word == 'REASON' and reason == nil and with_reason then
      reason = args:next_bytes()
    else
      err('syntax error')
    end
  end
  return lease_no, reason
end

-- the state of a main-queue message after checking a receipt: 'ready' or 'inflight'
function Queue:leased(id, text, lease_no)
  local r = self:record(id)
  local state = r and self:state_at(id, r)
  if lease_no ~= nil and (state ~= 'inflight' or r.lease_no ~= lease_no) then
    no_lease(self.name, text)
  end
  if state ~= 'ready' and state ~= 'inflight' then no_message(self.name, text) end
  return state, r
end

-- VALQ ACK queue id [LEASE receipt] -> "ack <id>"; NOMSG, NOLEASE
function commands.ack(keys, argv, now)
  local id, text = parse_int(argv[1], '1', U64_MAX, ID_MESSAGE)
  local lease_no = lease_option(cursor(argv, 2), id)
  local q = existing(keys[1])
  opened(q, now)
  local state, r = q:leased(id, text, lease_no)
  q:remove(id, state, r)
  q:count('acked')
  return 'ack ' .. text
end

-- VALQ MACK queue id [id ...] -> integer acked
function commands.mack(keys, argv, now)
  if #argv == 0 then err("wrong number of arguments for 'valq|mack' command") end
  local ids = {}
  for i, raw in ipairs(argv) do ids[i] = parse_int(raw, '1', U64_MAX, ID_MESSAGE) end
  local q = existing(keys[1])
  opened(q, now)
  local acked = 0
  for _, id in ipairs(ids) do
    local r = q:record(id)
    local state = r and q:state_at(id, r)
    if state == 'ready' or state == 'inflight' then
      q:remove(id, state, r)
      q:count('acked')
      acked = acked + 1
    end
  end
  return acked
end

-- VALQ EXTEND queue id seconds [LEASE receipt] -> "extend"
function commands.extend(keys, argv, now)
  local id, text = parse_int(argv[1], '1', U64_MAX, ID_MESSAGE)
  local seconds = parse_int(argv[2])
  local lease_no = lease_option(cursor(argv, 3), id)
  local q = existing(keys[1])
  now = opened(q, now)
  check_range('seconds', seconds, 0, 43200)
  local state, r = q:leased(id, text, lease_no)
  local current = r.lease_no
  if state == 'ready' then current = q.lseq + 1 end
  q:lease_message(id, r, state, now + seconds * 1000, r.attempts, current)
  return 'extend'
end

-- VALQ NACK queue id [delay] [LEASE receipt] [REASON text] -> "nack <id>"
function commands.nack(keys, argv, now)
  local id, text = parse_int(argv[1], '1', U64_MAX, ID_MESSAGE)
  local args = cursor(argv, 2)
  local delay
  local word = args:peek_upper()
  if word and word ~= 'LEASE' and word ~= 'REASON' then
    delay = parse_int(args:next_bytes(), '0', U64_MAX, DELAY_MESSAGE)
  end
  local lease_no, reason = lease_option(args, id, true)
  local q = existing(keys[1])
  now = opened(q, now)
  local state, r = q:leased(id, text, lease_no)
  if state ~= 'inflight' then no_lease(q.name, text, 'is not in flight') end
  if reason then redis.call('HSET', q.why, fmt(id), reason) end
  q:count('nacked')
  if r.attempts >= q.mda then
    q:bury(id, state, r, now)
    q:count('dead_lettered')
  else
    local due = 0
    if delay ~= nil then
      if delay > 0 then due = due_time(now, delay) end
    else
      local wait = q:backoff_ms(r.attempts)
      if wait > 0 then due = now + wait end
    end
    q:release(id, r, due)
  end
  return 'nack ' .. text
end

-- operating -------------------------------------------------------------------------------

-- VALQ GET queue id -> the message's map; NOMSG
function commands.get(keys, argv, now)
  local q = existing(keys[1])
  opened(q, now)
  local id, text = parse_int(argv[1], '1', U64_MAX, ID_MESSAGE)
  local r = q:record(id)
  if not r then no_message(q.name, text) end
  return q:message_info(id, r)
end

-- VALQ PEEK queue [READY|INFLIGHT|DELAYED|DLQ] [COUNT n] -> array of GET maps
function commands.peek(keys, argv, now)
  local q = existing(keys[1])
  opened(q, now)
  local args = cursor(argv, 1)
  local indexes = {READY = q.ready, INFLIGHT = q.lease, DELAYED = q.delay, DLQ = q.dlq}
  local index, count = q.ready, 10
  if args:remaining() > 0 and indexes[args:peek_upper()] then
    index = indexes[args:next_keyword()]
  end
  if args:remaining() > 0 then
    if args:next_keyword() ~= 'COUNT' then err('syntax error') end
    count = args:next_int('1', '1000', 'COUNT must be between 1 and 1000')
  end
  if args:remaining() > 0 then err('syntax error') end
  local out = {}
  for _, member in ipairs(redis.call('ZRANGE', index, 0, count - 1)) do
    local id = index == q.ready and id_of_member(member) or tonumber(member)
    out[#out + 1] = q:message_info(id, q:record(id))
  end
  return out
end

-- VALQ CANCEL queue id -> 1; NOMSG
function commands.cancel(keys, argv, now)
  local id, text = parse_int(argv[1], '1', U64_MAX, ID_MESSAGE)
  local q = existing(keys[1])
  opened(q, now)
  local r = q:record(id)
  if not r then no_message(q.name, text) end
  q:remove(id, q:state_at(id, r), r)
  q:count('cancelled')
  return 1
end

-- VALQ RESCHEDULE queue id delay -> "rescheduled <id>"
function commands.reschedule(keys, argv, now)
  local id, text = parse_int(argv[1], '1', U64_MAX, ID_MESSAGE)
  local delay = parse_int(argv[2], '0', U64_MAX, DELAY_MESSAGE)
  local q = existing(keys[1])
  now = opened(q, now)
  local r = q:record(id)
  if not r then no_message(q.name, text) end
  local state = q:state_at(id, r)
  if state ~= 'ready' and state ~= 'delayed' then
    err('message ' .. text .. ' is ' .. state ..
        ': only ready or delayed messages can be rescheduled')
  end
  q:unlink(id, state, r)
  redis.call('ZADD', q.delay, due_time(now, delay), pad(id))
  q:note_due(due_time(now, delay))
  return 'rescheduled ' .. text
end

-- VALQ REDRIVE queue [COUNT n] [TO other] -> integer moved (TO: the other queue's key is
-- the second key)
function commands.redrive(keys, argv, now)
  local args = cursor(argv, 1)
  local count, target_name
  while args:remaining() > 0 do
    local word = args:next_keyword()
    if word == 'COUNT' and count == nil then
      count = args:next_int('1', I64_MAX, 'COUNT must be a positive integer')
    elseif word == 'TO' and target_name == nil then
      target_name = args:next_bytes()
    else
      err('syntax error')
    end
  end
  local q = existing(keys[1])
  local target = q
  if target_name ~= nil and target_name ~= q.name then
    if keys[2] ~= 'valq:{' .. target_name .. '}' then
      err('REDRIVE TO another queue needs its key valq:{<other>} as the second key')
    end
    target = queue_at(keys[2])
  end
  now = opened(q, now)
  if target ~= q then
    if not target.exists then no_queue(target.name) end
    opened(target, now)
  end
  local dead = redis.call('ZCARD', q.dlq)
  local moving = count and math.min(count, dead) or dead
  if target ~= q then target:check_room(moving) end
  if moving == 0 then return 0 end
  for _, member in ipairs(redis.call('ZRANGE', q.dlq, 0, moving - 1)) do
    local id = tonumber(member)
    local r = q:record(id)
    if target == q then
      redis.call('ZREM', q.dlq, member)
      r.attempts = 0
      q:write(id, r)
      q:make_ready(id, r)
    else
      q:remove(id, 'dlq', r)
      target:add(now, r.body, 0, r.priority, true)
    end
    q:count('redriven')
  end
  return moving
end

-- the canonical dump (valqd/engine/dump.py) -------------------------------------------------

local function escape(raw)
  return (raw:gsub('[^\33-\36\38-\126]', function(c) return string.format('%%%02X', c:byte()) end))
end

function commands.dump(keys, argv, now)
  local q = queue_at(keys[1])
  if not q.exists then return {} end
  opened(q, now)
  q = queue_at(keys[1])
  local name = escape(q.name)
  local lines = {table.concat({
    'queue', name, 'visibility_timeout=' .. fmt(q.vt), 'max_delivery_attempts=' .. fmt(q.mda),
    'retention_period=' .. fmt(q.rp), 'backoff=' .. q.backoff, 'backoff_base=' .. fmt(q.bbase),
    'backoff_max=' .. fmt(q.bmax), 'dedup_window=' .. fmt(q.dedupw),
    'maxlen=' .. q.maxlen, 'paused=' .. (q.paused and '1' or '0'),
    'id_sequence=' .. fmt(q.ids), 'promote_seq=' .. fmt(q.pseq),
    'lease_seq=' .. fmt(q.lseq)}, ' ')}
  for _, part in ipairs({{q.ready, 'ready'}, {q.lease, 'inflight'}, {q.delay, 'delayed'},
                         {q.dlq, 'dlq'}}) do
    local got = redis.call('ZRANGE', part[1], 0, -1, 'WITHSCORES')
    for i = 1, #got, 2 do
      local id = part[2] == 'ready' and id_of_member(got[i]) or tonumber(got[i])
      local r = q:record(id)
      local at = part[2] == 'ready' and 0 or tonumber(got[i + 1])
      local reason = redis.call('HGET', q.why, fmt(id))
      lines[#lines + 1] = table.concat({
        'message', name, fmt(id), 'state=' .. part[2], 'at=' .. fmt(at),
        'attempts=' .. fmt(r.attempts), 'priority=' .. fmt(r.priority),
        'enqueued_at=' .. fmt(r.enq), 'promote_seq=' .. fmt(r.pseq),
        'lease_no=' .. fmt(r.lease_no)}, ' ') ..
        (reason and ' reason=' .. escape(reason) or '') .. ' body=' .. escape(r.body)
    end
  end
  local keys_ = redis.call('ZRANGE', q.dedupx, 0, -1, 'WITHSCORES')
  for i = 1, #keys_, 2 do
    local seen = redis.call('HGET', q.dedup, keys_[i])
    lines[#lines + 1] = 'dedup ' .. name .. ' ' .. escape(keys_[i]) .. ' id=' ..
                        seen:match('^(%d+) ') .. ' expires_at=' .. fmt(tonumber(keys_[i + 1]))
  end
  return lines
end

-- registration ---------------------------------------------------------------------------

-- the clock of a call: the server's TIME, or in the test build the caller's
local function call_now(args)
  if TEST_CLOCK then
    local raw = table.remove(args, 1)
    local clock = raw and tonumber(raw)
    if clock == nil then err('the test build takes the clock (Unix ms) as its first argument') end
    return clock
  end
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local function run(handler, keys, args)
  return handler(keys, args, call_now(args))
end

local function wrap(handler)
  return function(keys, args)
    local ok, result = pcall(run, handler, keys, args)
    if ok then return result end
    if getmetatable(result) == Failure then
      local text = (result.code .. ' ' .. result.message):gsub('[\r\n]', ' ')
      return redis.error_reply(text)
    end
    error(result)
  end
end

local NAMES = {'ack', 'cancel', 'create', 'delete', 'dump', 'exists', 'extend', 'get',
               'info', 'mack', 'mpush', 'nack', 'pause', 'peek', 'pop', 'purge', 'push',
               'redrive', 'reschedule', 'resume', 'stats', 'update'}
for i = 1, #NAMES do
  local name = NAMES[i]
  redis.register_function('valq_' .. name, wrap(commands[name]))
end

redis.register_function{function_name = 'valq_version', flags = {'no-writes'},
                        callback = function() return VERSION end}
