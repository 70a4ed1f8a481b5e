-- queue_lease.lua: leases up to `max` runs of the given tasks to a worker, one per task in
-- turn, deciding each run's limits and taking its lease in the same step, so no node consumes
-- units for a run another node took. Fires due timers and lease expiries first.
--
-- KEYS        none: the queue's keys are built from ARGV[1] (see queue_lib.lua)
-- ARGV[1]     the queue's key prefix
-- ARGV[2]     now in µs since the Unix epoch, or "" to use Redis TIME
-- ARGV[3]     expiry slack in ms, added to every PEXPIRE of a rate state
-- ARGV[4]     worker id
-- ARGV[5]     max: most runs to lease
-- ARGV[6..]   task names
--
-- Returns { "ok", effects, more, next_deadline_us, each leased run as { id, task, input,
-- meta, attempt, lease expiry µs }... }; more is 1
-- when the step budget ran out before the ready queues were exhausted (call again).

init(ARGV[1], ARGV[2], ARGV[3])
local worker, max = ARGV[4], tonumber(ARGV[5])
local tasks = {}
for i = 6, #ARGV do
  tasks[#tasks + 1] = ARGV[i]
end
-- Bounds the time one call holds Redis: runs looked at (parked or failed ones included).
local budget = 2000

process_due(256)

-- A run's fields, read once per run looked at: what admitting and starting it need, and what
-- the worker is handed.
local ROW = { 'task', 'pol', 'rate', 'conc', 'res', 'held', 'state', 'seq', 'lt', 'wa', 'attempt',
  'input', 'meta', 'wo', 'wq', 'ea' }
-- Where ROW's fields are in a row (1 to 6 are read by name in admit).
local R_STATE, R_SEQ, R_LT, R_WA, R_ATTEMPT, R_INPUT, R_META, R_WO, R_WQ, R_EA =
  7, 8, 9, 10, 11, 12, 13, 14, 15, 16

-- Tries to start run id (whose ROW is r) now: concurrency first (nothing consumed when full),
-- then rate units (unless already reserved), then takes its slots. Returns 'ok' and whether
-- its rate units were consumed here (start marks them reserved) | nil.
local function admit(id, r)
  local task, E, C = r[1], rate_entries(r[3]), conc_entries(r[4])
  local held = lines(r[6])
  local rate_due = r[5] ~= '1' and r[2] == 'r' and #E > 0
  if rate_due then
    -- A wait queue per key: queue behind runs already parked on any of our keys.
    for _, e in ipairs(E) do
      local head = wq_head(e.wk)
      if head then
        local eta = redis.call('HGET', rk(head), 'ea')
        park(id, e.wk, e.key, eta and tonumber(eta))
        return nil
      end
    end
  end
  for _, c in ipairs(C) do
    if not contains(held, c.key) then
      local queued = redis.call('EXISTS', Q .. 'wq:' .. c.wk) == 1
      if queued or redis.call('SCARD', Q .. 'hold:' .. c.key) >= c.limit then
        park(id, c.wk, c.key, nil)
        return nil
      end
    end
  end
  if rate_due then
    local outcome, i, eta = acquire_all(task, E)
    if outcome == 'denied' then
      park(id, E[i].wk, E[i].key, eta)
      return nil
    elseif outcome == 'error' then
      fail_run(id, i)
      return nil
    end
  end
  for _, c in ipairs(C) do
    if not contains(held, c.key) then
      add_held(id, c.key)
    end
  end
  return 'ok', rate_due
end

-- Tasks whose list of runs that waited was found empty in this call: it stays empty unless a
-- run is parked or failed (freeing slots can make a waiting run ready), which forgets them all.
local rf_empty = {}

-- The next run of task admitted now, its ROW and whether admitting it consumed rate units.
local function next_admitted(task)
  while budget > 0 do
    local id
    local mixed = RPRI[task]
    if mixed == nil then
      mixed = tonumber(redis.call('HGET', Q .. 'rpri', task) or '0') > 0
      RPRI[task] = mixed
    end
    if mixed then
      id = take_ready_mixed(task)
    else
      if not rf_empty[task] then
        id = redis.call('LPOP', Q .. 'rf:' .. task)
        rf_empty[task] = not id
      end
      id = id or redis.call('LPOP', Q .. 'rn:' .. task)
    end
    if not id then
      return nil
    end
    budget = budget - 1
    local r = redis.call('HMGET', rk(id), unpack(ROW))
    if r[R_STATE] == 'queued' then
      local ok, consumed = admit(id, r)
      if ok then
        return id, r, consumed
      end
      rf_empty = {}
    end
  end
  return nil
end

-- Starts run id (whose ROW is r) for the worker, its rate units reserved when admitting it
-- consumed them; returns what the worker is handed: { id, task, input, meta, attempt, lease
-- expiry (µs) }.
local function start(id, r, consumed)
  local until_us = fmt(NOW + tonumber(r[R_LT]))
  local attempt = fmt(tonumber(r[R_ATTEMPT]) + 1)
  index_state(id, r[1], r[R_SEQ], r[R_STATE], 'running')
  if consumed then
    redis.call('HSET', rk(id), 'state', 'running', 'ua', fmt(NOW), 'attempt', attempt, 'wk',
      worker, 'le', until_us, 'res', '1')
  else
    redis.call('HSET', rk(id), 'state', 'running', 'ua', fmt(NOW), 'attempt', attempt, 'wk',
      worker, 'le', until_us)
  end
  if r[R_WO] or r[R_WQ] or r[R_EA] or r[R_WA] then
    redis.call('HDEL', rk(id), 'wo', 'wq', 'ea', 'wa')
  end
  redis.call('ZADD', Q .. 'leases', until_us, id)
  note(r[1], 'leased')
  if r[R_WA] then
    LAG[#LAG + 1] = fmt(sat(NOW - tonumber(r[R_WA])))
  end
  return { id, r[1], r[R_INPUT] or false, r[R_META] or false, attempt, until_us }
end

local out = {}
local exhausted = {}
local left = #tasks
while #out < max and left > 0 and budget > 0 do
  for i, task in ipairs(tasks) do
    if #out < max and not exhausted[i] then
      local id, r, consumed = next_admitted(task)
      if id then
        out[#out + 1] = start(id, r, consumed)
      else
        exhausted[i] = true
        left = left - 1
      end
    end
  end
end
local leased = { (budget <= 0 and #out < max) and 1 or 0, fmt(next_deadline()) }
for _, run in ipairs(out) do
  leased[#leased + 1] = run
end
return reply('ok', leased)
