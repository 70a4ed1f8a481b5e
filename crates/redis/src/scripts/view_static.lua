-- view_static.lua: a static limit with its live state, for get_limit and list_limits.
--
-- KEYS[1]  the definition
-- KEYS[2]  its rate state
-- KEYS[3]  its lease set (ZSET)
-- ARGV[1]  now in µs since the Unix epoch, or "" to use Redis TIME
--
-- Returns false (no such limit), {def, "rate", limit, used, remaining, reset_after_ns},
-- {def, "conc", live leases} or {def, "bar"}.

local now = clock(ARGV[1])
local def = redis.call('GET', KEYS[1])
if not def then
  return false
end
local a = algo_of(def)
if is_rate(a) then
  local L = parse_limit(def)
  if not L then
    return { def, 'corrupt' }
  end
  local old, prior = parse_state(redis.call('GET', KEYS[2]))
  if old == false then
    return { def, 'corrupt' }
  end
  local limit, used, remaining, reset = usage(L, adopt(L, old, prior, now), now)
  return { def, 'rate', limit, used, remaining, reset }
elseif a == 'conc' then
  return { def, 'conc', redis.call('ZCOUNT', KEYS[3], '(' .. fmt(now), '+inf') }
end
return { def, 'bar' }
