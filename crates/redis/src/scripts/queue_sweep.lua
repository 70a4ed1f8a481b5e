-- queue_sweep.lua: fires due timers (a parked head reserves its units and becomes ready) and
-- lease expiries (the run is requeued or fails). Every node runs it when its earliest
-- deadline passes; running it on several nodes at once is safe (each step is atomic and
-- finds nothing left to do).
--
-- KEYS        none: the queue's keys are built from ARGV[1] (see queue_lib.lua)
-- ARGV[1]     the queue's key prefix
-- ARGV[2]     now in µs since the Unix epoch, or "" to use Redis TIME
-- ARGV[3]     expiry slack in ms, added to every PEXPIRE of a rate state
--
-- Returns { "ok", effects, next_deadline_us (-1: none), now_us }.

init(ARGV[1], ARGV[2], ARGV[3])
process_due(1000)
return reply('ok', { fmt(next_deadline()), fmt(NOW) })
