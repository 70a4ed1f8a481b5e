-- lease.lua: concurrency leases of one key: acquire, renew or release one lease.
--
-- KEYS[1]  the key's guard: its definition (static keys, a string) or its rate state (dynamic
--          keys: a dynamic key with live rate state is not a concurrency limit)
-- KEYS[2]  the leases: ZSET of lease id -> expires_at (µs)
-- KEYS[3]  the holders: HASH of "h:<lease id>" -> holder, and for dynamic keys "spec" -> the
--          last request's concurrency spec. KEYS[2] and KEYS[3] expire with the last lease.
-- ARGV[1]  now in µs since the Unix epoch, or "" to use Redis TIME
-- ARGV[2]  operation: "acquire", "renew" or "release"
-- ARGV[3]  namespace: "s" static or "d" dynamic
-- ARGV[4]  lease id
-- ARGV[5]  holder (acquire)
-- ARGV[6]  time to live in µs, or "" for the limit's lease_ttl (acquire, renew)
-- ARGV[7]  the concurrency spec "conc <limit> <ttl_ns> <ttl_us>" (dynamic; "" for static)
-- ARGV[8]  expiry slack in ms, added to every PEXPIRE
--
-- Returns acquire: {1, acquired, limit, remaining, expires_at_us, retry_after_us};
-- renew: {1, expires_at_us}; release: {1, was_live}; or {-1, code, detail} with code
-- "unknown" (no static limit), "wrong" (detail: the algorithm found), "not_held", "corrupt".

local now = clock(ARGV[1])
local op, ns, id = ARGV[2], ARGV[3], ARGV[4]
local slack = tonumber(ARGV[8])
local C
if ns == 's' then
  local def = redis.call('GET', KEYS[1])
  if not def then
    return { -1, 'unknown', '' }
  end
  local a = algo_of(def)
  if a ~= 'conc' then
    return { -1, 'wrong', a or '' }
  end
  C = parse_conc(def)
else
  local old, s = parse_state(redis.call('GET', KEYS[1]))
  if old == false then
    return { -1, 'corrupt', 'state' }
  end
  if old and fresh_at(old, s) > now then
    return { -1, 'wrong', old.a }
  end
  C = parse_conc(ARGV[7])
end
if not C then
  return { -1, 'corrupt', 'definition' }
end

-- Lapsed leases free their own slots only.
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
for _, lapsed in ipairs(dead) do
  redis.call('ZREM', KEYS[2], lapsed)
  redis.call('HDEL', KEYS[3], 'h:' .. lapsed)
end

local ttl = C.ttl
if ARGV[6] ~= '' then
  ttl = tonumber(ARGV[6])
end

-- Stores what is left: the lease set expires with its last lease.
local function settle()
  local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if #top == 0 then
    redis.call('DEL', KEYS[3])
    return
  end
  local ms = fmt(ttl_ms(tonumber(top[2]), now, slack))
  if ns == 'd' then
    -- Last writer's parameters; a key holding leases has no rate state.
    redis.call('HSET', KEYS[3], 'spec', C.spec)
    redis.call('DEL', KEYS[1])
  end
  redis.call('PEXPIRE', KEYS[2], ms)
  redis.call('PEXPIRE', KEYS[3], ms)
end

local held = redis.call('ZSCORE', KEYS[2], id)
if op == 'acquire' then
  local n = redis.call('ZCARD', KEYS[2])
  local expires = now + ttl
  local out
  if held then
    -- Acquiring a live id renews it (never shortens it).
    local e = math.max(tonumber(held), expires)
    redis.call('ZADD', KEYS[2], fmt(e), id)
    out = { 1, 1, C.lim, sat(C.lim - n), e, 0 }
  elseif n < C.lim then
    redis.call('ZADD', KEYS[2], fmt(expires), id)
    redis.call('HSET', KEYS[3], 'h:' .. id, ARGV[5])
    out = { 1, 1, C.lim, C.lim - n - 1, expires, 0 }
  else
    -- With a lowered limit, several leases may have to lapse first.
    local must_lapse = n - C.lim + 1
    local at = redis.call('ZRANGE', KEYS[2], must_lapse - 1, must_lapse - 1, 'WITHSCORES')
    out = { 1, 0, C.lim, 0, 0, sat(tonumber(at[2]) - now) }
  end
  settle()
  return out
elseif op == 'renew' then
  if not held then
    return { -1, 'not_held', '' }
  end
  local e = now + ttl
  redis.call('ZADD', KEYS[2], fmt(e), id)
  settle()
  return { 1, e }
end
-- release
local was = 0
if held then
  was = 1
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], 'h:' .. id)
end
settle()
return { 1, was }
