-- put_limit.lua: declares or redefines a static limit (put_limit_def in lib.lua). The Redis
-- engine calls queue_define.lua instead, which also re-plans the runs waiting on the limit.
--
-- KEYS[1]  the definition (a string, never expires)
-- KEYS[2]  its rate state
-- KEYS[3]  its lease set (ZSET)
-- KEYS[4]  its lease holders (HASH)
-- ARGV[1]  the new definition's spec
--
-- Returns 1.

put_limit_def(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
return 1
