-- queue_define.lua: defines a task, declares, redefines or removes a static limit, or pauses a
-- key or ends its pause (docs/design.md §3.13), and, in the
-- same step, acts on the runs that name it (docs/design.md §3, "Limits are live"): a put
-- re-plans the runs parked on the key (the head is tried now; it becomes ready if it fits, else
-- gets its new eligible_at), a remove is refused while a run not yet ended names the key. Like
-- every queue call, it settles what is due first.
--
-- KEYS        none: the queue's keys are built from ARGV[1] (see queue_lib.lua), the limit's
--             from ARGV[6..9]
-- ARGV[1]     the queue's key prefix
-- ARGV[2]     now in µs since the Unix epoch, or "" to use Redis TIME
-- ARGV[3]     expiry slack in ms, added to every PEXPIRE of a rate state
-- ARGV[4]     op: "put" | "remove" (a limit) | "task" | "pause" | "resume" (a key)
-- ARGV[5]     the limit's key, or the task's name
-- ARGV[6]     task: its definition (JSON)
-- ARGV[6..9]  put, remove: the limit's definition, rate state, lease set and lease holders
--             (Redis keys)
-- ARGV[10]    put: the new definition's spec; remove: "1" when a task names the limit (then
--             nothing is removed: the call only counts the runs naming it)
-- ARGV[11]    put: the new definition's adaptive bounds, "<min> <max>" (docs/design.md §3.16),
--             or "" for a limit that does not adapt
-- ARGV[12]    put: "" to put it whatever is there, or "if" for a compare-and-set: put it only
--             while the definition is still ARGV[13] (its spec, "" for none) with bounds
--             ARGV[14] ("" for none). The Rust core computed it from those (a feedback's AIMD
--             step, an adaptive redefinition); on a conflict it reads the answer and tries again
-- ARGV[6..9]  pause, resume: the key's namespace ("s" | "d"), its pause key, the pause index
--             and the key's member in it
-- ARGV[10]    pause: "for" (ARGV[11] µs from now) or "until" (ARGV[11] an instant in µs)
--
-- Returns { "ok", effects, 1 } for a put, or { "conflict", effects, spec, bounds } (what is
-- there now, "" for none) when its compare-and-set found another definition; { "ok", effects, version } for a task (its new
-- definition's version); { "ok", effects, existed (0 | 1) } or
-- { "in_use", effects, runs naming it } for a remove; { "ok", effects, until (µs) } for a pause
-- (when the pause in force ends; not after now when none is); { "ok", effects, 0 | 1 (one was
-- in force) } for a resume. A pause or resume re-plans the runs parked on the key.

init(ARGV[1], ARGV[2], ARGV[3])
process_due(256)
local op, key = ARGV[4], ARGV[5]
local wk = 'rs:' .. key
if op == 'put' then
  local adaptive = Q .. 'adaptive'
  if ARGV[12] == 'if' then
    local def = redis.call('GET', ARGV[6]) or ''
    local bounds = redis.call('HGET', adaptive, key) or ''
    if def ~= ARGV[13] or bounds ~= ARGV[14] then
      return reply('conflict', { def, bounds })
    end
  end
  put_limit_def(ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
  if ARGV[11] == '' then
    redis.call('HDEL', adaptive, key)
  else
    redis.call('HSET', adaptive, key, ARGV[11])
  end
  if redis.call('EXISTS', Q .. 'wq:' .. wk) == 1 then
    wake_rate(wk)
  end
  return reply('ok', { 1 })
elseif op == 'task' then
  redis.call('HSET', Q .. 'tasks', key, ARGV[6])
  return reply('ok', { redis.call('HINCRBY', Q .. 'taskv', key, 1) })
elseif op == 'pause' or op == 'resume' then
  local pwk = 'r' .. ARGV[6] .. ':' .. key
  local out
  if op == 'pause' then
    local at = tonumber(ARGV[11])
    if ARGV[10] == 'for' then
      at = NOW + at
    end
    out = fmt(pause_set(ARGV[7], ARGV[8], ARGV[9], at, NOW, SLACK))
  else
    out = pause_clear(ARGV[7], ARGV[8], ARGV[9], NOW)
  end
  if redis.call('EXISTS', Q .. 'wq:' .. pwk) == 1 then
    wake_rate(pwk)
  end
  return reply('ok', { out })
elseif op == 'remove' then
  local users = tonumber(redis.call('HGET', Q .. 'uses', wk) or '0')
  if users > 0 or ARGV[10] == '1' then
    return reply('in_use', { users })
  end
  redis.call('HDEL', Q .. 'adaptive', key)
  return reply('ok', { remove_limit_def(ARGV[6], ARGV[7], ARGV[8], ARGV[9]) })
end
return redis.error_reply('unknown definition op ' .. op)
