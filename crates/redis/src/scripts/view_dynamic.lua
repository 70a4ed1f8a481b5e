-- view_dynamic.lua: a dynamic key while it has live state, for list_limits.
--
-- KEYS[1]  its rate state
-- KEYS[2]  its lease set (ZSET)
-- KEYS[3]  its lease holders (HASH; field "spec": the last request's concurrency spec)
-- ARGV[1]  now in µs since the Unix epoch, or "" to use Redis TIME
--
-- Returns false (fresh: nothing to show), {"rate", spec, limit, used, remaining,
-- reset_after_ns} or {"conc", spec, live leases}.

local now = clock(ARGV[1])
local old, s = parse_state(redis.call('GET', KEYS[1]))
if old and fresh_at(old, s) > now then
  local limit, used, remaining, reset = usage(old, s, now)
  return { 'rate', old.spec, limit, used, remaining, reset }
end
local live = redis.call('ZCOUNT', KEYS[2], '(' .. fmt(now), '+inf')
if live > 0 then
  local spec = redis.call('HGET', KEYS[3], 'spec')
  if spec then
    return { 'conc', spec, live }
  end
end
return false
