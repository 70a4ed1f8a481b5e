-- queue_lib.lua: the run queue's layout in Redis and its state machine, the same rules as the
-- engine's in-memory queue (crates/engine/src/queue/state.rs). The second part of the
-- Functions library, after lib.lua; it reads no KEYS and no ARGV itself: each queue function
-- calls init(prefix, now, slack) first, which also resets the state of the call below (Q, NOW,
-- SLACK, the effects and the tasks made ready), kept here for the call's duration only.
--
-- The queue's Redis keys (Q is the prefix, e.g. "tollgate:q:{tollgate}:"; the hash tag puts
-- them all in one slot) are built here, not passed as KEYS: which runs a lease touches is
-- only known inside the function. That is why, in a Redis Cluster, the queue needs every key of
-- the store in one slot (the store's cluster mode: the prefix is "{name}", the first hash tag
-- of every key; README, "Redis Cluster").
--   Q..'seq'                   counter: enqueue order; run ids are "r<seq in hex>"
--   Q..'run:'..id              HASH: one run (fields below)
--   Q..'rf:'..task             LIST: ready runs of priority 2 that waited (leased before the others)
--   Q..'rn:'..task             LIST: ready runs of priority 2 in enqueue order
--   Q..'rf<p>:'..task, 'rn<p>:' the same for priority p = 1, 3, 4 (docs/design.md §3.15)
--   Q..'rpri'                  HASH: task -> entries in its lists of priorities other than 2
--                              (none: the lease looks at the priority-2 lists alone)
--   Q..'rtaken'                HASH: task -> runs taken while more than one priority was ready
--   Q..'wq:'..wk               ZSET: runs parked on wait key wk (members: their seq as 16 hex
--                              digits) by band × 2^50 + start tag, in the order they are tried
--                              (wait_queue.rs); wk is "r<ns>:<key>" for a rate key (ns "s"
--                              static, "d" dynamic) or "c:<key>" (concurrency)
--   Q..'wf:'..wk               HASH: wk's fair queueing: "v" virtual time, "n" runs taken while
--                              more than one priority waited, "f:"..fairness key -> its next
--                              start tag; deleted with the queue
--   Q..'timers'                ZSET: rate wait key -> eligible_at (µs) of its head
--   Q..'leases'                ZSET: run id -> lease expiry (µs)
--   Q..'hold:'..key            SET: runs holding a slot of concurrency key
--   Q..'idx:'..task..':'..st   ZSET: run id -> seq, per task and state (listing, depth)
--   Q..'ended'                 ZSET: run id -> when it ended (µs), for retention
--   Q..'idem:'..task..':'..k   STRING with PX: an idempotency key seen
--   Q..'uses'                  HASH: wait key -> how many entries of runs not yet ended name it
--                              (a declared limit named there cannot be removed)
--   Q..'newest'                HASH: dynamic wait key -> its newest definition, which applies to
--                              every run on the key (a rate spec, or a concurrency limit);
--                              kept while the key has users (docs/design.md §3)
--   Q..'tasks'                 HASH: task name -> definition (JSON)
--   Q..'taskv'                 HASH: task name -> its definition's version, counted up at each
--                              definition (none: defined before versions, read as "0"); a node
--                              enqueues with the version it compiled, and is told when stale
--   Q..'schema'                STRING: the version of this layout the data has (migrate)
--   Q..'ready'                 pub/sub channel: a task's ready runs went from none to some
--                              (message: the task); a long-poll waits only when it found none
--
-- Run fields: task, state, seq, attempt, max (max_attempts), lt (lease timeout µs), pol ("r"
-- requeue, "s" skip), input, meta, event (JSON texts, opaque here), rate (rate entries, one
-- per line: "ns\tunits\tspec\tguard\tstate_key\tkey\tspec_index"), conc (concurrency
-- entries, one per line: "limit\tkey"), wo (waiting_on), wq (its wait key), ea (eligible_at
-- µs), sr (skip_reason), err, out (JSON), ca / ua (created / updated µs), pr (priority, 1 to 4;
-- none: 2), fk (fairness key), fw (fairness weight; none: 1), res ("1": its rate
-- units are consumed for the coming attempt), held (concurrency keys held, one per line), le
-- (lease expiry µs), wk (worker id), wa (when a woken run became eligible, for the lag).
--
-- Every function returns its effects for the node's metrics: TR (transitions: task, name),
-- DEC (decisions: task, spec_index, "a" allowed | "d" denied) and LAG (dispatch lags, µs).

local Q, NOW, SLACK
local TR, DEC, LAG, READY
-- Each task's count of ready entries at priorities other than 2, as read in this call.
local RPRI

local function init(prefix, now_arg, slack_ms)
  Q = prefix
  NOW = clock(now_arg)
  SLACK = tonumber(slack_ms)
  TR, DEC, LAG, READY, RPRI = {}, {}, {}, {}, {}
end

local function rk(id)
  return Q .. 'run:' .. id
end

local FINAL = { succeeded = true, failed = true, skipped = true, cancelled = true }

local function note(task, what)
  TR[#TR + 1] = task
  TR[#TR + 1] = what
end

local unregister_run

-- Moves run id of task from state old to new in the indexes (old may be nil: a new run),
-- without writing the run's own state (see set_state).
local function index_state(id, task, seq, old, new)
  if old ~= new then
    if old then
      redis.call('ZREM', Q .. 'idx:' .. task .. ':' .. old, id)
    end
    redis.call('ZADD', Q .. 'idx:' .. task .. ':' .. new, seq, id)
    if FINAL[new] then
      redis.call('ZADD', Q .. 'ended', fmt(NOW), id)
      if old and not FINAL[old] then
        unregister_run(id)
      end
    end
  end
end

-- Moves run id of task from state old to new: the indexes and the run's own state.
local function set_state(id, task, seq, old, new)
  index_state(id, task, seq, old, new)
  redis.call('HSET', rk(id), 'state', new, 'ua', fmt(NOW))
end

local function lines(s)
  local out = {}
  if s then
    for line in string.gmatch(s, '[^\n]+') do
      out[#out + 1] = line
    end
  end
  return out
end

-- Parsed entry lists by the text they were parsed from, shared by every run of a definition
-- (and kept across calls, as parsed specs are): never changed once made, so callers that adjust
-- an entry copy it (rate_entries, conc_entries). Starts over past 1000 texts.
local PARSED, PARSED_N = {}, 0

local function parsed(s, parse)
  if not s or s == '' then
    return {}
  end
  local hit = PARSED[s]
  if hit then
    return hit
  end
  local out = {}
  for line in string.gmatch(s, '[^\n]+') do
    out[#out + 1] = parse(line)
  end
  if PARSED_N >= 1000 then
    PARSED, PARSED_N = {}, 0
  end
  PARSED[s] = out
  PARSED_N = PARSED_N + 1
  return out
end

local function parse_rate_line(line)
  local ns, units, spec, guard, st, key, idx = string.match(line,
    '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$')
  return {
    ns = ns, units = tonumber(units), spec = spec, guard = guard, st = st, key = key,
    pk = pause_key(st, key),
    idx = idx, wk = 'r' .. ns .. ':' .. key,
  }
end

local function parse_conc_line(line)
  local limit, key = string.match(line, '^([^\t]*)\t(.*)$')
  return { limit = tonumber(limit), key = key, wk = 'c:' .. key }
end

-- A run's rate entries as it was rendered (its own definitions of dynamic keys). Read only.
local function own_rate_entries(s)
  return parsed(s, parse_rate_line)
end

-- A run's concurrency entries as it was rendered. Read only.
local function own_conc_entries(s)
  return parsed(s, parse_conc_line)
end

-- A copy of entry e with field k set to v.
local function with(e, k, v)
  local c = {}
  for f, x in pairs(e) do
    c[f] = x
  end
  c[k] = v
  return c
end

-- A run's rate entries as they apply now: a dynamic key with its newest definition.
local function rate_entries(s)
  local own = own_rate_entries(s)
  local out = {}
  for i, e in ipairs(own) do
    if e.ns == 'd' then
      out[i] = with(e, 'spec', redis.call('HGET', Q .. 'newest', e.wk) or e.spec)
    else
      out[i] = e
    end
  end
  return out
end

-- A run's concurrency entries as they apply now: each key with its newest limit.
local function conc_entries(s)
  local own = own_conc_entries(s)
  local out = {}
  for i, c in ipairs(own) do
    local newest = redis.call('HGET', Q .. 'newest', c.wk)
    out[i] = newest and with(c, 'limit', tonumber(newest)) or c
  end
  return out
end

-- A run that may still start names its keys from now on; its definitions of dynamic keys
-- become the newest. Returns the wait keys whose definition this changed while other runs
-- used them, to re-plan (the rules of QueueState::register in the engine).
local function register(E, C)
  local changed, seen = {}, {}
  local function use(wk, def)
    local had = redis.call('HINCRBY', Q .. 'uses', wk, 1) > 1
    if def then
      local old = redis.call('HGET', Q .. 'newest', wk)
      redis.call('HSET', Q .. 'newest', wk, def)
      if had and old ~= def and not seen[wk] then
        seen[wk] = true
        changed[#changed + 1] = wk
      end
    end
  end
  for _, e in ipairs(E) do
    use(e.wk, e.ns == 'd' and e.spec or nil)
  end
  for _, c in ipairs(C) do
    use(c.wk, fmt(c.limit))
  end
  return changed
end

-- A run that named the keys of E and C ended: each loses a user.
local function unregister(E, C)
  local function drop(wk)
    if redis.call('HINCRBY', Q .. 'uses', wk, -1) <= 0 then
      redis.call('HDEL', Q .. 'uses', wk)
      redis.call('HDEL', Q .. 'newest', wk)
    end
  end
  for _, e in ipairs(E) do
    drop(e.wk)
  end
  for _, c in ipairs(C) do
    drop(c.wk)
  end
end

unregister_run = function(id)
  local r = redis.call('HMGET', rk(id), 'rate', 'conc')
  unregister(own_rate_entries(r[1]), own_conc_entries(r[2]))
end

local function contains(list, x)
  for _, y in ipairs(list) do
    if y == x then
      return true
    end
  end
  return false
end

-- Decides every rate entry at once and writes only if all are admitted (acquire_keys, as a
-- direct acquire does), and notes the decisions. Returns 'ok' | 'denied', i (first denied), eta
-- (µs) | 'error', message.
local function acquire_all(task, E)
  local allowed, D = acquire_keys(E, NOW, SLACK)
  if allowed == nil then
    local err = D
    local e = E[err[2]]
    if err[3] == 'unknown' then
      return 'error', 'limit ' .. string.format('%q', e.key) .. ' is no longer defined'
    elseif err[3] == 'wrong' then
      return 'error', 'limit ' .. string.format('%q', e.key) .. ' is no longer a rate limit'
    elseif err[3] == 'capacity' then
      return 'error', 'insufficient_capacity: rate_limits[' .. e.idx .. '] asks ' .. fmt(e.units) ..
          ' units of key ' .. string.format('%q', e.key) .. ', which holds at most ' .. fmt(err[4])
    end
    return 'error', 'the state of limit ' .. string.format('%q', e.key) .. ' is corrupt'
  end
  if not allowed then
    local first
    for i, e in ipairs(E) do
      if D[i][1] == 0 then
        first = first or i
        DEC[#DEC + 1] = task
        DEC[#DEC + 1] = e.idx
        DEC[#DEC + 1] = 'd'
      end
    end
    return 'denied', first, NOW + math.ceil(tonumber(D[first][4]) / 1000)
  end
  for _, e in ipairs(E) do
    DEC[#DEC + 1] = task
    DEC[#DEC + 1] = e.idx
    DEC[#DEC + 1] = 'a'
  end
  return 'ok'
end

-- Gives a run's consumed rate units back (release, cancel before it ran).
local function refund_run(id)
  local r = redis.call('HMGET', rk(id), 'res', 'pol', 'rate')
  if r[1] == '1' and r[2] == 'r' then
    for i, e in ipairs(rate_entries(r[3])) do
      local L, old, prior, err = resolve(i, e.ns, e.guard, e.st, e.spec, NOW)
      -- A limit that is gone or unreadable keeps nothing to refund: conservative.
      if not err then
        store_state(e.st, L, refund(L, adopt(L, old, prior, NOW), NOW, e.units), NOW, SLACK)
      end
    end
  end
  redis.call('HDEL', rk(id), 'res')
end

-- The member of a scheduled run in Q..'sched' (scored by when it is due): its seq as 16 hex
-- digits, so that runs due at the same instant come up in enqueue order, as in the engine.
local function sched_member(seq)
  return string.format('%016x', tonumber(seq))
end

-- The ready lists of priority p: runs that waited, then the others.
local function ready_lists(p)
  if p == 2 then
    return 'rf:', 'rn:'
  end
  return 'rf' .. p .. ':', 'rn' .. p .. ':'
end

-- `pr`: the run's priority when the caller has it at hand ("" for 2), else read.
local function make_ready(id, task, first, pr)
  if pr == nil then
    pr = redis.call('HGET', rk(id), 'pr')
  end
  local p = tonumber(pr ~= '' and pr or '2')
  local list, other = ready_lists(p)
  if not first then
    list, other = other, list
  end
  if p ~= 2 then
    redis.call('HINCRBY', Q .. 'rpri', task, 1)
    RPRI[task] = nil
  end
  -- Announced only when the task had no ready run: a long-poll waits only after finding none,
  -- and one woken by the first leases until none is left (or is told there may be more).
  if redis.call('RPUSH', Q .. list .. task, id) == 1
    and (p ~= 2 or redis.call('LLEN', Q .. other .. task) == 0) then
    READY[task] = true
  end
end

-- The next ready run of task when it has runs of priorities other than 2 (ReadyQueue::take in
-- the engine): entries of runs no longer queued are dropped from the front of every list; the
-- most urgent priority's next run is taken, or, on every tenth turn while more than one
-- priority has ready runs, the oldest of the priorities' next runs.
local function take_ready_mixed(task)
  local heads = {}
  for p = 4, 1, -1 do
    local f, n = ready_lists(p)
    while true do
      local list = Q .. f .. task
      local id = redis.call('LINDEX', list, 0)
      if not id then
        list = Q .. n .. task
        id = redis.call('LINDEX', list, 0)
      end
      if not id then
        break
      end
      if redis.call('HGET', rk(id), 'state') == 'queued' then
        heads[#heads + 1] = { id, list, p, tonumber(redis.call('HGET', rk(id), 'seq')) }
        break
      end
      redis.call('LPOP', list)
      if p ~= 2 then
        redis.call('HINCRBY', Q .. 'rpri', task, -1)
      end
    end
  end
  local chosen = heads[1]
  if #heads > 1 then
    local n = redis.call('HINCRBY', Q .. 'rtaken', task, 1) - 1
    if n % 10 == 9 then
      for _, h in ipairs(heads) do
        if h[4] < chosen[4] then
          chosen = h
        end
      end
    end
  end
  if not chosen then
    return nil
  end
  redis.call('LPOP', chosen[2])
  if chosen[3] ~= 2 then
    redis.call('HINCRBY', Q .. 'rpri', task, -1)
  end
  return chosen[1]
end

-- Wait queues (wait_queue.rs in the engine, docs/design.md §3.15): priority first (band 0 is
-- priority 4), then fairness keys in turn (start-time fair queueing: a run starts at the later
-- of the queue's virtual time and its fairness key's next start tag, which then moves on by
-- 1000 / weight rounded up), then arrival; while more than one priority waits, every tenth run
-- taken is the oldest of the priorities' first runs.
local BAND = 1125899906842624 -- 2^50: bands apart in a score

local function run_of(member)
  return string.format('r%x', tonumber(member, 16))
end

local function band_of(score)
  return math.floor(tonumber(score) / BAND)
end

-- Parks run id in wk's queue; whether the queue was empty.
local function wq_push(id, wk)
  local r = redis.call('HMGET', rk(id), 'seq', 'pr', 'fk', 'fw')
  local z, f = Q .. 'wq:' .. wk, Q .. 'wf:' .. wk
  local was_empty = redis.call('EXISTS', z) == 0
  local flow = 'f:' .. (r[3] or '')
  local h = redis.call('HMGET', f, 'v', flow)
  local start = math.max(tonumber(h[1] or '0'), tonumber(h[2] or '0'))
  redis.call('HSET', f, flow, fmt(start + math.ceil(1000 / tonumber(r[4] or '1'))))
  redis.call('ZADD', z, fmt((4 - tonumber(r[2] or '2')) * BAND + start), sched_member(r[1]))
  return was_empty
end

-- The run tried next on wk, or nil.
local function wq_head(wk)
  local z = Q .. 'wq:' .. wk
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if not first[1] then
    return nil
  end
  local last = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
  local b1, b2 = band_of(first[2]), band_of(last[2])
  if b1 ~= b2 and tonumber(redis.call('HGET', Q .. 'wf:' .. wk, 'n') or '0') % 10 == 9 then
    local best
    for b = b1, b2 do
      local m = redis.call('ZRANGEBYSCORE', z, fmt(b * BAND), '(' .. fmt((b + 1) * BAND), 'LIMIT', 0, 1)[1]
      if m and (not best or m < best) then
        best = m
      end
    end
    return run_of(best)
  end
  return run_of(first[1])
end

-- Forgets wk's fair queueing once its queue is empty (its turns start afresh).
local function wq_settle(wk)
  if redis.call('EXISTS', Q .. 'wq:' .. wk) == 0 then
    redis.call('DEL', Q .. 'wf:' .. wk)
  end
end

-- Takes run id out of wk's queue, its turn come (admitted, or moved to another key).
local function wq_take(wk, id)
  local z, f = Q .. 'wq:' .. wk, Q .. 'wf:' .. wk
  local member = sched_member(redis.call('HGET', rk(id), 'seq'))
  local score = redis.call('ZSCORE', z, member)
  if not score then
    return
  end
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  local last = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
  redis.call('ZREM', z, member)
  local tag = tonumber(score) - band_of(score) * BAND
  if tag > tonumber(redis.call('HGET', f, 'v') or '0') then
    redis.call('HSET', f, 'v', fmt(tag))
  end
  if band_of(first[2]) ~= band_of(last[2]) then
    redis.call('HINCRBY', f, 'n', 1)
  end
  wq_settle(wk)
end

-- Takes run id out of wk's queue without a turn (cancelled).
local function wq_remove(wk, id)
  redis.call('ZREM', Q .. 'wq:' .. wk, sched_member(redis.call('HGET', rk(id), 'seq')))
  wq_settle(wk)
end

-- The runs parked on wk, in order (the every-tenth turn aside).
local function wq_ids(wk)
  local out = {}
  for i, m in ipairs(redis.call('ZRANGE', Q .. 'wq:' .. wk, 0, -1)) do
    out[i] = run_of(m)
  end
  return out
end

local function make_ready_first(id)
  local r = redis.call('HMGET', rk(id), 'task', 'seq', 'state')
  set_state(id, r[1], r[2], r[3], 'queued')
  redis.call('HDEL', rk(id), 'wo', 'wq', 'ea')
  make_ready(id, r[1], true)
end

-- A new run's (or a due scheduled run's) rate_limit (Inngest's), decided once whatever the
-- policy: 'queued' when it admits the run (the units kept), 'skipped' or 'failed' with the
-- fields that say why appended to `fields`. `gate` is rate entries, '' for none.
local function pass_gate(gate, fields)
  if gate == nil or gate == '' then
    return 'queued'
  end
  local G = own_rate_entries(gate)
  local allowed, D = acquire_keys(G, NOW, SLACK)
  if allowed == false then
    local first = 1
    for i = 1, #G do
      if D[i][1] == 0 then
        first = i
        break
      end
    end
    fields[#fields + 1] = 'sr'
    fields[#fields + 1] = 'rate_limited'
    fields[#fields + 1] = 'wo'
    fields[#fields + 1] = G[first].key
    return 'skipped'
  elseif allowed == nil then
    fields[#fields + 1] = 'err'
    fields[#fields + 1] = 'the state of limit ' .. string.format('%q', G[D[2]].key) ..
        ' cannot be used: ' .. D[3]
    return 'failed'
  end
  return 'queued'
end

-- on_limit skip for a queued run: its limits are consumed now, a run over them never runs.
-- 'queued' (units reserved), 'skipped' or 'failed', with the fields appended to `fields`.
local function apply_skip(task, pol, rate, fields)
  if pol ~= 's' or #own_rate_entries(rate) == 0 then
    return 'queued'
  end
  local outcome, j = acquire_all(task, rate_entries(rate))
  if outcome == 'ok' then
    fields[#fields + 1] = 'res'
    fields[#fields + 1] = '1'
    return 'queued'
  elseif outcome == 'denied' then
    fields[#fields + 1] = 'sr'
    fields[#fields + 1] = 'rate_limited'
    fields[#fields + 1] = 'wo'
    fields[#fields + 1] = own_rate_entries(rate)[j].key
    return 'skipped'
  end
  fields[#fields + 1] = 'err'
  fields[#fields + 1] = j
  return 'failed'
end

-- The longest wait before a retry: a year, in µs (the engine's MAX_RETRY_DELAY_MICROS).
local MAX_RETRY_DELAY = 31536000000000

-- How long a retry of run id after attempt `attempt` waits, µs: `override` when given (a
-- worker's retry_after), else its task's backoff kept with the run ('rp': "<backoff µs>
-- <factor> <max µs or empty> <jitter 0|1>"): backoff after the first attempt, factor times
-- longer each time, at most max; 0 to queue it at once.
local function retry_delay(id, attempt, override)
  if override then
    return override
  end
  local rp = redis.call('HGET', rk(id), 'rp')
  local b, f, m, j = string.match(rp or '', '^(%d+) (%d+) (%d*) ([01])$')
  if not b then
    return 0
  end
  local cap = MAX_RETRY_DELAY
  if m ~= '' and tonumber(m) < cap then
    cap = tonumber(m)
  end
  local d = math.min(tonumber(b), cap)
  for _ = 2, attempt do
    if d >= cap then
      break
    end
    d = math.min(d * tonumber(f), cap)
  end
  if j == '1' then
    -- Between half of it and all of it, spread by the run and the instant.
    local half = math.floor(d / 2)
    local seq = tonumber(redis.call('HGET', rk(id), 'seq')) or 0
    d = half + (seq * 2654435761 + attempt * 40503 + NOW) % (d - half + 1)
  end
  return d
end

-- Run id (in state old) waits out a retry's backoff until `at`, scheduled; queued when due.
local function schedule_retry(id, task, seq, old, at)
  set_state(id, task, seq, old, 'scheduled')
  redis.call('HSET', rk(id), 'ea', fmt(at), 'rt', '1')
  redis.call('ZADD', Q .. 'sched', fmt(at), sched_member(seq))
end

-- A scheduled run that is due: admitted as a new run would be (its rate_limit, then its
-- policy), then queued, skipped or failed.
local function wake_scheduled(id)
  local r = redis.call('HMGET', rk(id), 'task', 'seq', 'state', 'pol', 'rate', 'gate', 'rt')
  if r[3] ~= 'scheduled' then
    return
  end
  local task, seq = r[1], r[2]
  if r[7] == '1' then
    -- A retry that waited out its backoff is queued.
    redis.call('HDEL', rk(id), 'ea', 'rt')
    set_state(id, task, seq, 'scheduled', 'queued')
    make_ready(id, task, false)
    return
  end
  local fields = {}
  local state = pass_gate(r[6], fields)
  if state == 'queued' then
    state = apply_skip(task, r[4], r[5], fields)
  end
  redis.call('HDEL', rk(id), 'ea', 'gate')
  if #fields > 0 then
    redis.call('HSET', rk(id), unpack(fields))
  end
  set_state(id, task, seq, 'scheduled', state)
  if state == 'queued' then
    make_ready(id, task, false)
  else
    note(task, state)
  end
end

local wake_concurrency

-- Frees the concurrency slots run id holds and hands each to the head of its FIFO. held: the
-- run's 'held' field when the caller has read it (false: none), else nil (read here).
local function release_slots(id, held)
  if held == nil then
    held = redis.call('HGET', rk(id), 'held')
  end
  if not held then
    return
  end
  redis.call('HDEL', rk(id), 'held')
  for _, key in ipairs(lines(held)) do
    redis.call('SREM', Q .. 'hold:' .. key, id)
    wake_concurrency(key)
  end
end

local function add_held(id, key)
  local held = redis.call('HGET', rk(id), 'held')
  if held then
    held = held .. '\n' .. key
  else
    held = key
  end
  redis.call('HSET', rk(id), 'held', held)
  redis.call('SADD', Q .. 'hold:' .. key, id)
end

local function fail_run(id, reason)
  release_slots(id)
  local r = redis.call('HMGET', rk(id), 'task', 'seq', 'state')
  set_state(id, r[1], r[2], r[3], 'failed')
  redis.call('HSET', rk(id), 'err', reason)
  redis.call('HDEL', rk(id), 'wo', 'wq', 'ea', 'le', 'res', 'wa')
  redis.call('ZREM', Q .. 'leases', id)
  note(r[1], 'failed')
end

-- Parks run id at the back of wait key wk's FIFO; eta (µs) is known for rate keys.
local function park(id, wk, key, eta)
  -- A parked run holds no slot: never one while waiting for another (no hold-and-wait
  -- deadlock), nor while waiting for a rate limit (it would shut out every other user of
  -- the key for as long as the limit keeps it).
  release_slots(id)
  local r = redis.call('HMGET', rk(id), 'task', 'seq', 'state')
  set_state(id, r[1], r[2], r[3], 'waiting')
  redis.call('HSET', rk(id), 'wo', key, 'wq', wk)
  if eta then
    redis.call('HSET', rk(id), 'ea', fmt(eta))
  else
    redis.call('HDEL', rk(id), 'ea')
  end
  redis.call('HDEL', rk(id), 'wa')
  note(r[1], 'parked')
  if wq_push(id, wk) then
    if eta then
      redis.call('ZADD', Q .. 'timers', fmt(eta), wk)
    end
  elseif wq_head(wk) == id then
    -- It goes ahead of the runs parked before it: it is tried when the key's timer fires,
    -- and shows that instant.
    local t = redis.call('ZSCORE', Q .. 'timers', wk)
    if t then
      redis.call('HSET', rk(id), 'ea', t)
    end
  end
end

-- Whether run id still waits on wk (a cancelled or ended run is skipped lazily).
local function waits_on(id, wk)
  local r = redis.call('HMGET', rk(id), 'state', 'wq')
  return r[1] == 'waiting' and r[2] == wk
end

-- Hands free slots of concurrency key to the runs at the head of its FIFO.
wake_concurrency = function(key)
  local wk = 'c:' .. key
  while true do
    local id = wq_head(wk)
    if not id then
      return
    end
    if not waits_on(id, wk) then
      wq_take(wk, id)
    else
      local limit = 0
      for _, c in ipairs(conc_entries(redis.call('HGET', rk(id), 'conc'))) do
        if c.key == key then
          limit = c.limit
        end
      end
      if redis.call('SCARD', Q .. 'hold:' .. key) >= limit then
        return
      end
      wq_take(wk, id)
      add_held(id, key)
      -- Eligible from the moment its slot was freed.
      redis.call('HSET', rk(id), 'wa', fmt(NOW))
      make_ready_first(id)
    end
  end
end

-- Rate key wk's timer fired: reserve for its head, then the next, until one is denied.
local function wake_rate(wk)
  -- Whatever timer the key held is spent: a head denied below sets the next one.
  redis.call('ZREM', Q .. 'timers', wk)
  while true do
    local id = wq_head(wk)
    if not id then
      return
    end
    if not waits_on(id, wk) then
      wq_take(wk, id)
    else
      local r = redis.call('HMGET', rk(id), 'task', 'res', 'rate', 'ea')
      local eligible = r[4] or fmt(NOW)
      if r[2] == '1' then
        -- Already holds its units (parked on concurrency before, then re-parked).
        wq_take(wk, id)
        redis.call('HSET', rk(id), 'wa', eligible)
        make_ready_first(id)
      else
        local E = rate_entries(r[3])
        local outcome, i, eta = acquire_all(r[1], E)
        if outcome == 'ok' then
          wq_take(wk, id)
          redis.call('HSET', rk(id), 'res', '1', 'wa', eligible)
          make_ready_first(id)
        elseif outcome == 'denied' then
          if E[i].wk == wk then
            redis.call('HSET', rk(id), 'ea', fmt(eta))
            redis.call('ZADD', Q .. 'timers', fmt(eta), wk)
            return
          end
          wq_take(wk, id)
          park(id, E[i].wk, E[i].key, eta)
        else
          wq_take(wk, id)
          fail_run(id, i)
        end
      end
    end
  end
end

-- A lease lapsed: the run goes back to the front of its queue, or fails on its last attempt.
local function expire(id)
  release_slots(id)
  local r = redis.call('HMGET', rk(id), 'task', 'attempt', 'max', 'seq', 'state')
  redis.call('HDEL', rk(id), 'res', 'le', 'wk')
  redis.call('ZREM', Q .. 'leases', id)
  note(r[1], 'expired')
  if tonumber(r[2]) >= tonumber(r[3]) then
    fail_run(id, 'lease expired on attempt ' .. r[2] .. ' of ' .. r[3] ..
      ': the worker stopped heartbeating')
  else
    redis.call('HSET', rk(id), 'err', 'lease expired on attempt ' .. r[2])
    local d = retry_delay(id, tonumber(r[2]), nil)
    if d > 0 then
      schedule_retry(id, r[1], r[4], r[5], NOW + d)
    else
      make_ready_first(id)
    end
  end
end

-- The version of the queue's layout that the functions read and write.
local SCHEMA = '3'

-- Prefixes this load of the library has found (or made) current: the schema is read once per
-- prefix per load, not on every call (a load starts empty: after a restart, FUNCTION LOAD or a
-- failover it is read again). Data an older version writes after that is not looked at again;
-- nodes of versions with different layouts cannot share a prefix anyway (docs/design.md §8.4).
local CURRENT = {}

-- Brings a deployment written by an earlier version up to date, once (Q..'schema' says which
-- version its data has): version 1 kept no 'uses' and 'newest', so they are rebuilt from the
-- runs not yet ended, oldest first, so that the newest definition of each dynamic key wins;
-- versions 1 and 2 kept each wait queue as a FIFO list (Q..'wait:'..wk), moved here into the
-- sorted sets of version 3 in the same order.
local function migrate()
  if CURRENT[Q] then
    return
  end
  if redis.call('GET', Q .. 'schema') == SCHEMA then
    CURRENT[Q] = true
    return
  end
  redis.call('DEL', Q .. 'uses', Q .. 'newest')
  local live = {}
  for _, task in ipairs(redis.call('HKEYS', Q .. 'tasks')) do
    for _, st in ipairs({ 'scheduled', 'queued', 'waiting', 'running' }) do
      local z = redis.call('ZRANGE', Q .. 'idx:' .. task .. ':' .. st, 0, -1, 'WITHSCORES')
      for i = 1, #z, 2 do
        live[#live + 1] = { z[i], tonumber(z[i + 1]) }
      end
    end
  end
  table.sort(live, function(a, b) return a[2] < b[2] end)
  local lists = {}
  for _, run in ipairs(live) do
    local r = redis.call('HMGET', rk(run[1]), 'rate', 'conc', 'state', 'wq')
    register(own_rate_entries(r[1]), own_conc_entries(r[2]))
    if r[3] == 'waiting' and r[4] and not lists[r[4]] then
      lists[r[4]] = true
      local old = Q .. 'wait:' .. r[4]
      for _, id in ipairs(redis.call('LRANGE', old, 0, -1)) do
        if waits_on(id, r[4]) then
          wq_push(id, r[4])
        end
      end
      redis.call('DEL', old)
    end
  end
  redis.call('SET', Q .. 'schema', SCHEMA)
  CURRENT[Q] = true
end

-- Fires due timers and lease expiries, at most `budget` of each.
-- Every writing function calls it first, so it also brings data written by an earlier version up
-- to date before anything reads it (migrate: one GET when there is nothing to do).
local function process_due(budget)
  migrate()
  for _, wk in ipairs(redis.call('ZRANGEBYSCORE', Q .. 'timers', '-inf', fmt(NOW), 'LIMIT', 0, budget)) do
    wake_rate(wk)
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', Q .. 'leases', '-inf', fmt(NOW), 'LIMIT', 0, budget)) do
    local r = redis.call('HMGET', rk(id), 'state', 'le')
    if r[1] == 'running' and r[2] and tonumber(r[2]) <= NOW then
      expire(id)
    else
      redis.call('ZREM', Q .. 'leases', id)
    end
  end
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', Q .. 'sched', '-inf', fmt(NOW), 'LIMIT', 0, budget)) do
    redis.call('ZREM', Q .. 'sched', m)
    wake_scheduled(string.format('r%x', tonumber(m, 16)))
  end
end

-- The earliest timer, lease expiry or scheduled run (µs), or -1.
local function next_deadline()
  local at = -1
  for _, z in ipairs({ 'timers', 'leases', 'sched' }) do
    local first = redis.call('ZRANGE', Q .. z, 0, 0, 'WITHSCORES')
    if first[2] and (at < 0 or tonumber(first[2]) < at) then
      at = tonumber(first[2])
    end
  end
  return at
end

-- Announces the tasks that have new ready runs, to every node's long-polls.
local function publish_ready()
  for task in pairs(READY) do
    redis.call('PUBLISH', Q .. 'ready', task)
  end
end

-- A run as the API shows it: the fields RunView reads, in this order.
local VIEW = { 'task', 'state', 'input', 'meta', 'attempt', 'max', 'wo', 'ea', 'sr', 'err', 'out',
  'ca', 'ua', 'le', 'wk', 'pr' }

local VIEW_WQ = #VIEW + 1
VIEW[VIEW_WQ] = 'wq'
local VIEW_EA = 8

-- A run parked behind a rate key's head shows the head's eligible_at, the earliest it could
-- start: derived here, so it is never stale.
local function view(id)
  local r = redis.call('HMGET', rk(id), unpack(VIEW))
  if not r[1] then
    return nil
  end
  local wq = r[VIEW_WQ]
  if r[2] == 'waiting' and wq and string.sub(wq, 1, 1) == 'r' then
    local head = wq_head(wq)
    if head and head ~= id then
      r[VIEW_EA] = redis.call('HGET', rk(head), 'ea')
    end
  end
  local out = { id }
  for i = 1, VIEW_WQ - 1 do
    out[#out + 1] = r[i] or false
  end
  return out
end

-- The view of run id from fields this call has just written (field -> value), without reading
-- them back: for a run that is not waiting, the one case where view derives a field.
local function view_from(id, fields)
  local out = { id }
  for i = 1, VIEW_WQ - 1 do
    out[#out + 1] = fields[VIEW[i]] or false
  end
  return out
end

-- The reply of every queue function: { status, effects, payload... }.
local function reply(status, payload)
  publish_ready()
  local out = { status, { TR, DEC, LAG } }
  for _, p in ipairs(payload or {}) do
    out[#out + 1] = p
  end
  return out
end
