-- remove_limit.lua: removes a static limit with its state and leases.
--
-- KEYS[1]  the definition
-- KEYS[2]  its rate state
-- KEYS[3]  its lease set (ZSET)
-- KEYS[4]  its lease holders (HASH)
-- (no ARGV)
--
-- Returns 1 when the definition existed, else 0.

local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return existed
