-- queue_read.lua: reads runs without changing anything: one run, a listing, or the depth.
--
-- KEYS        none: the queue's keys are built from ARGV[1] (see queue_lib.lua)
-- ARGV[1]     the queue's key prefix
-- ARGV[2]     op: "get" | "list" | "depth" | "prune"
-- get:    ARGV[3] run id                      -> { "ok", effects, view } or { "unknown", effects }
-- list:   ARGV[3] task ("" all), ARGV[4] state ("" all), ARGV[5] limit
--                                              -> { "ok", effects, views newest first... }
-- depth:                                       -> { "ok", effects, task, state, count, ... }
-- prune:  ARGV[3] cutoff µs, ARGV[4] most runs -> { "ok", effects, runs forgotten }: ended
--         runs that ended before the cutoff (the one op here that writes)

init(ARGV[1], '0', '0')
local op = ARGV[2]
local STATES = { 'scheduled', 'queued', 'waiting', 'running', 'succeeded', 'failed', 'skipped',
  'cancelled' }

local function tasks_of(task)
  if task ~= '' then
    return { task }
  end
  local names = redis.call('HKEYS', Q .. 'tasks')
  table.sort(names)
  return names
end

if op == 'get' then
  local v = view(ARGV[3])
  if not v then
    return reply('unknown')
  end
  return reply('ok', { v })
elseif op == 'list' then
  local limit = tonumber(ARGV[5])
  local states = STATES
  if ARGV[4] ~= '' then
    states = { ARGV[4] }
  end
  local found = {}
  for _, task in ipairs(tasks_of(ARGV[3])) do
    for _, st in ipairs(states) do
      local z = redis.call('ZREVRANGE', Q .. 'idx:' .. task .. ':' .. st, 0, limit - 1, 'WITHSCORES')
      for i = 1, #z, 2 do
        found[#found + 1] = { z[i], tonumber(z[i + 1]) }
      end
    end
  end
  table.sort(found, function(a, b) return a[2] > b[2] end)
  local views = {}
  for i = 1, math.min(limit, #found) do
    local v = view(found[i][1])
    if v then
      views[#views + 1] = v
    end
  end
  return reply('ok', views)
elseif op == 'depth' then
  local out = {}
  for _, task in ipairs(tasks_of('')) do
    for _, st in ipairs(STATES) do
      local n = redis.call('ZCARD', Q .. 'idx:' .. task .. ':' .. st)
      if n > 0 then
        out[#out + 1] = task
        out[#out + 1] = st
        out[#out + 1] = n
      end
    end
  end
  return reply('ok', out)
elseif op == 'prune' then
  local ids = redis.call('ZRANGEBYSCORE', Q .. 'ended', '-inf', '(' .. ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
  for _, id in ipairs(ids) do
    local r = redis.call('HMGET', rk(id), 'task', 'state')
    if r[1] then
      redis.call('ZREM', Q .. 'idx:' .. r[1] .. ':' .. r[2], id)
    end
    redis.call('DEL', rk(id))
    redis.call('ZREM', Q .. 'ended', id)
  end
  return reply('ok', { #ids })
end
return redis.error_reply('unknown queue op ' .. op)
