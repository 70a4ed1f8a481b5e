-- remove_limit.lua: removes a static limit with its state and leases (remove_limit_def in
-- lib.lua). The Redis engine calls queue_define.lua instead, which refuses while runs name it.
--
-- KEYS[1]  the definition
-- KEYS[2]  its rate state
-- KEYS[3]  its lease set (ZSET)
-- KEYS[4]  its lease holders (HASH)
-- (no ARGV)
--
-- Returns 1 when the definition existed, else 0.

return remove_limit_def(KEYS[1], KEYS[2], KEYS[3], KEYS[4])
