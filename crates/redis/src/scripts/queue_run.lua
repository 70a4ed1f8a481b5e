-- queue_run.lua: what workers (or an operator) do to runs: heartbeat, complete, fail, release
-- or cancel. One call carries one or more ops (a node gathers those its callers make while Redis
-- is busy: engine/batch.rs); each is applied in order, as if alone, and answered on its own.
--
-- KEYS        none: the queue's keys are built from ARGV[1] (see queue_lib.lua)
-- ARGV[1]     the queue's key prefix
-- ARGV[2]     now in µs since the Unix epoch, or "" to use Redis TIME
-- ARGV[3]     expiry slack in ms, added to every PEXPIRE of a rate state
-- ARGV[4]     n: how many ops
-- then 5 values per op i, from ARGV[5 + 5(i-1)]:
--   op ("heartbeat" | "complete" | "fail" | "release" | "cancel"), run id, the attempt the
--   caller holds ("" any; not for cancel), complete: output JSON ("" none) | fail: the error
--   message, fail: "1" to retry while attempts remain ("1:<µs>": after that wait instead of
--   the task's backoff), else "0"
--
-- Returns { "ok", effects, answer 1, answer 2, ... }, each answer { "ok", view },
-- { "unknown" } or { "invalid_state", state }; an error, with nothing done, for an unknown op.

init(ARGV[1], ARGV[2], ARGV[3])
local n = tonumber(ARGV[4])
local OPS = { heartbeat = true, complete = true, fail = true, release = true, cancel = true }
for i = 1, n do
  local op = ARGV[5 + 5 * (i - 1)]
  if not OPS[op] then
    return redis.error_reply('unknown queue op ' .. tostring(op))
  end
end
-- What is due at NOW (timers, lapsed leases) happens first, as in every queue call: a
-- worker call after its lease lapsed finds the run requeued, whether a sweep ran or not.
process_due(256)
-- The fields every op needs, then the rest of the view's: a complete answers from them.
local READ = { 'task', 'seq', 'state', 'attempt', 'max', 'lt', 'wq', 'input', 'meta', 'wo', 'ea',
  'sr', 'err', 'out', 'ca', 'ua', 'le', 'wk', 'held' }
local R_HELD = #READ

local function apply(op, id, attempt, text, retry, retry_after)
  local r = redis.call('HMGET', rk(id), unpack(READ))
  local task, seq, state = r[1], r[2], r[3]
  if not task then
    return { 'unknown' }
  end

  if op == 'cancel' then
    if FINAL[state] then
      return { 'invalid_state', state }
    end
    if state ~= 'running' then
      refund_run(id)
    end
    release_slots(id, r[R_HELD])
    set_state(id, task, seq, state, 'cancelled')
    redis.call('HDEL', rk(id), 'le', 'wo', 'wq', 'ea', 'wa', 'res', 'gate', 'rt')
    redis.call('ZREM', Q .. 'leases', id)
    if state == 'scheduled' then
      redis.call('ZREM', Q .. 'sched', sched_member(seq))
    end
    note(task, 'cancelled')
    local wk = r[7]
    if state == 'waiting' and wk then
      local head = wq_head(wk) == id
      wq_remove(wk, id)
      if head then
        -- The next run must get the key's timer (or the freed turn at its slot).
        if string.sub(wk, 1, 1) == 'r' then
          wake_rate(wk)
        else
          wake_concurrency(string.sub(wk, 3))
        end
      end
    end
    return { 'ok', view(id) }
  end

  if state ~= 'running' or (attempt ~= '' and attempt ~= r[4]) then
    return { 'invalid_state', state }
  end

  if op == 'heartbeat' then
    local until_us = NOW + tonumber(r[6])
    redis.call('HSET', rk(id), 'le', fmt(until_us), 'ua', fmt(NOW))
    redis.call('ZADD', Q .. 'leases', fmt(until_us), id)
  elseif op == 'complete' then
    release_slots(id, r[R_HELD])
    index_state(id, task, seq, state, 'succeeded')
    local now = fmt(NOW)
    if text ~= '' then
      redis.call('HSET', rk(id), 'state', 'succeeded', 'ua', now, 'out', text)
    else
      redis.call('HSET', rk(id), 'state', 'succeeded', 'ua', now)
    end
    redis.call('HDEL', rk(id), 'err', 'res', 'le')
    redis.call('ZREM', Q .. 'leases', id)
    note(task, 'succeeded')
    -- The view from what was read and written: a succeeded run derives nothing.
    local f = {}
    for i, name in ipairs(READ) do
      f[name] = r[i]
    end
    f.state, f.ua, f.err, f.le = 'succeeded', now, false, false
    if text ~= '' then
      f.out = text
    end
    return { 'ok', view_from(id, f) }
  elseif op == 'fail' then
    if retry and tonumber(r[4]) < tonumber(r[5]) then
      release_slots(id, r[R_HELD])
      redis.call('HSET', rk(id), 'err', text)
      redis.call('HDEL', rk(id), 'res', 'le', 'wk')
      redis.call('ZREM', Q .. 'leases', id)
      local d = retry_delay(id, tonumber(r[4]), retry_after)
      if d > 0 then
        schedule_retry(id, task, seq, state, NOW + d)
      else
        set_state(id, task, seq, state, 'queued')
        make_ready(id, task, false)
      end
    else
      fail_run(id, text)
    end
  elseif op == 'release' then
    release_slots(id, r[R_HELD])
    refund_run(id)
    redis.call('HSET', rk(id), 'attempt', fmt(math.max(tonumber(r[4]) - 1, 0)))
    redis.call('HDEL', rk(id), 'le', 'wk')
    redis.call('ZREM', Q .. 'leases', id)
    make_ready_first(id)
  end
  return { 'ok', view(id) }
end

local answers = {}
for i = 1, n do
  local b = 5 + 5 * (i - 1)
  local retry = ARGV[b + 4]
  answers[i] = apply(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], string.sub(retry, 1, 1) == '1',
    tonumber(string.sub(retry, 3)))
end
return reply('ok', answers)
