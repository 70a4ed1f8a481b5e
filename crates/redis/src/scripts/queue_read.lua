-- queue_read.lua: reads runs without changing anything: one run, a listing, or the depth.
--
-- KEYS        none: the queue's keys are built from ARGV[1] (see queue_lib.lua)
-- ARGV[1]     the queue's key prefix
-- ARGV[2]     op: "get" | "explain" | "list" | "depth" | "prune"
-- get:    ARGV[3] run id                      -> { "ok", effects, view } or { "unknown", effects }
-- explain: ARGV[3] run id                     -> { "ok", effects, view, ready_ahead (-1: not
--         queued), then per distinct key the run needs, rate keys first: { kind ("r" | "c"),
--         key, ns ("s" | "d"), spec (a dynamic rate key's definition in force, "" otherwise),
--         limit (a concurrency key's in force), held (its slots held), waiting, position (-1:
--         not waiting on it), ahead ids... } } or { "unknown", effects }
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
elseif op == 'explain' then
  local id = ARGV[3]
  local v = view(id)
  if not v then
    return reply('unknown')
  end
  local r = redis.call('HMGET', rk(id), 'task', 'state', 'rate', 'conc')
  -- Where id stands in wait key wk's queue: runs that still wait on it only.
  local function place(wk)
    local ids = wq_ids(wk)
    local waiting, position, ahead = 0, -1, {}
    for _, other in ipairs(ids) do
      if waits_on(other, wk) then
        if other == id then
          position = waiting
        elseif position < 0 and #ahead < 10 then
          ahead[#ahead + 1] = other
        end
        waiting = waiting + 1
      end
    end
    if position < 0 then
      ahead = {}
    end
    return waiting, position, ahead
  end
  local ready_ahead = -1
  if r[2] == 'queued' then
    local n = 0
    local lists = {}
    for p = 4, 1, -1 do
      local f, n = ready_lists(p)
      lists[#lists + 1] = f
      lists[#lists + 1] = n
    end
    for _, list in ipairs(lists) do
      for _, other in ipairs(redis.call('LRANGE', Q .. list .. r[1], 0, -1)) do
        if other == id then
          ready_ahead = n
          break
        end
        if redis.call('HGET', rk(other), 'state') == 'queued' then
          n = n + 1
        end
      end
      if ready_ahead >= 0 then
        break
      end
    end
  end
  local out = { v, ready_ahead }
  local seen = {}
  for _, e in ipairs(rate_entries(r[3])) do
    if not seen[e.wk] then
      seen[e.wk] = true
      local waiting, position, ahead = place(e.wk)
      out[#out + 1] = { 'r', e.key, e.ns, e.ns == 'd' and e.spec or '', 0, 0, waiting, position, unpack(ahead) }
    end
  end
  for _, c in ipairs(conc_entries(r[4])) do
    if not seen[c.wk] then
      seen[c.wk] = true
      local waiting, position, ahead = place(c.wk)
      out[#out + 1] = { 'c', c.key, 'd', '', c.limit, redis.call('SCARD', Q .. 'hold:' .. c.key),
        waiting, position, unpack(ahead) }
    end
  end
  return reply('ok', out)
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
