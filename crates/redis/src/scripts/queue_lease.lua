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

-- Tries to start run id now: concurrency first (nothing consumed when full), then rate units
-- (unless already reserved), then takes its slots. Returns 'ok' | nil.
local function admit(id)
  local r = redis.call('HMGET', rk(id), 'task', 'pol', 'rate', 'conc', 'res', 'held')
  local task, E, C = r[1], rate_entries(r[3]), conc_entries(r[4])
  local held = lines(r[6])
  local rate_due = r[5] ~= '1' and r[2] == 'r' and #E > 0
  if rate_due then
    -- FIFO per key: queue behind runs already parked on any of our keys.
    for _, e in ipairs(E) do
      local head = redis.call('LINDEX', Q .. 'wait:' .. e.wk, 0)
      if head then
        local eta = redis.call('HGET', rk(head), 'ea')
        park(id, e.wk, e.key, eta and tonumber(eta))
        return nil
      end
    end
  end
  for _, c in ipairs(C) do
    if not contains(held, c.key) then
      local queued = redis.call('LLEN', Q .. 'wait:' .. c.wk) > 0
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
    redis.call('HSET', rk(id), 'res', '1')
  end
  for _, c in ipairs(C) do
    if not contains(held, c.key) then
      add_held(id, c.key)
    end
  end
  return 'ok'
end

local function next_admitted(task)
  while budget > 0 do
    local id = redis.call('LPOP', Q .. 'rf:' .. task) or redis.call('LPOP', Q .. 'rn:' .. task)
    if not id then
      return nil
    end
    budget = budget - 1
    if redis.call('HGET', rk(id), 'state') == 'queued' and admit(id) then
      return id
    end
  end
  return nil
end

-- Starts run id for the worker; returns what the worker is handed: { id, task, input, meta,
-- attempt, lease expiry (µs) }, read in the same HMGET as what the start needs.
local function start(id)
  local r = redis.call('HMGET', rk(id), 'task', 'seq', 'state', 'lt', 'wa', 'attempt', 'input',
    'meta')
  local until_us = fmt(NOW + tonumber(r[4]))
  local attempt = fmt(tonumber(r[6]) + 1)
  index_state(id, r[1], r[2], r[3], 'running')
  redis.call('HSET', rk(id), 'state', 'running', 'ua', fmt(NOW), 'attempt', attempt, 'wk', worker,
    'le', until_us)
  redis.call('HDEL', rk(id), 'wo', 'wq', 'ea', 'wa')
  redis.call('ZADD', Q .. 'leases', until_us, id)
  note(r[1], 'leased')
  if r[5] then
    LAG[#LAG + 1] = fmt(sat(NOW - tonumber(r[5])))
  end
  return { id, r[1], r[7] or false, r[8] or false, attempt, until_us }
end

local out = {}
local exhausted = {}
local left = #tasks
while #out < max and left > 0 and budget > 0 do
  for i, task in ipairs(tasks) do
    if #out < max and not exhausted[i] then
      local id = next_admitted(task)
      if id then
        out[#out + 1] = start(id)
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
