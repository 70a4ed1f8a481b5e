-- barrier.lua: create, arrive at, or read one barrier.
--
-- KEYS[1]  the barrier: "<parties> <arrived> <expires_at_us>", PEXPIRE'd at its expiry (plus
--          slack)
-- ARGV[1]  now in µs since the Unix epoch, or "" to use Redis TIME
-- ARGV[2]  operation: "create" (unless a live one exists), "arrive" or "status"
-- ARGV[3]  parties (create)
-- ARGV[4]  time to live in µs (create)
-- ARGV[5]  expiry slack in ms
--
-- Returns {1, parties, arrived, expires_at_us}, or {-1, "missing"} / {-1, "expired",
-- expires_at_us}: a missing or expired barrier is an error, never a pass.

local now = clock(ARGV[1])
local op = ARGV[2]
local slack = tonumber(ARGV[5])
local raw = redis.call('GET', KEYS[1])
local b = nil
if raw then
  local t = split(raw)
  b = { tonumber(t[1]), tonumber(t[2]), tonumber(t[3]) }
  if b[1] == nil or b[2] == nil or b[3] == nil then
    b = nil
  end
end
local live = b ~= nil and now < b[3]

local function save()
  redis.call('SET', KEYS[1], fmt(b[1]) .. ' ' .. fmt(b[2]) .. ' ' .. fmt(b[3]), 'PX',
    fmt(ttl_ms(b[3], now, slack)))
end

if op == 'create' then
  if not live then
    b = { tonumber(ARGV[3]), 0, now + tonumber(ARGV[4]) }
    save()
  end
  return { 1, b[1], b[2], b[3] }
end
if b == nil then
  return { -1, 'missing' }
end
if not live then
  return { -1, 'expired', b[3] }
end
if op == 'arrive' then
  b[2] = math.min(b[2] + 1, 4294967295)
  save()
end
return { 1, b[1], b[2], b[3] }
