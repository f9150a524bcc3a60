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

The contract with a front end (valqd --store valkey://), besides the VALQ functions:
  valq_mpop             MPOP over queues of one slot; across slots: one queue per call
  valq_redrive_out/_in/_done   REDRIVE ... TO a queue in another slot (see below)
  valq:{<queue>}        the queue's key, the only key ending in '}': SCAN MATCH valq:{*}
                        lists the queues (LIST, SCAN, KEYS, DBSIZE)
  valq:{<queue>}:wake   list, one element exactly while a message is ready and the queue
                        is not paused: BLPOP it, then valq_pop_woken / valq_mpop_woken
                        (they re-arm it); valq_wake re-arms it and answers the time to the
                        queue's next due event, for a local timer
  valq:{<queue>}:events (valq@<n>:{<queue>}:events for database n) the sharded channel
                        of the queue's events, `<event> <id>` or `paused` / `resumed`,
                        published while valq_listen says somebody listens (SSUBSCRIBE)
  valq:due:{<tag>}      the due index of one slot, for valq_reap (see "the reaper")
Each is explained where it is made, below.

Keys: every key of one queue shares the hash tag {<queue>}, so each call is atomic in one
slot of a cluster:
  valq:{q}            hash: field `header` -> the queue's header, packed (see HEAD_* below:
                      settings, sequences, clock, due bound, counters, the size of each
                      index); field <id> -> the message's packed record (REC_SHORT or
                      REC_FULL, then the body), which says the message's state. It exists
                      exactly while the queue does, and it is the only key of the library
                      whose name ends in '}': SCAN ... MATCH valq:{*} lists the queues.
  valq:{q}:ready      zset: score -priority, member M(1, id) or, for a delayed message that
                      fell due, M(0, rank, id): POP takes the first
  valq:{q}:lease      zset: lease deadline, member ID(id)
  valq:{q}:delay      zset: due time, member ID(id)
  valq:{q}:dlq        zset: when it entered the DLQ, member ID(id)
  valq:{q}:dedup      hash: key -> "id expires_at";  valq:{q}:dedupx zset: expires_at, key
  valq:{q}:why        hash: id -> last NACK reason
ID(id) is the id as 7 big-endian bytes, M(...) a byte 0 or 1 and 7-byte big-endian numbers:
equal scores are ordered by member bytes, which is id order, so every tie is broken as the
engine breaks it. Nothing iterates a hash, nothing is random.

Cost: a call reads the header once (HGET) and writes it once at its end, in the same HSET
as the record it wrote last; a header read again unchanged is not unpacked again (see
cached_header). The hot path: PUSH = TIME, HGET, HSET, ZADD; POP = TIME, HGET, ZPOPMIN,
HGET, ZADD, HSET; ACK = TIME, HGET, ZREM, HDEL, HSET. A record is 9 bytes before the body
until the message is first delivered (or has a priority), as in the engine.

Time: the server's TIME, read inside the function; a queue's clock never goes backwards.
Before each call, the due events of the queue (a lease running out, a delay falling due, a
DLQ retention ending, dedup keys expiring) are applied one at a time at their own time, in
the engine's order, at most TICK_BUDGET of them per call; the header keeps a lower bound of
the next one (`due`) so that a call with nothing due reads no index. A call validates all
of its arguments before its first write of its own.

Test build: valqd.store.valkey.library_source(test_clock=True) sets TEST_CLOCK below to
true. In that build (and only in it) every function takes the clock, in Unix ms, as its
first argument after the keys. The production build has no such argument, so no caller can
move a production queue's clock.

Numbers are Lua doubles: ids, times and counts are exact up to 2^53. Delays so long that
the due time passes 2^53 ms (about year 287,000) are kept, but their due time is not
exact (the engine saturates due times at (2^64-1) s).
]]

local VERSION = 2
local TEST_CLOCK = false
local TICK_BUDGET = 1000

local MAX_ATTEMPTS_STORED = 65535
local U64_MAX = '18446744073709551615'
local I64_MAX = '9223372036854775807'
local I64_MIN = '-9223372036854775808'
local RECEIPT_MESSAGE = 'invalid lease receipt'
local NOT_AN_INTEGER = 'value is not an integer or out of range'
local ID_MESSAGE = 'message id must be a positive integer'
local DELAY_MESSAGE = 'delay must be an integer between 0 and 18446744073709551615'
local MAX_DELAY_MS = 18446744073709551615 * 1000
local NEVER = 2 ^ 80  -- later than any due time

-- The header, in three parts packed apart (a pack costs about as much as a redis.call, so
-- a call repacks only the parts it changed):
--   settings: vt, mda, rp, backoff kind, backoff base, backoff max, dedup window, paused
--   hot:      ids, lseq, clock, due, nready, nlease, counters pushed, delivered, acked
--   cold:     pseq, the other seven counters, ndelay, ndlq, ndedup, nwhy, listen (events
--             are published while the clock is before it), ldb (the database in the
--             events' channel name)
-- then the maxlen setting as decimal text (it may exceed 2^53). A change of a settings
-- or cold field sets q.settings or q.cold to false; the test build checks, at the end of
-- every call, that the header equals a full repack.
local HEADER_FIELD = 'header'
local HEAD_SETTINGS, SETTINGS_END = '<HBI4BI4I4I4B', 21
local HEAD_HOT = '<ddddddddd'
local HEAD_COLD, COLD_START, COLD_END = '<dddddddddddddd', 94, 205
local COUNTERS = {'pushed', 'delivered', 'acked', 'nacked', 'expired', 'dead_lettered',
                  'dropped', 'deduplicated', 'redriven', 'cancelled'}
local PUSHED, DELIVERED, ACKED, NACKED, EXPIRED, DEAD_LETTERED, DROPPED, DEDUPLICATED,
      REDRIVEN, CANCELLED = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
local BACKOFF_KINDS = {none = 0, fixed = 1, exponential = 2}
local BACKOFF_NAMES = {[0] = 'none', 'fixed', 'exponential'}

-- Records: a tag byte (the state, plus 16 for the full form), then
--   short: enqueued_at                                      (never delivered, priority 0)
--   full:  enqueued_at, promote_seq, lease_no, attempts, priority
-- then the body.
local REC_SHORT, REC_SHORT_SIZE = '<Bd', 9
local REC_FULL, REC_FULL_SIZE = '<BdddHi4', 31
local READY, INFLIGHT, DELAYED, DLQ = 1, 2, 3, 4
local STATE_NAMES = {'ready', 'inflight', 'delayed', 'dlq'}
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

-- an integral number as decimal text (tostring is exact below 1e14 and much cheaper)
local function fmt(n)
  if n < 1e14 and n > -1e14 then return tostring(n) end
  return string.format('%.0f', n)
end

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

-- a message id: the common short case without patterns
local function parse_id(raw)
  if raw ~= nil and #raw < 15 and raw:find('^[1-9]%d*$') then return tonumber(raw), raw end
  return parse_int(raw, '1', U64_MAX, ID_MESSAGE)
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

-- the queues of one call ------------------------------------------------------------------

-- The queues a call has opened, in the order it opened them: their headers are written
-- back when the call ends (also when it ends in an error after due events were applied).
local open_queues = {}

local function name_of(key)
  if type(key) ~= 'string' or key:sub(1, 6) ~= 'valq:{' or key:byte(-1) ~= 125 or #key < 7 then
    err('the key must be valq:{<queue>}')
  end
  return key:sub(7, -2)
end

-- The key names of the last queue a call opened, kept between calls: most calls in a row
-- name the same queue, and making five names costs more than the rest of a short call.
local last_key, last_names = nil, nil

local function names_of(key)
  if key == last_key then return last_names end
  name_of(key)
  last_names = {name = key:sub(7, -2), msgs = key, ready = key .. ':ready',
                lease = key .. ':lease', delay = key .. ':delay', dlq = key .. ':dlq'}
  last_key = key
  return last_names
end

-- a queue as a call sees it: its names and, when it exists, its header's fields
local function make_queue(key, raw)
  local k = names_of(key)
  if not raw then
    return {key = key, name = k.name, msgs = k.msgs, ready = k.ready, lease = k.lease,
            delay = k.delay, dlq = k.dlq, dirty = false, exists = false}
  end
  local vt, mda, rp, backoff, bbase, bmax, dedupw, paused, at = struct.unpack(HEAD_SETTINGS, raw)
  local ids, lseq, clock, due, nready, nlease, c1, c2, c3
  ids, lseq, clock, due, nready, nlease, c1, c2, c3, at = struct.unpack(HEAD_HOT, raw, at)
  local pseq, c4, c5, c6, c7, c8, c9, c10, ndelay, ndlq, ndedup, nwhy, listen, ldb, pos =
    struct.unpack(HEAD_COLD, raw, at)
  return {key = key, name = k.name, msgs = k.msgs, ready = k.ready, lease = k.lease,
          delay = k.delay, dlq = k.dlq, dirty = false, exists = true,
          settings = raw:sub(1, SETTINGS_END), cold = raw:sub(COLD_START, COLD_END),
          vt = vt, mda = mda, rp = rp, backoff = BACKOFF_NAMES[backoff], bbase = bbase,
          bmax = bmax, dedupw = dedupw, paused = paused == 1, ids = ids, pseq = pseq,
          lseq = lseq, clock = clock, due = due, c = {c1, c2, c3, c4, c5, c6, c7, c8, c9, c10},
          nready = nready, nlease = nlease, ndelay = ndelay, ndlq = ndlq, ndedup = ndedup,
          nwhy = nwhy, listen = listen, ldb = ldb, maxlen = raw:sub(pos)}
end

local function pack_settings(q)
  return struct.pack(HEAD_SETTINGS, q.vt, q.mda, q.rp, BACKOFF_KINDS[q.backoff], q.bbase,
                     q.bmax, q.dedupw, q.paused and 1 or 0)
end

local function pack_cold(q)
  local c = q.c
  return struct.pack(HEAD_COLD, q.pseq, c[4], c[5], c[6], c[7], c[8], c[9], c[10], q.ndelay,
                     q.ndlq, q.ndedup, q.nwhy, q.listen, q.ldb)
end

-- the header's bytes, repacking the settings and cold parts only when they changed
local function pack_header(q)
  local c = q.c
  if not q.settings then q.settings = pack_settings(q) end
  if not q.cold then q.cold = pack_cold(q) end
  return q.settings .. struct.pack(HEAD_HOT, q.ids, q.lseq, q.clock, q.due, q.nready,
                                   q.nlease, c[1], c[2], c[3]) .. q.cold .. q.maxlen
end

-- the queue whose key is `key`, read once per call
-- The queue of the last call and the header it wrote (or read unchanged). A header read
-- again is the same Lua string when its bytes are the same (Lua interns strings), so one
-- comparison tells that the queue's fields are still those of `cached_queue`: the header
-- is unpacked only when another queue is called, or something else wrote it.
local cached_header, cached_queue = nil, nil

local function queue_at(key)
  for i = 1, #open_queues do
    if open_queues[i].key == key then return open_queues[i] end
  end
  local raw = redis.pcall('HGET', key, HEADER_FIELD)
  local q
  if raw == cached_header and raw and cached_queue.key == key then
    q = cached_queue
    cached_header, cached_queue = nil, nil  -- until the call ends well
  else
    if type(raw) == 'table' then
      err("key '" .. show(key) .. "' is not a queue of valq library version " .. VERSION)
    end
    q = make_queue(key, raw)
  end
  q.raw = raw
  q.was_ready = q.exists and q.nready > 0 and not q.paused
  q.due_open = q.exists and q.due or NEVER
  open_queues[#open_queues + 1] = q
  return q
end

local function existing(key)
  local q = queue_at(key)
  if not q.exists then no_queue(q.name) end
  return q
end

local function sub(q, suffix) return q.key .. suffix end

-- the record write a call keeps back, to send it with the header in one HSET
local function flush_record(q)
  if q.pending_id then
    redis.call('HSET', q.key, q.pending_id, q.pending_record)
    q.pending_id, q.pending_record = nil, nil
  end
end

-- write back the headers the call changed (with a record kept back); remember the last one
-- the events of the call, channel and message pairs, published when it ends
local events = {}
-- the event each counter's events publish (deduplicated publishes none)
local EVENT_OF = {'pushed', 'delivered', 'acked', 'nacked', 'expired', 'dead', 'dropped',
                  false, 'redriven', 'cancelled'}

local function channel_of(q)
  if q.ldb == 0 then return q.key .. ':events' end
  return 'valq@' .. fmt(q.ldb) .. ':' .. q.key:sub(6) .. ':events'
end

-- an event of queue q: `word` and the message id, or `word` alone
local function emit(q, word, id)
  if q.listen > q.clock then
    events[#events + 1] = channel_of(q)
    events[#events + 1] = id and word .. ' ' .. fmt(id) or word
  end
end

-- Whether this call re-arms the wake markers of the ready queues it opened (the woken
-- functions: their caller consumed a marker).
local rearm = false

-- The wake marker valq:{q}:wake holds one element while the queue has a ready message and
-- is not paused, none otherwise: set on each change of readiness, and by a woken call.
local function mark_readiness(q, ready)
  local wake = q.key .. ':wake'
  if ready ~= q.was_ready then
    if not ready then
      redis.call('DEL', wake)
    elseif redis.call('RPUSH', wake, '1') > 1 then
      redis.call('LTRIM', wake, 0, 0)
    end
  elseif ready and rearm and redis.call('LLEN', wake) == 0 then
    redis.call('RPUSH', wake, '1')
  end
end

-- The due index of the queue's slot: a zset, member the queue's name, score a lower bound
-- of its next due event, for a reaper (see valq_reap); its key shares the slot.
local CRC, INV14, SLOT_TAGS = nil, nil, {}

local function crc16(text)
  local crc = 0
  for i = 1, #text do
    crc = bit.bxor(bit.band(bit.lshift(crc, 8), 0xFFFF),
                   CRC[bit.bxor(bit.rshift(crc, 8), text:byte(i))])
  end
  return crc
end

-- a two-byte hash tag whose slot is `slot` (with no '}'): solved, not searched, from the
-- CRC table's low 14 bits
local function slot_tag(slot)
  local tag = SLOT_TAGS[slot]
  if tag then return tag end
  for b1 = 0, 255 do
    local c = CRC[b1]
    local want = bit.band(bit.bxor(slot, bit.lshift(c, 8)), 16383)
    local j = INV14[want]
    if j and b1 ~= 125 then
      local b2 = bit.bxor(j, bit.rshift(c, 8))
      if b2 ~= 125 then
        tag = string.char(b1, b2)
        break
      end
    end
  end
  SLOT_TAGS[slot] = tag
  return tag
end

local function due_index_of(key)
  if CRC == nil then
    CRC, INV14 = {}, {}
    for i = 0, 255 do
      local c = bit.lshift(i, 8)
      for _ = 1, 8 do
        c = bit.band(bit.band(c, 0x8000) ~= 0 and bit.bxor(bit.lshift(c, 1), 0x1021)
                     or bit.lshift(c, 1), 0xFFFF)
      end
      CRC[i] = c
    end
    for j = 255, 0, -1 do INV14[bit.band(CRC[j], 16383)] = j end
  end
  local tag = key
  local open = key:find('{', 1, true)
  if open then
    local close = key:find('}', open + 1, true)
    if close and close > open + 1 then tag = key:sub(open + 1, close - 1) end
  end
  return 'valq:due:{' .. slot_tag(bit.band(crc16(tag), 16383)) .. '}'
end

local function index_due(q)
  local due = q.exists and q.due or NEVER
  if due < NEVER then
    redis.call('ZADD', due_index_of(q.key), due, q.name)
  else
    redis.call('ZREM', due_index_of(q.key), q.name)
  end
  q.due_open = due
end

local function close_queues()
  for i = 1, #events, 2 do
    redis.call('SPUBLISH', events[i], events[i + 1])
    events[i], events[i + 1] = nil, nil
  end
  for i = 1, #open_queues do
    local q = open_queues[i]
    local ready = q.exists and q.nready > 0 and not q.paused
    if ready ~= q.was_ready or (ready and rearm) then mark_readiness(q, ready) end
    if (q.exists and q.due or NEVER) ~= q.due_open then index_due(q) end
    if q.exists then
      if q.dirty then
        q.raw = pack_header(q)
        if TEST_CLOCK and q.raw:sub(1, SETTINGS_END) .. q.raw:sub(COLD_START) ~=
            pack_settings(q) .. pack_cold(q) .. q.maxlen then
          error('the header parts of ' .. q.key .. ' were not all marked as changed')
        end
        q.dirty = false
        if q.pending_id then
          redis.call('HSET', q.key, HEADER_FIELD, q.raw, q.pending_id, q.pending_record)
          q.pending_id, q.pending_record = nil, nil
        else
          redis.call('HSET', q.key, HEADER_FIELD, q.raw)
        end
      end
      flush_record(q)
      cached_header, cached_queue = q.raw, q
    end
  end
end

-- count an event of message `id`, and publish it if somebody listens
local function count(q, counter, id)
  q.c[counter] = q.c[counter] + 1
  if counter > ACKED then q.cold = false end
  if q.listen > q.clock and EVENT_OF[counter] then emit(q, EVENT_OF[counter], id) end
end

-- an event at `at` was added to one of the indexes: keep `due` a lower bound
local function note_due(q, at)
  if at < q.due then q.due = at end
end

local function backoff_ms(q, attempts)
  if q.backoff == 'fixed' then return q.bbase * 1000 end
  if q.backoff == 'exponential' then
    local exponent = math.min(math.max(attempts - 1, 0), 64)
    return math.min(q.bbase * 2 ^ exponent, q.bmax) * 1000
  end
  return 0
end

local function due_time(now, delay)
  return math.min(now + delay * 1000, MAX_DELAY_MS)
end

-- records ---------------------------------------------------------------------------------

local function read_record(raw)
  local tag = raw:byte(1)
  if tag < 16 then
    local _, enq = struct.unpack(REC_SHORT, raw)
    return {state = tag, enq = enq, pseq = 0, lease_no = 0, attempts = 0, priority = 0,
            body = raw:sub(REC_SHORT_SIZE + 1)}
  end
  local _, enq, pseq, lease_no, attempts, priority = struct.unpack(REC_FULL, raw)
  return {state = tag - 16, enq = enq, pseq = pseq, lease_no = lease_no, attempts = attempts,
          priority = priority, body = raw:sub(REC_FULL_SIZE + 1)}
end

-- the message's record, nil when there is no such message
local function record(q, id)
  if q.pending_id then flush_record(q) end
  local raw = redis.call('HGET', q.msgs, id)
  if not raw then return nil end
  return read_record(raw)
end

local function packed(r)
  if r.pseq == 0 and r.lease_no == 0 and r.attempts == 0 and r.priority == 0 then
    return struct.pack(REC_SHORT, r.state, r.enq) .. r.body
  end
  return struct.pack(REC_FULL, r.state + 16, r.enq, r.pseq, r.lease_no,
                     math.min(r.attempts, MAX_ATTEMPTS_STORED), r.priority) .. r.body
end

-- a record written: kept back until the next record access or the call's end
local function write_packed(q, id, value)
  if q.pending_id then flush_record(q) end
  q.pending_id, q.pending_record = id, value
end

local function write(q, id, r) write_packed(q, id, packed(r)) end

-- members of the index zsets
local function member(id) return struct.pack('>I7', id) end
local function id_of(m) return (struct.unpack('>I7', m)) end
local function ready_member(id, r)
  if r.pseq > 0 then return struct.pack('>BI7I7', 0, r.pseq, id) end
  return struct.pack('>BI7', 1, id)
end
local function id_of_ready(m) return (struct.unpack('>I7', m, #m - 6)) end

local function index_of(q, state)
  if state == READY then return q.ready
  elseif state == INFLIGHT then return q.lease
  elseif state == DELAYED then return q.delay end
  return q.dlq
end

-- take a message out of its state's index (the record stays; the caller writes it)
local function unlink(q, id, r)
  local state = r.state
  if state == READY then
    redis.call('ZREM', q.ready, ready_member(id, r))
    q.nready = q.nready - 1
  elseif state == INFLIGHT then
    redis.call('ZREM', q.lease, member(id))
    q.nlease = q.nlease - 1
  elseif state == DELAYED then
    redis.call('ZREM', q.delay, member(id))
    q.ndelay = q.ndelay - 1
    q.cold = false
  else
    redis.call('ZREM', q.dlq, member(id))
    q.ndlq = q.ndlq - 1
    q.cold = false
  end
  r.state = 0
end

-- put an unlinked message in `state` (at: the deadline, due time or dead_at)
local function link(q, id, r, state, at)
  r.state = state
  if state == READY then
    redis.call('ZADD', q.ready, -r.priority, ready_member(id, r))
    q.nready = q.nready + 1
  elseif state == INFLIGHT then
    redis.call('ZADD', q.lease, at, member(id))
    q.nlease = q.nlease + 1
    note_due(q, at)
  elseif state == DELAYED then
    redis.call('ZADD', q.delay, at, member(id))
    q.ndelay = q.ndelay + 1
    q.cold = false
    note_due(q, at)
  else
    redis.call('ZADD', q.dlq, at, member(id))
    q.ndlq = q.ndlq + 1
    q.cold = false
    note_due(q, at + q.rp * 1000)
  end
end

local function move(q, id, r, state, at)
  unlink(q, id, r)
  link(q, id, r, state, at)
  write(q, id, r)
end

local function forget_reason(q, id)
  if q.nwhy > 0 and redis.call('HDEL', sub(q, ':why'), id) == 1 then
    q.nwhy, q.cold = q.nwhy - 1, false
  end
end

-- the message's last NACK reason, false when none (a nil bulk in a reply)
local function reason_of(q, id)
  if q.nwhy == 0 then return false end
  return redis.call('HGET', sub(q, ':why'), id)
end

-- delete an unlinked message's record and reason
local function drop_record(q, id)
  if q.pending_id then flush_record(q) end
  redis.call('HDEL', q.msgs, id)
  forget_reason(q, id)
end

local function remove(q, id, r)
  unlink(q, id, r)
  drop_record(q, id)
end

local function stored_count(q) return q.nready + q.nlease + q.ndelay end

-- the ready head: id, record; nil when none
local function ready_head(q)
  if q.nready == 0 then return nil end
  local head = redis.call('ZRANGE', q.ready, 0, 0)[1]
  local id = id_of_ready(head)
  return id, record(q, id)
end

-- an in-flight message returns: visible now, or delayed until due (backoff)
local function release(q, id, r, due)
  if due > 0 then move(q, id, r, DELAYED, due) else move(q, id, r, READY) end
end

-- due events ------------------------------------------------------------------------------

local function head_of(key)
  local got = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return got[1], tonumber(got[2])
end

-- the earliest due event: time, kind ('lease', 'delay', 'drop', 'dedup'), member; on a tie
-- in that order, as the engine's Queue.next_due
local function next_due(q)
  local best_at, best_kind, best_member
  if q.nlease > 0 then
    best_member, best_at = head_of(q.lease)
    best_kind = 'lease'
  end
  if q.ndelay > 0 then
    local m, at = head_of(q.delay)
    if best_at == nil or at < best_at then best_at, best_kind, best_member = at, 'delay', m end
  end
  if q.ndlq > 0 then
    local m, at = head_of(q.dlq)
    at = at + q.rp * 1000
    if best_at == nil or at < best_at then best_at, best_kind, best_member = at, 'drop', m end
  end
  if q.ndedup > 0 then
    local m, at = head_of(sub(q, ':dedupx'))
    if best_at == nil or at < best_at then best_at, best_kind, best_member = at, 'dedup', m end
  end
  return best_at, best_kind, best_member
end

local function expire_dedup(q, now, budget)
  local dedupx = sub(q, ':dedupx')
  local keys = redis.call('ZRANGEBYSCORE', dedupx, '-inf', now, 'LIMIT', 0, budget)
  redis.call('HDEL', sub(q, ':dedup'), unpack(keys))
  redis.call('ZREM', dedupx, unpack(keys))
  q.ndedup, q.cold = q.ndedup - #keys, false
end

-- apply the queue's due events, earliest first, at most `budget`; returns how many
-- The leases that run out, in order, before anything else falls due (a lease wins a tie)
-- and by `now`, at most `most` of them, with one read and one removal from the lease index
-- for all: a storm of expiries costs a record read and write per message. Each lease runs
-- out at its own time; one that starts a backoff or a DLQ retention moves the bound, as the
-- new event may come before the next lease. Returns how many.
local function expire_leases(q, now, most)
  local bound = now
  if q.ndelay > 0 then bound = math.min(bound, select(2, head_of(q.delay))) end
  if q.ndlq > 0 then bound = math.min(bound, select(2, head_of(q.dlq)) + q.rp * 1000) end
  if q.ndedup > 0 then bound = math.min(bound, select(2, head_of(sub(q, ':dedupx')))) end
  local got = redis.call('ZRANGEBYSCORE', q.lease, '-inf', bound, 'WITHSCORES',
                         'LIMIT', 0, most)
  local taken = {}
  for i = 1, #got, 2 do
    local at = tonumber(got[i + 1])
    if at > bound then break end
    local id = id_of(got[i])
    local r = record(q, id)
    q.nlease, r.state = q.nlease - 1, 0  -- unlinked: removed from the index below
    taken[#taken + 1] = got[i]
    count(q, EXPIRED, id)
    if r.attempts >= q.mda then
      link(q, id, r, DLQ, at)
      count(q, DEAD_LETTERED, id)
      bound = math.min(bound, at + q.rp * 1000)
    else
      local wait = backoff_ms(q, r.attempts)
      if wait > 0 then
        link(q, id, r, DELAYED, at + wait)
        bound = math.min(bound, at + wait)
      else
        link(q, id, r, READY)
      end
    end
    write(q, id, r)
  end
  for first = 1, #taken, 1000 do
    redis.call('ZREM', q.lease, unpack(taken, first, math.min(first + 999, #taken)))
  end
  return #taken
end

local function run_due(q, now, budget)
  local done = 0
  while done < budget do
    local at, kind, m = next_due(q)
    if at == nil or at > now then break end
    if kind == 'lease' then
      done = done + expire_leases(q, now, budget - done) - 1
    elseif kind == 'dedup' then
      expire_dedup(q, now, budget)
    else
      local id = id_of(m)
      local r = record(q, id)
      if kind == 'delay' then
        unlink(q, id, r)
        if r.attempts == 0 then
          q.pseq, q.cold = q.pseq + 1, false
          r.pseq = q.pseq
        end
        link(q, id, r, READY)
        write(q, id, r)
      else
        remove(q, id, r)
        count(q, DROPPED, id)
      end
    end
    done = done + 1
  end
  return done
end

-- Open a queue for a call at `now`: the queue's clock never goes backwards, and what fell
-- due is applied first (at most TICK_BUDGET events). Returns the call's clock.
local function opened(q, now, budget)
  local done = 0
  if q.exists then
    local clock = q.clock
    if clock > now then
      now = clock
    elseif clock < now then
      q.clock = now
      q.dirty = true
    end
    if q.due <= now then
      budget = budget or TICK_BUDGET
      done = run_due(q, now, budget)
      q.due = done < budget and (next_due(q) or NEVER) or 0
      q.dirty = true
    end
  end
  return now, done
end

-- settings ------------------------------------------------------------------------------------

local SETTING_FIELDS = {'vt', 'mda', 'rp', 'backoff', 'bbase', 'bmax', 'dedupw', 'maxlen'}

local function new_settings(base)
  local s = {}
  for i = 1, #SETTING_FIELDS do s[SETTING_FIELDS[i]] = base[SETTING_FIELDS[i]] end
  return s
end

local DEFAULTS = {vt = 30, mda = 5, rp = 86400, backoff = 'none', bbase = 0, bmax = 0,
                  dedupw = 300, maxlen = '0'}

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

local function apply_settings(q, s)
  for i = 1, #SETTING_FIELDS do q[SETTING_FIELDS[i]] = s[SETTING_FIELDS[i]] end
  q.dirty, q.settings = true, false
end

-- replies -------------------------------------------------------------------------------------

local function flat_map(pairs_)
  local out = {}
  for i = 1, #pairs_ do
    out[#out + 1] = pairs_[i][1]
    out[#out + 1] = pairs_[i][2]
  end
  return out
end

local function by_key(a, b) return a[1] < b[1] end

-- (state name, time): lease deadline, due time or dead_at; 0 for a ready message
local function state_at(q, id, r)
  if r.state == READY then return 'ready', 0 end
  return STATE_NAMES[r.state], tonumber(redis.call('ZSCORE', index_of(q, r.state), member(id)))
end

-- the map of GET and PEEK
local function message_info(q, id, r)
  local state, at = state_at(q, id, r)
  local fields = {{'attempts', fmt(r.attempts)}, {'body', r.body},
                  {'enqueued_at', fmt(r.enq)}, {'id', fmt(id)},
                  {'priority', fmt(r.priority)}, {'state', state},
                  {'last_reason', reason_of(q, id)}}
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
  apply_settings(q, s)
  q.exists, q.paused, q.ids, q.pseq, q.lseq, q.clock, q.due = true, false, 0, 0, 0, now, NEVER
  q.c = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
  q.nready, q.nlease, q.ndelay, q.ndlq, q.ndedup, q.nwhy = 0, 0, 0, 0, 0, 0
  q.cold = false
  -- a front end that listened before the queue existed (valq_listen)
  q.listen, q.ldb = 0, 0
  local listening = redis.call('GET', q.key .. ':listen')
  if listening then
    local until_, db = listening:match('^(%d+) (%d+)$')
    q.listen, q.ldb = tonumber(until_), tonumber(db)
    redis.call('DEL', q.key .. ':listen')
  end
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
  apply_settings(q, s)
  q.due = 0  -- a new retention period moves the DLQ's deadlines
  return 'updated q'
end

local SUFFIXES = {':wake', ':ready', ':lease', ':delay', ':dlq', ':dedup', ':dedupx', ':why'}

-- VALQ DELETE queue -> "deleted <queue>", also when there is none
function commands.delete(keys, argv, now)
  local q = queue_at(keys[1])
  if #argv ~= 0 then err("wrong number of arguments for 'valq|delete' command") end
  local all = {q.key}
  for i = 1, #SUFFIXES do all[i + 1] = q.key .. SUFFIXES[i] end
  redis.call('DEL', unpack(all))
  -- a queue made again keeps its listeners (and one that is not there, its pending ones)
  if q.exists and q.listen > q.clock then
    redis.call('SET', q.key .. ':listen', fmt(q.listen) .. ' ' .. fmt(q.ldb),
               'PX', q.listen - q.clock)
  end
  q.exists = false
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
  return {'delayed_msgs', fmt(q.ndelay), 'dlq_msgs', fmt(q.ndlq), 'id_sequence', fmt(q.ids),
          'max_delivery_attempts', fmt(q.mda), 'msgs', fmt(q.nready + q.nlease),
          'retention_period', fmt(q.rp), 'visibility_timeout', fmt(q.vt)}
end

-- VALQ STATS queue -> map: counts, settings, counters, oldest_ready_age_ms; `blocked` is
-- always 0 here (blocked clients live in a front end, which fills it in)
function commands.stats(keys, argv, now)
  local q = existing(keys[1])
  now = opened(q, now)
  local fields = {}
  for i = 1, #COUNTERS do fields[i] = {COUNTERS[i], fmt(q.c[i])} end
  local backoff = q.backoff
  if backoff == 'fixed' then backoff = 'fixed ' .. fmt(q.bbase)
  elseif backoff == 'exponential' then backoff = 'exponential ' .. fmt(q.bbase) .. ' ' .. fmt(q.bmax) end
  local age = 0
  local _, head = ready_head(q)
  if head then age = math.max(0, now - head.enq) end
  local more = {
      {'backoff', backoff}, {'blocked', '0'}, {'dedup_window', fmt(q.dedupw)},
      {'delayed', fmt(q.ndelay)}, {'dlq', fmt(q.ndlq)},
      {'id_sequence', fmt(q.ids)}, {'inflight', fmt(q.nlease)},
      {'max_delivery_attempts', fmt(q.mda)}, {'maxlen', q.maxlen},
      {'oldest_ready_age_ms', fmt(age)}, {'paused', q.paused and '1' or '0'},
      {'ready', fmt(q.nready)}, {'retention_period', fmt(q.rp)},
      {'visibility_timeout', fmt(q.vt)}}
  for i = 1, #more do fields[#fields + 1] = more[i] end
  table.sort(fields, by_key)
  return flat_map(fields)
end

local PARTS = {main = true, dlq = true, delayed = true}

-- HDEL of many fields, a thousand at a time (unpack has a limit)
local function delete_fields(key, fields)
  local removed = 0
  for first = 1, #fields, 1000 do
    removed = removed + redis.call('HDEL', key, unpack(fields, first, math.min(first + 999, #fields)))
  end
  return removed
end

-- the ids of every member of an index, its members read by `id_from`
local function ids_in(index, id_from, into)
  local got = redis.call('ZRANGE', index, 0, -1)
  for i = 1, #got do into[#into + 1] = id_from(got[i]) end
  return into
end

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
    if q.nready > 0 then ids_in(q.ready, id_of_ready, ids) end
    if q.nlease > 0 then ids_in(q.lease, id_of, ids) end
    redis.call('DEL', q.ready, q.lease)
    q.nready, q.nlease = 0, 0
  elseif part == 'delayed' then
    if q.ndelay > 0 then ids_in(q.delay, id_of, ids) end
    redis.call('DEL', q.delay)
    q.ndelay, q.cold = 0, false
  else
    if q.ndlq > 0 then ids_in(q.dlq, id_of, ids) end
    redis.call('DEL', q.dlq)
    q.ndlq, q.cold = 0, false
  end
  if #ids > 0 then
    flush_record(q)
    delete_fields(q.msgs, ids)
    if q.nwhy > 0 then q.nwhy, q.cold = q.nwhy - delete_fields(sub(q, ':why'), ids), false end
    q.dirty = true
  end
  return #ids
end

local function set_paused(keys, argv, now, paused)
  local q = existing(keys[1])
  opened(q, now)
  if q.paused ~= paused then
    q.paused = paused
    q.dirty, q.settings = true, false
    emit(q, paused and 'paused' or 'resumed')
  end
  return (paused and 'paused ' or 'resumed ') .. q.name
end

-- VALQ PAUSE queue -> "paused <queue>";  VALQ RESUME queue -> "resumed <queue>"
function commands.pause(keys, argv, now) return set_paused(keys, argv, now, true) end
function commands.resume(keys, argv, now) return set_paused(keys, argv, now, false) end

-- producing ---------------------------------------------------------------------------------

-- store one message (the caller checked maxlen); returns its id. A redriven message
-- (`redriven`) is not counted as pushed.
local function add(q, now, body, delay, priority, redriven)
  local id = q.ids + 1
  q.ids = id
  q.dirty = true
  if delay == 0 and priority == 0 then  -- the common case, without a record table
    write_packed(q, id, struct.pack(REC_SHORT, READY, now) .. body)
    redis.call('ZADD', q.ready, 0, struct.pack('>BI7', 1, id))
    q.nready = q.nready + 1
    if not redriven then count(q, PUSHED, id) end
    return id
  end
  local r = {state = READY, enq = now, pseq = 0, lease_no = 0, attempts = 0,
             priority = priority, body = body}
  if delay > 0 then link(q, id, r, DELAYED, due_time(now, delay)) else link(q, id, r, READY) end
  write(q, id, r)
  if not redriven then count(q, PUSHED, id) end
  return id
end

local function check_room(q, adding)
  if q.maxlen ~= '0' and stored_count(q) + adding > tonumber(q.maxlen) then
    fail('QUEUEFULL', "queue '" .. show(q.name) .. "' is full (maxlen " .. q.maxlen .. ')')
  end
end

-- VALQ PUSH queue body [delay] [PRIORITY p] [DEDUP key] -> bulk id
function commands.push(keys, argv, now)
  local body = argv[1]
  if body == nil then err("wrong number of arguments for 'valq|push' command") end
  local delay, priority, dedup = 0, 0, nil
  if #argv > 1 then
    local args = cursor(argv, 2)
    local word = args:peek_upper()
    if word ~= 'PRIORITY' and word ~= 'DEDUP' then
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
  end
  local q = existing(keys[1])
  now = opened(q, now)
  if dedup then
    local seen = redis.call('HGET', sub(q, ':dedup'), dedup)
    if seen then
      local id, expires = seen:match('^(%d+) (%d+)$')
      if tonumber(expires) > now then
        count(q, DEDUPLICATED)
        q.dirty = true
        return id
      end
    end
  end
  check_room(q, 1)
  local id = add(q, now, body, delay, priority)
  if dedup then
    local expires = now + q.dedupw * 1000
    q.ndedup = q.ndedup + redis.call('HSET', sub(q, ':dedup'), dedup, fmt(id) .. ' ' .. fmt(expires))
    q.cold = false
    redis.call('ZADD', sub(q, ':dedupx'), expires, dedup)
    note_due(q, expires)
  end
  return fmt(id)
end

-- VALQ MPUSH queue body [body ...] -> array of ids; all or nothing
function commands.mpush(keys, argv, now)
  if #argv == 0 then err("wrong number of arguments for 'valq|mpush' command") end
  local q = existing(keys[1])
  now = opened(q, now)
  check_room(q, #argv)
  local ids = {}
  for i = 1, #argv do ids[i] = fmt(add(q, now, argv[i], 0, 0)) end
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
local function pop_many(q, now, count_, noack, withmeta)
  local out = {}
  if q.paused or q.nready == 0 then return out end
  local deadline = now + q.vt * 1000
  local got = redis.call('ZPOPMIN', q.ready, count_)
  q.dirty = true
  for i = 1, #got, 2 do
    local id = id_of_ready(got[i])
    local r = record(q, id)
    q.nready = q.nready - 1
    local attempts = r.attempts + 1
    local lease_no, lease_deadline = 0, 0
    if noack then
      drop_record(q, id)
    else
      lease_no, lease_deadline = q.lseq + 1, deadline
      q.lseq = lease_no
      r.attempts, r.lease_no = attempts, lease_no
      link(q, id, r, INFLIGHT, deadline)
      write(q, id, r)
    end
    count(q, DELIVERED, id)
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
  if #argv == 0 then  -- the module's form, the hot path
    local q = existing(keys[1])
    return pop_many(q, opened(q, now), 1, false, false)[1] or ''
  end
  local opts = pop_options(cursor(argv, 1))
  local q = existing(keys[1])
  now = opened(q, now)
  local maps = pop_many(q, now, opts.count or 1, opts.noack, opts.withmeta)
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

-- a main-queue message after checking a receipt: its record, in state READY or INFLIGHT
local function leased(q, id, text, lease_no)
  local r = record(q, id)
  local state = r and r.state
  if lease_no ~= nil and (state ~= INFLIGHT or r.lease_no ~= lease_no) then
    no_lease(q.name, text)
  end
  if state ~= READY and state ~= INFLIGHT then no_message(q.name, text) end
  return r
end

-- ack one message of the main queue; false when it is not there. An in-flight message is
-- found by its lease alone (the hot path: no record read).
local function ack_one(q, id)
  if q.nlease > 0 and redis.call('ZREM', q.lease, member(id)) == 1 then
    q.nlease = q.nlease - 1
    drop_record(q, id)
  else
    local r = q.nready > 0 and record(q, id)
    if not r or r.state ~= READY then return false end
    remove(q, id, r)
  end
  count(q, ACKED, id)
  q.dirty = true
  return true
end

-- VALQ ACK queue id [LEASE receipt] -> "ack <id>"; NOMSG, NOLEASE
function commands.ack(keys, argv, now)
  local id, text = parse_id(argv[1])
  if #argv > 1 then
    local lease_no = lease_option(cursor(argv, 2), id)
    local q = existing(keys[1])
    opened(q, now)
    remove(q, id, leased(q, id, text, lease_no))
    count(q, ACKED, id)
    q.dirty = true
    return 'ack ' .. text
  end
  local q = existing(keys[1])
  opened(q, now)
  if not ack_one(q, id) then no_message(q.name, text) end
  return 'ack ' .. text
end

-- VALQ MACK queue id [id ...] -> integer acked
function commands.mack(keys, argv, now)
  if #argv == 0 then err("wrong number of arguments for 'valq|mack' command") end
  local ids = {}
  for i = 1, #argv do ids[i] = parse_id(argv[i]) end
  local q = existing(keys[1])
  opened(q, now)
  local acked = 0
  for i = 1, #ids do
    if ack_one(q, ids[i]) then acked = acked + 1 end
  end
  return acked
end

-- VALQ EXTEND queue id seconds [LEASE receipt] -> "extend"
function commands.extend(keys, argv, now)
  local id, text = parse_id(argv[1])
  local seconds = parse_int(argv[2])
  local lease_no = lease_option(cursor(argv, 3), id)
  local q = existing(keys[1])
  now = opened(q, now)
  check_range('seconds', seconds, 0, 43200)
  local r = leased(q, id, text, lease_no)
  if r.state == READY then
    q.lseq = q.lseq + 1
    r.lease_no = q.lseq
  end
  move(q, id, r, INFLIGHT, now + seconds * 1000)
  q.dirty = true
  return 'extend'
end

-- VALQ NACK queue id [delay] [LEASE receipt] [REASON text] -> "nack <id>"
function commands.nack(keys, argv, now)
  local id, text = parse_id(argv[1])
  local args = cursor(argv, 2)
  local delay
  local word = args:peek_upper()
  if word and word ~= 'LEASE' and word ~= 'REASON' then
    delay = parse_int(args:next_bytes(), '0', U64_MAX, DELAY_MESSAGE)
  end
  local lease_no, reason = lease_option(args, id, true)
  local q = existing(keys[1])
  now = opened(q, now)
  local r = leased(q, id, text, lease_no)
  if r.state ~= INFLIGHT then no_lease(q.name, text, 'is not in flight') end
  if reason then
    q.nwhy, q.cold = q.nwhy + redis.call('HSET', sub(q, ':why'), id, reason), false
  end
  count(q, NACKED, id)
  q.dirty = true
  if r.attempts >= q.mda then
    move(q, id, r, DLQ, now)
    count(q, DEAD_LETTERED, id)
  else
    local due = 0
    if delay ~= nil then
      if delay > 0 then due = due_time(now, delay) end
    else
      local wait = backoff_ms(q, r.attempts)
      if wait > 0 then due = now + wait end
    end
    release(q, id, r, due)
  end
  return 'nack ' .. text
end

-- operating -------------------------------------------------------------------------------

-- VALQ GET queue id -> the message's map; NOMSG
function commands.get(keys, argv, now)
  local q = existing(keys[1])
  opened(q, now)
  local id, text = parse_id(argv[1])
  local r = record(q, id)
  if not r then no_message(q.name, text) end
  return message_info(q, id, r)
end

-- VALQ PEEK queue [READY|INFLIGHT|DELAYED|DLQ] [COUNT n] -> array of GET maps
function commands.peek(keys, argv, now)
  local q = existing(keys[1])
  opened(q, now)
  local args = cursor(argv, 1)
  local indexes = {READY = q.ready, INFLIGHT = q.lease, DELAYED = q.delay, DLQ = q.dlq}
  local index, n = q.ready, 10
  if args:remaining() > 0 and indexes[args:peek_upper()] then
    index = indexes[args:next_keyword()]
  end
  if args:remaining() > 0 then
    if args:next_keyword() ~= 'COUNT' then err('syntax error') end
    n = args:next_int('1', '1000', 'COUNT must be between 1 and 1000')
  end
  if args:remaining() > 0 then err('syntax error') end
  local out = {}
  local id_from = index == q.ready and id_of_ready or id_of
  local got = redis.call('ZRANGE', index, 0, n - 1)
  for i = 1, #got do
    local id = id_from(got[i])
    out[i] = message_info(q, id, record(q, id))
  end
  return out
end

-- VALQ CANCEL queue id -> 1; NOMSG
function commands.cancel(keys, argv, now)
  local id, text = parse_id(argv[1])
  local q = existing(keys[1])
  opened(q, now)
  local r = record(q, id)
  if not r then no_message(q.name, text) end
  remove(q, id, r)
  count(q, CANCELLED, id)
  q.dirty = true
  return 1
end

-- VALQ RESCHEDULE queue id delay -> "rescheduled <id>"
function commands.reschedule(keys, argv, now)
  local id, text = parse_id(argv[1])
  local delay = parse_int(argv[2], '0', U64_MAX, DELAY_MESSAGE)
  local q = existing(keys[1])
  now = opened(q, now)
  local r = record(q, id)
  if not r then no_message(q.name, text) end
  if r.state ~= READY and r.state ~= DELAYED then
    err('message ' .. text .. ' is ' .. STATE_NAMES[r.state] ..
        ': only ready or delayed messages can be rescheduled')
  end
  move(q, id, r, DELAYED, due_time(now, delay))
  q.dirty = true
  return 'rescheduled ' .. text
end

-- [COUNT n] [TO other] of REDRIVE -> n or nil, other or nil
local function redrive_options(argv)
  local args = cursor(argv, 1)
  local n, target_name
  while args:remaining() > 0 do
    local word = args:next_keyword()
    if word == 'COUNT' and n == nil then
      n = args:next_int('1', I64_MAX, 'COUNT must be a positive integer')
    elseif word == 'TO' and target_name == nil then
      target_name = args:next_bytes()
    else
      err('syntax error')
    end
  end
  return n, target_name
end

-- VALQ REDRIVE queue [COUNT n] [TO other] -> integer moved (TO: the other queue's key is
-- the second key; for one in another slot of a cluster, see valq_redrive_out)
function commands.redrive(keys, argv, now)
  local n, target_name = redrive_options(argv)
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
  local moving = n and math.min(n, q.ndlq) or q.ndlq
  if target ~= q then check_room(target, moving) end
  if moving == 0 then return 0 end
  local members = redis.call('ZRANGE', q.dlq, 0, moving - 1)
  for i = 1, #members do
    local id = id_of(members[i])
    local r = record(q, id)
    if target == q then
      unlink(q, id, r)
      r.attempts = 0
      link(q, id, r, READY)
      write(q, id, r)
    else
      remove(q, id, r)
      add(target, now, r.body, 0, r.priority, true)
    end
    count(q, REDRIVEN, id)
  end
  q.dirty = true
  return moving
end

-- REDRIVE ... TO a queue in another slot of a cluster, in three calls, none of which can
-- declare both queues' keys (valqd.store.valkey.redrive_across makes them):
--   1. valq_redrive_out on the source with REDRIVE's own arguments: checks them and the
--      source as valq_redrive does, changes nothing, and answers the DLQ messages that
--      would move, oldest first, as a flat array id, priority, body, id, ...;
--   2. valq_redrive_in on the target with priority, body pairs: checks that the target
--      exists and has room for all of them (as REDRIVE does, also for none), adds them
--      with new ids and answers how many: REDRIVE's reply;
--   3. valq_redrive_done on the source with the ids: removes those still in its DLQ,
--      counting them as redriven; answers how many.
-- Not atomic: a message can be redriven twice if the caller stops between 2 and 3 (it is
-- then in both queues), and one that left the DLQ meanwhile is copied all the same.

function commands.redrive_out(keys, argv, now)
  local n, target_name = redrive_options(argv)
  if target_name == nil then err('valq_redrive_out needs TO <other>') end
  local q = existing(keys[1])
  opened(q, now)
  local moving = n and math.min(n, q.ndlq) or q.ndlq
  local out = {}
  if moving == 0 then return out end
  local members = redis.call('ZRANGE', q.dlq, 0, moving - 1)
  for i = 1, #members do
    local id = id_of(members[i])
    local r = record(q, id)
    out[#out + 1] = fmt(id)
    out[#out + 1] = fmt(r.priority)
    out[#out + 1] = r.body
  end
  return out
end

function commands.redrive_in(keys, argv, now)
  if #argv % 2 ~= 0 then err('valq_redrive_in takes priority, body pairs') end
  local priorities = {}
  for i = 1, #argv, 2 do
    priorities[#priorities + 1] = parse_int(argv[i], '-2147483648', '2147483647')
  end
  local q = existing(keys[1])
  now = opened(q, now)
  check_room(q, #priorities)
  for i = 1, #priorities do add(q, now, argv[2 * i], 0, priorities[i], true) end
  return #priorities
end

function commands.redrive_done(keys, argv, now)
  local ids = {}
  for i = 1, #argv do ids[i] = parse_id(argv[i]) end
  local q = existing(keys[1])
  opened(q, now)
  local done = 0
  for i = 1, #ids do
    local r = record(q, ids[i])
    if r and r.state == DLQ then
      remove(q, ids[i], r)
      count(q, REDRIVEN, ids[i])
      done = done + 1
    end
  end
  q.dirty = true
  return done
end

-- VALQ MPOP numqueues queue [queue ...] [COUNT n] [BLOCK ms] [WITHMETA] [NOACK]
-- -> [queue, [maps]] from the first queue, left to right, that has a visible message; nil
-- when none has. The keys are the queues' keys, in order (on a cluster, all in one slot:
-- across slots a front end tries the queues one call each, see README).
function commands.mpop(keys, argv, now)
  local numqueues = parse_int(argv[1], nil, nil, 'numqueues should be greater than 0')
  if numqueues < 1 then err('numqueues should be greater than 0') end
  if numqueues > #argv - 1 then err("Number of queues can't be greater than number of args") end
  if #keys ~= numqueues then err('MPOP declares the key valq:{<queue>} of each queue, in order') end
  for i = 1, numqueues do
    if keys[i] ~= 'valq:{' .. argv[1 + i] .. '}' then
      err('MPOP declares the key valq:{<queue>} of each queue, in order')
    end
  end
  local queues = {}
  for i = 1, numqueues do queues[i] = existing(keys[i]) end
  local opts = pop_options(cursor(argv, 2 + numqueues))
  for i = 1, numqueues do
    local q = queues[i]
    local maps = pop_many(q, opened(q, now), opts.count or 1, opts.noack, opts.withmeta)
    if #maps > 0 then return {q.name, maps} end
  end
  return false
end

-- events ----------------------------------------------------------------------------------

--[[ Events: the embedded engine's live events (valqd/commands/pubsub.py), published by the
functions themselves with SPUBLISH on the channel valq:{<queue>}:events of a queue in
database 0, valq@<n>:{<queue>}:events in database n: a sharded channel in the queue's own
slot, so it works on a cluster (and on one server: SSUBSCRIBE there too). The message is
`<event> <id>` (pushed, delivered, acked, nacked, expired, dead, dropped, redriven,
cancelled) or `paused` / `resumed`, in the order the engine emits them, published when
the call ends. Only while somebody listens: events are published while the queue's clock
is before its `listen` time, which valq_listen sets; a front end relaying SUBSCRIBE
valq:<queue> calls it every few seconds while it has subscribers (and PSUBSCRIBE: for each
queue SCAN finds), so that events cost nothing when nobody listens.

valq_listen queue seconds database -> the channel: publish the queue's events for the
next `seconds` (0 .. 3600; 0 stops) on the channel of `database` (0 .. 2^31). For a queue
that does not exist yet, CREATE takes it over (within those seconds). ]]
function commands.listen(keys, argv, now)
  if #argv ~= 2 then err("wrong number of arguments for 'valq_listen'") end
  local seconds = parse_int(argv[1], '0', '3600', 'seconds must be between 0 and 3600')
  local db = parse_int(argv[2], '0', '2147483647', 'database must be between 0 and 2147483647')
  local q = queue_at(keys[1])
  if not q.exists then
    local listen_key = q.key .. ':listen'
    if seconds == 0 then
      redis.call('DEL', listen_key)
    else
      redis.call('SET', listen_key, fmt(now + seconds * 1000) .. ' ' .. fmt(db),
                 'PX', seconds * 1000)
    end
    return channel_of({key = q.key, ldb = db})
  end
  now = opened(q, now)
  q.listen, q.ldb = seconds > 0 and now + seconds * 1000 or 0, db
  q.cold, q.dirty = false, true
  return channel_of(q)
end

-- the reaper --------------------------------------------------------------------------------

--[[ Due events are applied when a call opens the queue, and by a reaper in the front ends
for queues nobody calls: leases, delays, backoffs, DLQ retention and dedup keys then take
effect on time (events published, wake markers armed, memory freed) with no client.

Every call that changes a queue's `due` bound writes it to the due index of the queue's
slot, the zset valq:due:{<tag>} (tag: two bytes whose hash slot is the queue's, so the index
shares the slot on a cluster; member the queue's name, score the bound). So a reaper needs
no list of queues: on each primary it finds the index keys (SCAN MATCH valq:due:*, at most
one per slot it owns) and calls, for each, every few hundred ms

  FCALL valq_reap 1 valq:due:{<tag>} <queues> <budget>  -> [queues, events, wait_ms]

which applies what fell due in up to <queues> (1 .. 1000) of the index's queues whose
bound has passed, at most <budget> (1 .. 100000) events in all, and answers how many queues
and events it did and in how many ms the index's next bound falls (0: more is due now,
call again; -1: the index is empty). Work per call is bounded, so a storm of expiries is
spread over calls and never holds a shard for long. Front ends coordinate by the index
itself: a call applies what is due and moves the queue's bound, so a second reaper's call
finds nothing left (cheap); several front ends poll, but do the work once. ]]
function commands.reap(keys, argv, now)
  if #argv ~= 2 then err("wrong number of arguments for 'valq_reap'") end
  local most = parse_int(argv[1], '1', '1000', 'queues must be between 1 and 1000')
  local budget = parse_int(argv[2], '1', '100000', 'budget must be between 1 and 100000')
  local index = keys[1]
  if type(index) ~= 'string' or index:sub(1, 10) ~= 'valq:due:{' then
    err('the key must be a due index valq:due:{<tag>}')
  end
  local names = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, most)
  for i = 1, #names do
    if due_index_of('valq:{' .. names[i] .. '}') ~= index then
      err("queue '" .. show(names[i]) .. "' is not of this index")
    end
  end
  local applied = 0
  for i = 1, #names do
    if applied >= budget then break end
    local q = queue_at('valq:{' .. names[i] .. '}')
    if q.exists then
      local _, done = opened(q, now, budget - applied)
      applied = applied + done
      if q.due ~= q.due_open then index_due(q) end
    else
      redis.call('ZREM', index, names[i])
    end
  end
  local head = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
  local wait = -1
  if head[1] then wait = math.max(0, tonumber(head[2]) - now) end
  return {#names, applied, wait}
end

-- blocking --------------------------------------------------------------------------------

-- valq_wake queue -> [ready, wait_ms]: applies what fell due, sets the wake marker to the
-- queue's readiness (1 element or none), and answers whether a message is ready (1 or 0)
-- and in how many ms the queue's next due event falls (a lease, delay, backoff, DLQ
-- retention or dedup key: the time at which a call may change what POP finds), -1 when
-- none; 0 when events are left over the budget (call again). For a queue that does not
-- exist: [0, -1], no marker.
function commands.wake(keys, argv, now)
  if #argv ~= 0 then err("wrong number of arguments for 'valq_wake'") end
  local q = queue_at(keys[1])
  if not q.exists then
    redis.call('DEL', q.key .. ':wake')
    return {0, -1}
  end
  now = opened(q, now)
  local at = next_due(q)
  return {(q.nready > 0 and not q.paused) and 1 or 0, at and math.max(0, at - now) or -1}
end

-- the canonical dump (valqd/engine/dump.py) -------------------------------------------------

local function escape(raw)
  return (raw:gsub('[^\33-\36\38-\126]', function(c) return string.format('%%%02X', c:byte()) end))
end

function commands.dump(keys, argv, now)
  local q = queue_at(keys[1])
  -- the wake marker as the last call left it (a check of the library, as below)
  if redis.call('LLEN', q.key .. ':wake') ~= (q.was_ready and 1 or 0) then
    err('the wake marker disagrees with the readiness')
  end
  local indexed = redis.call('ZSCORE', due_index_of(q.key), q.name)
  if (indexed and tonumber(indexed) or NEVER) ~= q.due_open then
    err('the due index disagrees with the header')
  end
  if not q.exists then return {} end
  opened(q, now)
  local name = escape(q.name)
  local lines = {table.concat({
    'queue', name, 'visibility_timeout=' .. fmt(q.vt), 'max_delivery_attempts=' .. fmt(q.mda),
    'retention_period=' .. fmt(q.rp), 'backoff=' .. q.backoff, 'backoff_base=' .. fmt(q.bbase),
    'backoff_max=' .. fmt(q.bmax), 'dedup_window=' .. fmt(q.dedupw),
    'maxlen=' .. q.maxlen, 'paused=' .. (q.paused and '1' or '0'),
    'id_sequence=' .. fmt(q.ids), 'promote_seq=' .. fmt(q.pseq),
    'lease_seq=' .. fmt(q.lseq)}, ' ')}
  local parts = {{q.ready, 'ready', id_of_ready}, {q.lease, 'inflight', id_of},
                 {q.delay, 'delayed', id_of}, {q.dlq, 'dlq', id_of}}
  for p = 1, #parts do
    local part = parts[p]
    local got = redis.call('ZRANGE', part[1], 0, -1, 'WITHSCORES')
    for i = 1, #got, 2 do
      local id = part[3](got[i])
      local r = record(q, id)
      if STATE_NAMES[r.state] ~= part[2] then
        err('record of message ' .. fmt(id) .. ' says ' .. tostring(STATE_NAMES[r.state]))
      end
      local at = part[2] == 'ready' and 0 or tonumber(got[i + 1])
      local reason = reason_of(q, id)
      lines[#lines + 1] = table.concat({
        'message', name, fmt(id), 'state=' .. part[2], 'at=' .. fmt(at),
        'attempts=' .. fmt(r.attempts), 'priority=' .. fmt(r.priority),
        'enqueued_at=' .. fmt(r.enq), 'promote_seq=' .. fmt(r.pseq),
        'lease_no=' .. fmt(r.lease_no)}, ' ') ..
        (reason and ' reason=' .. escape(reason) or '') .. ' body=' .. escape(r.body)
    end
  end
  local dedup_keys = redis.call('ZRANGE', sub(q, ':dedupx'), 0, -1, 'WITHSCORES')
  for i = 1, #dedup_keys, 2 do
    local seen = redis.call('HGET', sub(q, ':dedup'), dedup_keys[i])
    lines[#lines + 1] = 'dedup ' .. name .. ' ' .. escape(dedup_keys[i]) .. ' id=' ..
                        seen:match('^(%d+) ') .. ' expires_at=' .. fmt(tonumber(dedup_keys[i + 1]))
  end
  -- the header's sizes must agree with the indexes (a check of the library, not of a queue)
  local sizes = {{q.nready, q.ready}, {q.nlease, q.lease}, {q.ndelay, q.delay},
                 {q.ndlq, q.dlq}, {q.ndedup, sub(q, ':dedupx')}}
  for i = 1, #sizes do
    if redis.call('ZCARD', sizes[i][2]) ~= sizes[i][1] then
      err('header size ' .. fmt(sizes[i][1]) .. ' disagrees with ' .. sizes[i][2])
    end
  end
  if redis.call('HLEN', sub(q, ':why')) ~= q.nwhy then err('header nwhy disagrees') end
  if redis.call('HLEN', q.key) ~= 1 + stored_count(q) + q.ndlq then
    err('header sizes disagree with the records')
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

local function wrap(handler, woken)
  return function(keys, args)
    for i = #open_queues, 1, -1 do open_queues[i] = nil end
    for i = #events, 1, -1 do events[i] = nil end
    rearm = woken
    local ok, result = pcall(run, handler, keys, args)
    if ok or getmetatable(result) == Failure then close_queues() end
    if ok then return result end
    if getmetatable(result) == Failure then
      local text = (result.code .. ' ' .. result.message):gsub('[\r\n]', ' ')
      return redis.error_reply(text)
    end
    error(result)
  end
end

local NAMES = {'ack', 'cancel', 'create', 'delete', 'dump', 'exists', 'extend', 'get',
               'info', 'mack', 'mpop', 'mpush', 'nack', 'pause', 'peek', 'pop', 'purge',
               'push', 'redrive', 'redrive_done', 'redrive_in', 'redrive_out', 'reschedule',
               'resume', 'stats', 'update', 'wake', 'listen', 'reap'}
for i = 1, #NAMES do
  local name = NAMES[i]
  redis.register_function('valq_' .. name, wrap(commands[name], name == 'wake'))
end
-- POP and MPOP for a caller that consumed a wake marker: they re-arm it when the queue
-- is still ready
redis.register_function('valq_pop_woken', wrap(commands.pop, true))
redis.register_function('valq_mpop_woken', wrap(commands.mpop, true))

redis.register_function{function_name = 'valq_version', flags = {'no-writes'},
                        callback = function() return VERSION end}
