-- pause.lua: pauses a key, ends its pause, or lists the pauses in force (pause_set,
-- pause_clear in lib.lua; docs/design.md §3.13). The Redis engine calls queue_define.lua
-- instead, which also re-plans the runs waiting on the key.
--
-- KEYS[1]  the pause index (a ZSET of "<ns>\t<key>" by when each pause ends, µs)
-- KEYS[2]  set, clear: the key's pause (a string: when it ends, µs)
-- ARGV[1]  now in µs since the Unix epoch, or "" to use Redis TIME
-- ARGV[2]  op: "set" | "clear" | "list"
-- ARGV[3]  set, clear: the index member, "<s|d>\t<key>"
-- ARGV[4]  set: when the pause ends, µs
-- ARGV[5]  set: expiry slack in ms
--
-- Returns, for set: when the pause in force ends (µs; not after now when none is); for clear:
-- 1 when a pause was in force, else 0; for list: { member, until, member, until, ... } of the
-- pauses in force.

local now = clock(ARGV[1])
local op = ARGV[2]
if op == 'set' then
  return fmt(pause_set(KEYS[2], KEYS[1], ARGV[3], tonumber(ARGV[4]), now, tonumber(ARGV[5])))
elseif op == 'clear' then
  return pause_clear(KEYS[2], KEYS[1], ARGV[3], now)
elseif op == 'list' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
  return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
end
return redis.error_reply('unknown pause op ' .. tostring(op))
