-- refund.lua: gives units back to every key of one request (never below empty).
--
-- KEYS[3i-2]  key i's guard: its definition (static keys) or its lease set (dynamic keys)
-- KEYS[3i-1]  key i's rate state ("<spec>|<state>", PEXPIRE'd once fresh, plus slack)
-- KEYS[3i]    key i's pause (unused: a refund gives back whatever the key's pause)
-- ARGV[1]     now in µs since the Unix epoch, or "" to use Redis TIME
-- ARGV[2]     expiry slack in ms, added to every PEXPIRE
-- ARGV[3]     n: how many keys (distinct; the caller summed the units of entries naming one)
-- ARGV[3i+1]  key i's namespace: "s" static or "d" dynamic
-- ARGV[3i+2]  key i's units (at most 2^32 − 1)
-- ARGV[3i+3]  key i's limit spec for a dynamic key ("" for a static one)
--
-- Returns {1}, or {-1, i, code, detail} as acquire.lua does (never "capacity").

local now = clock(ARGV[1])
local slack = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local limits, nexts = {}, {}
for i = 1, n do
  local ns, units, spec = ARGV[3 * i + 1], tonumber(ARGV[3 * i + 2]), ARGV[3 * i + 3]
  local L, old, prior, err = resolve(i, ns, KEYS[3 * i - 2], KEYS[3 * i - 1], spec, now)
  if err then
    return err
  end
  limits[i] = L
  nexts[i] = refund(L, adopt(L, old, prior, now), now, units)
end
for i = 1, n do
  store_state(KEYS[3 * i - 1], limits[i], nexts[i], now, slack)
end
return { 1 }
