-- put_limit.lua: declares or redefines a static limit. Usage is kept when the kind of limit
-- stays (rate -> rate, concurrency -> concurrency); any other change starts fresh.
--
-- KEYS[1]  the definition (a string, never expires)
-- KEYS[2]  its rate state
-- KEYS[3]  its lease set (ZSET)
-- KEYS[4]  its lease holders (HASH)
-- ARGV[1]  the new definition's spec
--
-- Returns 1.

local function kind(spec)
  local a = algo_of(spec)
  if is_rate(a) then
    return 'rate'
  end
  return a
end

local old = redis.call('GET', KEYS[1])
local new = ARGV[1]
if not old or kind(old) ~= kind(new) or kind(new) == 'bar' then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
end
-- A rate state keeps the limit it was written under: the next decision converts it.
redis.call('SET', KEYS[1], new)
return 1
