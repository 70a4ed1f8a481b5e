-- acquire.lua: decides every key of one request at once; writes only if all are admitted
-- (acquire_keys in lib.lua, which the run queue uses too).
--
-- KEYS[3i-2]  key i's guard: its definition (static keys, a string that never expires) or
--             its lease set (dynamic keys, a ZSET: a dynamic key with live leases is not a
--             rate limit)
-- KEYS[3i-1]  key i's rate state ("<spec>|<state>", PEXPIRE'd once fresh, plus slack)
-- KEYS[3i]    key i's pause (when it ends, µs; docs/design.md §3.13)
-- ARGV[1]     now in µs since the Unix epoch, or "" to use Redis TIME
-- ARGV[2]     expiry slack in ms, added to every PEXPIRE
-- ARGV[3]     n: how many keys (distinct; the caller summed the units of entries naming one)
-- ARGV[3i+1]  key i's namespace: "s" static (limit from KEYS[3i-2]) or "d" dynamic
-- ARGV[3i+2]  key i's units
-- ARGV[3i+3]  key i's limit spec for a dynamic key ("" for a static one)
--
-- Returns {allowed, then per key one string "allowed limit remaining retry_after_ns
-- reset_after_ns"} (one value per key: the client parses n + 1 values, not 5n + 1),
-- or {-1, i, code, detail} for the first key in order that cannot be decided:
-- "unknown" (no static limit), "wrong" (detail: the algorithm found), "capacity" (detail: the
-- most the limit admits at once), "corrupt".

local now = clock(ARGV[1])
local n = tonumber(ARGV[3])
local E = {}
for i = 1, n do
  E[i] = {
    ns = ARGV[3 * i + 1], units = tonumber(ARGV[3 * i + 2]), spec = ARGV[3 * i + 3],
    guard = KEYS[3 * i - 2], st = KEYS[3 * i - 1], pk = KEYS[3 * i],
  }
end
local allowed, D = acquire_keys(E, now, tonumber(ARGV[2]))
if allowed == nil then
  return D
end
local out = { allowed and 1 or 0 }
for i = 1, n do
  local d = D[i]
  out[i + 1] = string.format(DECISION, d[1], d[2], d[3], d[4], d[5])
end
return out
