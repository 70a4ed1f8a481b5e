-- queue_enqueue.lua: stores the runs of one enqueue or event, all in one step (an event's runs
-- are kept all or none). Each becomes failed (units it can never get), skipped (a duplicate,
-- or over its limits under on_limit skip: those are consumed now) or queued.
--
-- KEYS        none: the queue's keys are built from ARGV[1] (see queue_lib.lua)
-- ARGV[1]     the queue's key prefix
-- ARGV[2]     now in µs since the Unix epoch, or "" to use Redis TIME
-- ARGV[3]     expiry slack in ms, added to every PEXPIRE of a rate state
-- ARGV[4]     n: how many runs
-- then 19 values per run i, from ARGV[5 + 19(i-1)]:
--   task, on_limit ("r" requeue | "s" skip), max_attempts, lease timeout (µs), input JSON,
--   additional_metadata JSON, event JSON ("" none), rate entries, concurrency entries (the
--   formats of queue_lib.lua), idempotency key, idempotency period in ms ("" no idempotency),
--   failure ("" none: a reason found while rendering, e.g. insufficient capacity), the
--   version of the task's definition the node rendered the run with, the task's
--   `rate_limit` as rate entries ("" none: decided once, a run over it is skipped), and when
--   the run may start ("" at once, "+<µs>" after a delay, "@<µs>" at an instant: a run due
--   later is scheduled, and its rate_limit and policy are decided when it is due), and its
--   task's retry backoff ("<backoff µs> <factor> <max µs or empty> <jitter 0|1>", "" none),
--   and its priority ("" for 2), fairness key ("" none) and fairness weight ("" for 1)
--   (docs/design.md §3.15)
--
-- Returns { "ok", effects, view of run 1, view of run 2, ... }, or { "stale", effects, task }
-- with nothing stored when a run's task has been redefined since the node read it (the node
-- reads it again and retries).

init(ARGV[1], ARGV[2], ARGV[3])
local n = tonumber(ARGV[4])
-- Each task's version, read once per call (a batch of enqueues is mostly of one task).
local versions = {}
for i = 1, n do
  local b = 5 + 19 * (i - 1)
  local task, want = ARGV[b], ARGV[b + 12]
  local have = versions[task]
  if not have then
    have = redis.call('HGET', Q .. 'taskv', task)
    if not have then
      have = redis.call('HEXISTS', Q .. 'tasks', task) == 1 and '0' or false
    end
    versions[task] = have
  end
  if have ~= want then
    return reply('stale', { task })
  end
end
-- Each declared limit's definition, read once per call: nothing here changes one.
local defs = {}
local function definition(guard)
  local def = defs[guard]
  if def == nil then
    def = redis.call('GET', guard) or false
    defs[guard] = def
  end
  return def
end
-- What is due at NOW (timers, lapsed leases) happens first, as in every queue call: a
-- worker call after its lease lapsed finds the run requeued, whether a sweep ran or not.
process_due(256)
local views = {}
for i = 1, n do
  local b = 5 + 19 * (i - 1)
  local task, pol, max, lt = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local rate, conc = ARGV[b + 7], ARGV[b + 8]
  local idem_key, idem_ms, failure = ARGV[b + 9], ARGV[b + 10], ARGV[b + 11]
  local seq = redis.call('INCR', Q .. 'seq')
  local id = string.format('r%x', seq)
  local E = own_rate_entries(rate)
  local state, fields = 'queued', {}
  if failure ~= '' then
    state = 'failed'
    fields[#fields + 1] = 'err'
    fields[#fields + 1] = failure
  else
    -- A declared limit is known now: units it can never hold fail the run at once.
    for _, e in ipairs(E) do
      if e.ns == 's' and state == 'queued' then
        local def = definition(e.guard)
        if def and is_rate(algo_of(def)) then
          local L = parse_limit(def)
          if L and e.units > capacity(L) then
            state = 'failed'
            fields[#fields + 1] = 'err'
            fields[#fields + 1] = 'insufficient_capacity: rate_limits[' .. e.idx .. '] asks ' ..
                fmt(e.units) .. ' units of key ' .. string.format('%q', e.key) ..
                ', which holds at most ' .. fmt(capacity(L))
          end
        end
      end
    end
  end
  if state == 'queued' and idem_ms ~= '' then
    local k = Q .. 'idem:' .. task .. ':' .. idem_key
    if redis.call('EXISTS', k) == 1 then
      state = 'skipped'
      fields[#fields + 1] = 'sr'
      fields[#fields + 1] = 'duplicate'
      fields[#fields + 1] = 'wo'
      fields[#fields + 1] = idem_key
    elseif tonumber(idem_ms) > 0 then
      redis.call('SET', k, '1', 'PX', idem_ms)
    end
  end
  -- A run due later is scheduled: its rate_limit and its policy are decided when it is due
  -- (wake_scheduled). Until then it names its keys as any run not yet ended.
  local gate, start, due = ARGV[b + 13], ARGV[b + 14], nil
  if start ~= '' then
    due = tonumber(string.sub(start, 2))
    if string.sub(start, 1, 1) == '+' then
      due = NOW + due
    end
  end
  if state == 'queued' and due and due > NOW then
    state = 'scheduled'
    fields[#fields + 1] = 'ea'
    fields[#fields + 1] = fmt(due)
    if gate ~= '' then
      fields[#fields + 1] = 'gate'
      fields[#fields + 1] = gate
    end
  elseif state == 'queued' then
    state = pass_gate(gate, fields)
  end
  -- A run that may still start names its keys from now on: the newest definition of a
  -- dynamic key is its own, and a key whose definition this changed is re-planned below.
  local live, changed = state == 'queued' or state == 'scheduled', {}
  if live then
    changed = register(E, own_conc_entries(conc))
  end
  if state == 'queued' then
    state = apply_skip(task, pol, rate, fields)
  end
  -- One write of the whole run.
  local now = fmt(NOW)
  local all = { 'task', task, 'seq', fmt(seq), 'attempt', '0', 'max', max, 'lt', lt, 'pol', pol,
    'input', ARGV[b + 4], 'meta', ARGV[b + 5], 'rate', rate, 'conc', conc, 'ca', now,
    'state', state, 'ua', now }
  if ARGV[b + 15] ~= '' then
    all[#all + 1] = 'rp'
    all[#all + 1] = ARGV[b + 15]
  end
  for k, field in ipairs({ 'pr', 'fk', 'fw' }) do
    if ARGV[b + 15 + k] ~= '' then
      all[#all + 1] = field
      all[#all + 1] = ARGV[b + 15 + k]
    end
  end
  if ARGV[b + 6] ~= '' then
    all[#all + 1] = 'event'
    all[#all + 1] = ARGV[b + 6]
  end
  for _, f in ipairs(fields) do
    all[#all + 1] = f
  end
  redis.call('HSET', rk(id), unpack(all))
  index_state(id, task, seq, nil, state)
  note(task, 'enqueued')
  if state == 'queued' then
    make_ready(id, task, false, ARGV[b + 16])
  elseif state == 'scheduled' then
    redis.call('ZADD', Q .. 'sched', fmt(due), sched_member(seq))
  else
    note(task, state)
    if live then
      unregister(E, own_conc_entries(conc))
    end
  end
  for _, wk in ipairs(changed) do
    if string.sub(wk, 1, 2) == 'c:' then
      wake_concurrency(string.sub(wk, 3))
    else
      wake_rate(wk)
    end
  end
  -- A new run is never waiting: its view is what was just written.
  local written = {}
  for j = 1, #all, 2 do
    written[all[j]] = all[j + 1]
  end
  views[#views + 1] = view_from(id, written)
end
return reply('ok', views)
