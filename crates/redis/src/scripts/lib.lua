-- lib.lua: the rate algorithms of tollgate-core, ported to integer microseconds, and the one
-- all-or-nothing acquire (acquire_keys) that direct acquires and the run queue share. The first
-- part of the Functions library (scripts.rs): its locals are made once, when the library is
-- loaded, and every function of the library calls them. Nothing here keeps state between calls
-- except the cache of parsed specs (parse_limit), which never changes a result.
--
-- Lua numbers are doubles. Every value here is a non-negative integer below 2^53 (an epoch
-- instant in µs is about 2^51), and every product that could pass 2^53 (t·N, k·P, d·T) goes
-- through mul_div, which never forms it. Numbers are written back with fmt() (or INT in a
-- format), never with tostring() or `..`, which keep only 14 significant digits.
--
-- A limit spec is the string the Rust side encodes (first token: the algorithm):
--   "sw <limit> <period_ns> <precision> <period_us>"
--   "fw <limit> <period_ns> <c|f> <period_us>"            c: clock-aligned, f: first use
--   "gcra <limit> <period_ns> <burst> <interval_us>"
--   "tb <limit> <period_ns> <capacity> <interval_us>"     token bucket: gcra, burst = capacity
--   "conc <limit> <lease_ttl_ns> <lease_ttl_us>"          concurrency
--   "bar <parties> <ttl_ns>"                              barrier
-- A rate state is stored as "@<spec of the limit that wrote it>|<state>" or, once its static
-- limit was redefined and before the next decision converts it, "@<the limit's spec now>><spec
-- of the limit that wrote it>|<state>". The '@' says the state knows its static limit's
-- current spec (put_limit_def keeps it so), which spares a decision the read of the
-- definition; states written before it ("<spec>|<state>") make that read (resolve). The state is
--   sw: a MessagePack array <index>, <units>, <index>, <units>, ... (non-empty buckets,
--       ascending; a Lua flat array once parsed)
--   fw: "<window_end> <used>"
--   gcra, tb: "<tat_us> <tat_ns>" (tat = tat_us µs + tat_ns ns, tat_ns in 0..999)

-- The format of an integer: '%d' where this Lua's C long holds every integer below 2^53 (64-bit
-- Unix builds; three times faster than '%.0f', which formats a double), else '%.0f'; and the
-- formats built on it. Made by the first call (prepare): Redis 7.0 offers no string library
-- while it loads a library.
local INT, DUR, STATE, DECISION

-- Makes what could not be made while loading. Every function of the library calls it first
-- (scripts.rs puts the call there).
local function prepare()
  if INT then
    return
  end
  INT = string.format('%d', 2 ^ 53) == '9007199254740992' and '%d' or '%.0f'
  DUR = INT .. '%03d'
  STATE = '@%s|' .. INT .. ' ' .. INT
  -- One key's decision in an acquire's answer: allowed limit remaining retry_after reset_after.
  DECISION = '%d ' .. INT .. ' ' .. INT .. ' %s %s'
end

local function fmt(x)
  return string.format(INT, x)
end

-- a - b saturating at zero, as Nanos subtraction does.
local function sat(x)
  if x < 0 then
    return 0
  end
  return x
end

local MAX_TTL_MS = 3153600000000 -- 100 years: keeps PEXPIRE valid for absurd values

-- Exact floor(a / b) and a mod b for integers 0 <= a, 0 < b.
local function divmod(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  while r < 0 do
    q = q - 1
    r = r + b
  end
  while r >= b do
    q = q + 1
    r = r - b
  end
  return q, r
end

local EXACT = 9007199254740992 -- 2^53: integers below it are exact doubles

-- Exact floor(a * b / c) and (a * b) mod c, without forming a product past 2^53: a is reduced
-- mod c; when (a mod c)·b still does not fit, b's bits are shifted in one by one with a
-- remainder kept below c. Needs c < 2^52 and a result below 2^53.
local function mul_div(a, b, c)
  local qa, ra = divmod(a, c)
  local p = ra * b
  if p < EXACT then
    local q, r = divmod(p, c)
    return qa * b + q, r
  end
  local bit = 1
  while bit * 2 <= b do
    bit = bit * 2
  end
  local q, r, rest = 0, 0, b
  while bit >= 1 do
    q = q * 2
    r = r * 2
    if r >= c then
      q = q + 1
      r = r - c
    end
    if rest >= bit then
      rest = rest - bit
      r = r + ra
      if r >= c then
        q = q + 1
        r = r - c
      end
    end
    bit = bit / 2
  end
  return qa * b + q, r
end

local function split(s)
  local t = {}
  for w in string.gmatch(s, '%S+') do
    t[#t + 1] = w
  end
  return t
end

-- The time to decide at: ARGV's µs, or Redis's own clock when it is "".
local function clock(arg)
  if arg == nil or arg == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return tonumber(arg)
end

local function ttl_ms(fresh_at, now, slack_ms)
  local ms = math.ceil(sat(fresh_at - now) / 1000) + slack_ms
  if ms < 1 then
    ms = 1
  end
  if ms > MAX_TTL_MS then
    ms = MAX_TTL_MS
  end
  return ms
end

local function is_gcra(a)
  return a == 'gcra' or a == 'tb'
end

local function is_rate(a)
  return a == 'sw' or a == 'fw' or a == 'gcra' or a == 'tb'
end

-- The algorithm code of a spec (its first token).
local function algo_of(spec)
  return string.match(spec, '^(%S+)')
end

local function positive(x)
  return x ~= nil and x >= 1
end

-- Parsed limits by spec: a key's definition and its state's spec are usually the same string,
-- and the same few specs come back call after call. A parsed limit is never changed, so the
-- cache lives as long as the library; it starts afresh once it holds PARSED_MAX specs (dynamic
-- keys may bring any number of them).
local parsed, parsed_n = {}, 0
local PARSED_MAX = 1000

-- A rate limit from its spec, or nil when it is not one.
local function parse_limit(spec)
  if not spec then
    return nil
  end
  local L = parsed[spec]
  if L then
    return L
  end
  -- Every rate spec has five tokens: algorithm, limit, period_ns, then two by algorithm.
  local a, lim, _, x, y = string.match(spec, '^(%l+) (%d+) (%d+) (%S+) (%d+)$')
  lim, y = tonumber(lim), tonumber(y)
  if not (positive(lim) and positive(y)) then
    return nil
  end
  L = { a = a, spec = spec, lim = lim }
  if a == 'sw' then
    L.prec, L.per = tonumber(x), y
    if not positive(L.prec) then
      return nil
    end
  elseif a == 'fw' then
    L.align, L.per = x, y
  elseif is_gcra(a) then
    L.burst, L.T = tonumber(x), y
    if not positive(L.burst) then
      return nil
    end
  else
    return nil
  end
  if parsed_n >= PARSED_MAX then
    parsed, parsed_n = {}, 0
  end
  parsed[spec] = L
  parsed_n = parsed_n + 1
  return L
end

-- A concurrency limit from its spec: { lim, ttl (µs) }, or nil.
local function parse_conc(spec)
  if not spec then
    return nil
  end
  local t = split(spec)
  if t[1] ~= 'conc' then
    return nil
  end
  local C = { lim = tonumber(t[2]), ttl = tonumber(t[4]), spec = spec }
  if not (positive(C.lim) and C.ttl) then
    return nil
  end
  return C
end

local function capacity(L)
  if is_gcra(L.a) then
    return L.burst
  end
  return L.lim
end

---------------------------------------------------------------------------------------------
-- sliding_window: bucket k covers [k·P/N, (k+1)·P/N); a request checks buckets b−N ..= b.
local function sw_bucket_of(L, t)
  return (mul_div(t, L.prec, L.per))
end

-- The bucket holding the instant just before t (the core's `t − 1ns`).
local function sw_bucket_before(L, t)
  local q, r = mul_div(t, L.prec, L.per)
  if r == 0 and q > 0 then
    return q - 1
  end
  return q
end

-- ⌈k·P/N⌉
local function sw_bucket_start(L, k)
  local q, r = mul_div(k, L.per, L.prec)
  if r > 0 then
    q = q + 1
  end
  return q
end

local function sw_expiry_of(L, k)
  return sw_bucket_start(L, k + L.prec + 1)
end

-- A state is a flat array { index, units, index, units, ... } of non-empty buckets,
-- ascending. The newest bucket's index, or nil.
local function sw_current(L, b, now)
  local c = sw_bucket_of(L, now)
  local last = b[#b - 1]
  if last and last > c then
    c = last
  end
  return c
end

-- The first position (odd) of b whose bucket still counts at `current`; #b + 1 if none.
local function sw_first_live(L, b, current)
  local oldest = sat(current - L.prec)
  local j, n = 1, #b
  while j < n and b[j] < oldest do
    j = j + 2
  end
  return j
end

-- The buckets still counting at `current`, copied.
local function sw_live(L, b, current)
  local out, k = {}, 0
  for j = sw_first_live(L, b, current), #b, 2 do
    out[k + 1], out[k + 2] = b[j], b[j + 1]
    k = k + 2
  end
  return out
end

-- Decides on b, which it may change in place (callers never use a state after deciding
-- on it); the next state is returned when admitted.
local function sw_decide(L, b, now, units)
  b = b or {}
  local n = #b
  local current = sw_current(L, b, now)
  local first = sw_first_live(L, b, current)
  local used = 0
  for j = first + 1, n, 2 do
    used = used + b[j]
  end
  if used + units <= L.lim then
    if first > 1 then
      -- Drop the buckets that left, keeping the rest in place.
      local k = 0
      for j = first, n do
        k = k + 1
        b[k] = b[j]
      end
      for j = n, k + 1, -1 do
        b[j] = nil
      end
      n = k
    end
    if n > 0 and b[n - 1] == current then
      b[n] = b[n] + units
    else
      b[n + 1], b[n + 2] = current, units
    end
    return { 1, L.lim, L.lim - used - units, 0, sat(sw_expiry_of(L, current) - now) }, b
  end
  -- Oldest buckets leave first; find the one whose departure frees enough.
  local need = used + units - L.lim
  local freed, retry = 0, nil
  for j = first, n, 2 do
    freed = freed + b[j + 1]
    if freed >= need then
      retry = sat(sw_expiry_of(L, b[j]) - now)
      break
    end
  end
  local reset = 0
  if n >= first then
    reset = sat(sw_expiry_of(L, b[n - 1]) - now)
  end
  -- Unreachable while units <= limit (checked before deciding): every bucket leaves.
  if retry == nil then
    retry = MAX_TTL_MS * 1000
  end
  return { 0, L.lim, sat(L.lim - used), retry, reset }, nil
end

local function sw_usage(L, b, now)
  b = b or {}
  local n = #b
  local first = sw_first_live(L, b, sw_current(L, b, now))
  local used = 0
  for j = first + 1, n, 2 do
    used = used + b[j]
  end
  local reset = 0
  if n >= first then
    reset = sat(sw_expiry_of(L, b[n - 1]) - now)
  end
  return L.lim, used, sat(L.lim - used), reset
end

local function sw_refund(L, b, now, units)
  local live = sw_live(L, b, sw_current(L, b, now))
  local left = units
  while left > 0 and #live > 0 do
    local n = #live
    local take = math.min(left, live[n])
    live[n] = live[n] - take
    left = left - take
    if live[n] == 0 then
      live[n], live[n - 1] = nil, nil
    end
  end
  if #live == 0 then
    return nil
  end
  return live
end

-- Moves buckets kept under `old` onto L's. Each old bucket's units go to the new bucket
-- holding the latest instant they can have been admitted at: the old bucket's last instant,
-- but no later than now (unless the clock stepped back before the newest bucket began), so
-- they never expire earlier than they would have, and never sit in a future bucket.
local function sw_rebucket(L, old, b, now)
  if old.per == L.per and old.prec == L.prec then
    return b
  end
  local live = sw_live(old, b, sw_current(old, b, now))
  local newest = live[#live - 1]
  if newest == nil then
    return nil
  end
  local capped = now >= sw_bucket_start(old, newest)
  -- The new bucket of min(last instant of old bucket k, latest).
  local function index_of(k)
    local next_start = sw_bucket_start(old, k + 1)
    if capped and next_start > now then
      return sw_bucket_of(L, now)
    end
    return sw_bucket_before(L, next_start)
  end
  local oldest = sat(sw_bucket_of(L, now) - L.prec)
  local floor = sat(index_of(newest) - L.prec)
  local out = {}
  for j = 1, #live, 2 do
    local index = index_of(live[j])
    if index >= oldest then
      if index < floor then
        index = floor
      end
      local n = #out
      if n > 0 and out[n - 1] == index then
        out[n] = out[n] + live[j + 1]
      else
        out[n + 1], out[n + 2] = index, live[j + 1]
      end
    end
  end
  if #out == 0 then
    return nil
  end
  return out
end

---------------------------------------------------------------------------------------------
-- fixed_window: state { window_end, used }.
local function fw_window(L, s, now)
  if s and now < s[1] then
    return s[1], s[2]
  end
  if L.align == 'c' then
    local q = divmod(now, L.per)
    return (q + 1) * L.per, 0
  end
  return now + L.per, 0
end

local function fw_decide(L, s, now, units)
  local e, used = fw_window(L, s, now)
  local reset = sat(e - now)
  if used + units <= L.lim then
    return { 1, L.lim, L.lim - used - units, 0, reset }, { e, used + units }
  end
  -- A new, empty window opens exactly at its end.
  return { 0, L.lim, sat(L.lim - used), reset, reset }, nil
end

local function fw_usage(L, s, now)
  if s and now < s[1] then
    return L.lim, s[2], sat(L.lim - s[2]), sat(s[1] - now)
  end
  return L.lim, 0, L.lim, 0
end

local function fw_refund(L, s, now, units)
  if now >= s[1] then
    return nil
  end
  local used = sat(s[2] - units)
  if used > 0 then
    return { s[1], used }
  end
  return nil
end

---------------------------------------------------------------------------------------------
-- gcra (and token_bucket): state is the theoretical arrival time `tat`, kept as { µs, ns }
-- with ns in 0..999: converting a state to another emission interval (rescale) gives an
-- instant in nanoseconds, which the core keeps exactly, and so does this port.

-- A duration of us µs + n ns as a decimal string of nanoseconds, zero when negative.
local function dur(us, n)
  if us < 0 then
    return '0'
  end
  return string.format(DUR, us, n)
end

local function g_at_least_now(tat, now)
  if tat == nil or tat[1] < now then
    return { now, 0 }
  end
  return tat
end

-- ⌊(now + tolerance − tat) / T⌋, zero when negative.
local function g_remaining_at(L, tat, now)
  local head = now + L.T * L.burst - tat[1]
  if head <= 0 then
    return 0
  end
  local q, r = divmod(head, L.T)
  if r == 0 and tat[2] > 0 then
    return q - 1
  end
  return q
end

local function g_decide(L, tat, now, units)
  tat = g_at_least_now(tat, now)
  local tolerance = L.T * L.burst
  local new_tat = { tat[1] + L.T * units, tat[2] }
  local horizon = now + tolerance
  if new_tat[1] < horizon or (new_tat[1] == horizon and new_tat[2] == 0) then
    local d = { 1, L.burst, g_remaining_at(L, new_tat, now), '0', dur(new_tat[1] - now, new_tat[2]) }
    return d, new_tat
  end
  -- Admitted exactly when new_tat − t = tolerance.
  local d = {
    0,
    L.burst,
    g_remaining_at(L, tat, now),
    dur(new_tat[1] - tolerance - now, new_tat[2]),
    dur(tat[1] - now, tat[2]),
  }
  return d, nil
end

local function g_usage(L, tat, now)
  tat = g_at_least_now(tat, now)
  local remaining = math.min(g_remaining_at(L, tat, now), L.burst)
  return L.burst, L.burst - remaining, remaining, dur(tat[1] - now, tat[2])
end

local function g_refund(L, tat, now, units)
  local t = { tat[1] - L.T * units, tat[2] }
  if t[1] > now or (t[1] == now and t[2] > 0) then
    return t
  end
  return nil
end

-- The same units outstanding under L as under old: ⌈(tat − now) · T / T_old⌉, exactly.
local function g_rescale(L, old, tat, now)
  local out_us, out_n = tat[1] - now, tat[2]
  if out_us < 0 or (out_us == 0 and out_n == 0) then
    return nil
  end
  -- (out_us·1000 + out_n)·T / T_old = 1000·q1 + q2 + q3 + (r2 + r3) / T_old
  local q1, r1 = mul_div(out_us, L.T, old.T)
  local q2, r2 = mul_div(r1, 1000, old.T)
  local q3, r3 = mul_div(out_n, L.T, old.T)
  local ns, r = q2 + q3, r2 + r3
  if r >= old.T then
    ns = ns + 1
    r = r - old.T
  end
  if r > 0 then
    ns = ns + 1
  end
  local us, rest = divmod(ns, 1000)
  return { now + q1 + us, rest }
end

---------------------------------------------------------------------------------------------
-- Dispatch, as RateLimit does. Durations in decisions and usages are nanosecond strings.

local function decide(L, s, now, units)
  local d, next
  if L.a == 'sw' then
    d, next = sw_decide(L, s, now, units)
  elseif L.a == 'fw' then
    d, next = fw_decide(L, s, now, units)
  else
    return g_decide(L, s, now, units)
  end
  d[4], d[5] = dur(d[4], 0), dur(d[5], 0)
  return d, next
end

-- limit, used, remaining, reset_after (ns string)
local function usage(L, s, now)
  local limit, used, remaining, reset
  if L.a == 'sw' then
    limit, used, remaining, reset = sw_usage(L, s, now)
  elseif L.a == 'fw' then
    limit, used, remaining, reset = fw_usage(L, s, now)
  else
    return g_usage(L, s, now)
  end
  return limit, used, remaining, dur(reset, 0)
end

local function refund(L, s, now, units)
  if s == nil then
    return nil
  end
  if L.a == 'sw' then
    return sw_refund(L, s, now, units)
  elseif L.a == 'fw' then
    return fw_refund(L, s, now, units)
  end
  return g_refund(L, s, now, units)
end

-- A state with `used` units outstanding at `now`.
local function seeded(L, used, now)
  if used <= 0 then
    return nil
  end
  if L.a == 'sw' then
    return { sw_bucket_of(L, now), used }
  elseif L.a == 'fw' then
    local e = fw_window(L, nil, now)
    return { e, used }
  end
  return { now + L.T * used, 0 }
end

-- When a state written under L becomes fresh (and may be forgotten), in µs rounded up: the
-- state is fresh at now exactly when fresh_at(L, s) <= now.
local function fresh_at(L, s)
  if L.a == 'sw' then
    if #s == 0 then
      return 0
    end
    return sw_expiry_of(L, s[#s - 1])
  elseif L.a == 'fw' then
    return s[1]
  end
  if s[2] > 0 then
    return s[1] + 1
  end
  return s[1]
end

-- A prior state s, written under the limit old, in L's terms at now (nil: fresh). Usage is kept
-- across parameter changes; a change of algorithm starts from what the old state had left,
-- never more.
local function adopt(L, old, s, now)
  if not old then
    return nil
  end
  -- A fresh state is no state, whatever limit wrote it.
  if fresh_at(old, s) <= now then
    return nil
  end
  if old.spec == L.spec then
    return s
  end
  if is_gcra(L.a) and is_gcra(old.a) then
    return g_rescale(L, old, s, now)
  end
  if L.a == 'sw' and old.a == 'sw' then
    return sw_rebucket(L, old, s, now)
  end
  if L.a == 'fw' and old.a == 'fw' then
    -- The running window keeps its end and usage; new parameters shape the next.
    return s
  end
  local _, _, left = usage(old, s, now)
  local cap = capacity(L)
  return seeded(L, cap - math.min(left, cap), now)
end

-- Where the header of a stored state ends: the part after "@<spec now>>" or "@", or the whole of
-- a state written before the '@' form; and the limit's spec now when the header names one.
local function state_body(raw)
  if string.byte(raw, 1) ~= 64 then -- '@'
    return raw, nil, false
  end
  local bar = string.find(raw, '|', 2, true)
  local gt = string.find(raw, '>', 2, true)
  if gt and bar and gt < bar then
    return string.sub(raw, gt + 1), string.sub(raw, 2, gt - 1), true
  end
  return string.sub(raw, 2), nil, true
end

-- A stored rate state: the limit that wrote it and the state; nil when there is none; false
-- when the stored value is not a rate state. Then whether the state knows its static limit's
-- spec now (the '@' form), and that spec when it differs from the writer's.
local function parse_state(raw)
  if not raw then
    return nil
  end
  local at, s1, s2 = string.byte(raw, 1, 3)
  local knows = at == 64 -- '@'
  -- fw and gcra states written in the '@' form, in one match (the common case); not tried on
  -- a sliding window's, whose MessagePack would only make it backtrack.
  if knows and not (s1 == 115 and s2 == 119) then -- "sw"
    local spec, a, b = string.match(raw, '^@([^|>]*)|(%d+) (%d+)$')
    if spec then
      local L = parse_limit(spec)
      if L and L.a ~= 'sw' then
        return L, { tonumber(a), tonumber(b) }, true, nil
      end
    end
  end
  local bar = string.find(raw, '|', 1, true)
  if not bar then
    return false
  end
  local head = string.sub(raw, knows and 2 or 1, bar - 1)
  local now_spec
  local gt = string.find(head, '>', 1, true)
  if gt then
    now_spec, head = string.sub(head, 1, gt - 1), string.sub(head, gt + 1)
  end
  local L = parse_limit(head)
  if not L then
    return false
  end
  local rest = string.sub(raw, bar + 1)
  if L.a ~= 'sw' then
    local a, b = string.match(rest, '^(%d+) (%d+)$')
    if not a then
      return false
    end
    return L, { tonumber(a), tonumber(b) }, knows, now_spec
  end
  local ok, t = pcall(cmsgpack.unpack, rest)
  if not ok or type(t) ~= 'table' or #t < 2 or #t % 2 ~= 0 or type(t[1]) ~= 'number' then
    return false
  end
  return L, t, knows, now_spec
end

local function encode_state(L, s)
  if L.a == 'sw' then
    -- MessagePack (Redis's cmsgpack, in C): integers stay exact below 2^53, and parsing and
    -- writing 61 buckets costs a tenth of what text did.
    return '@' .. L.spec .. '|' .. cmsgpack.pack(s)
  end
  return string.format(STATE, L.spec, s[1], s[2])
end

-- Stores a rate state (or forgets it when nil: fresh), expiring once it is fresh.
local function store_state(key, L, s, now, slack_ms)
  if s == nil then
    redis.call('DEL', key)
    return
  end
  local at = fresh_at(L, s)
  if at <= now then
    redis.call('DEL', key)
    return
  end
  redis.call('SET', key, encode_state(L, s), 'PX', fmt(ttl_ms(at, now, slack_ms)))
end

-- Whether a lease set holds a lease still live at now.
local function has_live_lease(key, now)
  return redis.call('ZCOUNT', key, '(' .. fmt(now), '+inf') > 0
end

-- Resolves key i of an acquire or refund: its limit L, and its prior state s with the limit
-- old that wrote it (both nil when there is none); or nil, nil, nil and an error reply.
-- guard: the static definition key or the dynamic lease set; state_key: the rate state.
-- A static key whose state knows the limit's spec now (the '@' form) is decided without
-- reading its definition: two commands per key, as a bare GCRA does.
local function resolve(i, ns, guard, state_key, spec, now)
  local old, s, knows, now_spec = parse_state(redis.call('GET', state_key))
  if old == false then
    return nil, nil, nil, { -1, i, 'corrupt', 'state' }
  end
  local L
  if ns == 's' then
    if knows then
      L = now_spec and parse_limit(now_spec) or old
    else
      local def = redis.call('GET', guard)
      if not def then
        return nil, nil, nil, { -1, i, 'unknown', '' }
      end
      L = parse_limit(def)
      if not L then
        local a = algo_of(def)
        if not is_rate(a) then
          return nil, nil, nil, { -1, i, 'wrong', a or '' }
        end
      end
    end
  else
    if has_live_lease(guard, now) then
      return nil, nil, nil, { -1, i, 'wrong', 'conc' }
    end
    L = parse_limit(spec)
  end
  if not L then
    return nil, nil, nil, { -1, i, 'corrupt', 'definition' }
  end
  return L, old, s
end

-- Pauses (docs/design.md §3.13). A paused key's pause key (keys.rs, kinds sp and dp) holds
-- when its pause ends (µs), expires then, and is listed in the pause index (a ZSET of
-- "<ns>\t<key>" by that instant). A rate state key is P:<sr|dr>:{<tag>}:<key>, its pause key
-- P:<sp|dp>:{<tag>}:<key>; the tag holds no brace, so the last '{' before the key opens it.
local function pause_key(st, key)
  local head = string.sub(st, 1, #st - #key)
  local open = string.match(head, '.*(){')
  local kind = string.sub(head, open - 3, open - 2) == 'sr' and 'sp' or 'dp'
  return string.sub(head, 1, open - 4) .. kind .. string.sub(head, open - 1) .. key
end

-- How many µs pause key pk still holds at now, or nil.
local function paused_for(pk, now)
  local ends = tonumber(redis.call('GET', pk) or '0')
  if ends > now then
    return ends - now
  end
  return nil
end

-- Pauses a key until `ends` (µs), or keeps a pause that ends later; returns the end in force
-- (not after now when nothing is in force).
local function pause_set(pk, index, member, ends, now, slack)
  local old = tonumber(redis.call('GET', pk) or '0')
  if old > ends then
    ends = old
  end
  if ends > now then
    -- Expires once it has ended, reckoned from now (the caller's clock may not be Redis's),
    -- plus the slack every rate state's expiry has.
    redis.call('SET', pk, fmt(ends), 'PX', fmt(math.ceil((ends - now) / 1000) + slack))
    redis.call('ZADD', index, fmt(ends), member)
  end
  return ends
end

-- Ends a key's pause; 1 when one was in force at now, else 0.
local function pause_clear(pk, index, member, now)
  local left = paused_for(pk, now)
  redis.call('DEL', pk)
  redis.call('ZREM', index, member)
  return left and 1 or 0
end

-- A decision on a key paused for `left` more µs: a denial, nothing remaining, retried no sooner
-- than the pause ends (Decision::paused in tollgate-core).
local function paused(d, left)
  if d[1] == 1 or tonumber(string.sub(d[4], 1, -4)) < left then
    d[4] = string.format(DUR, left, 0)
  end
  d[1], d[3] = 0, 0
  return d
end

-- Decides every key of one acquire at once and writes only if all are admitted: the one
-- implementation of the all-or-nothing acquire, for direct acquires (acquire.lua) and the run
-- queue (acquire_all in queue_lib.lua). E[i] = { ns = "s" | "d", units, guard, st, pk, spec } (the
-- keys and values of acquire.lua's key i). Returns allowed (true | false) and each key's
-- decision (lib's decide: { allowed, limit, remaining, retry_after_ns, reset_after_ns }), or
-- nil and { -1, i, code, detail } for the first key in order that cannot be decided (resolve's
-- codes, or "capacity" with the most the limit admits at once).
local function acquire_keys(E, now, slack)
  -- nexts[i]: key i's next state; false when it had one and keeps none (forget it); nil when
  -- it had none and keeps none (a fresh decision): nothing to write.
  local limits, nexts, D, allowed = {}, {}, {}, true
  for i = 1, #E do
    local e = E[i]
    local L, old, prior, err = resolve(i, e.ns, e.guard, e.st, e.spec, now)
    if err then
      return nil, err
    end
    if e.units > capacity(L) then
      return nil, { -1, i, 'capacity', capacity(L) }
    end
    local d, s = decide(L, adopt(L, old, prior, now), now, e.units)
    local left = paused_for(e.pk, now)
    if left then
      d = paused(d, left)
    end
    if d[1] == 0 then
      allowed = false
    end
    if s == nil and old ~= nil then
      s = false
    end
    limits[i], nexts[i], D[i] = L, s, d
  end
  if allowed then
    for i = 1, #E do
      local s = nexts[i]
      if s ~= nil then
        store_state(E[i].st, limits[i], s or nil, now, slack)
      end
    end
  end
  return allowed, D
end

-- Declares or redefines a static limit: def (its definition), st (rate state), ls (lease
-- set), lh (lease holders). Usage is kept when the kind of limit stays (rate -> rate,
-- concurrency -> concurrency); any other change starts fresh.
local function put_limit_def(def, st, ls, lh, new)
  local function kind(spec)
    local a = algo_of(spec)
    if is_rate(a) then
      return 'rate'
    end
    return a
  end
  local old = redis.call('GET', def)
  if not old or kind(old) ~= kind(new) or kind(new) == 'bar' then
    redis.call('DEL', st, ls, lh)
  elseif old ~= new and kind(new) == 'rate' then
    -- A rate state keeps the limit it was written under (the next decision converts it) and
    -- learns the spec now, which resolve reads instead of the definition.
    local raw = redis.call('GET', st)
    if raw then
      redis.call('SET', st, '@' .. new .. '>' .. (state_body(raw)), 'KEEPTTL')
    end
  end
  redis.call('SET', def, new)
end

-- Removes a static limit with its state and leases (the keys of put_limit_def); returns 1
-- when the definition existed, else 0.
local function remove_limit_def(def, st, ls, lh)
  local existed = redis.call('EXISTS', def)
  redis.call('DEL', def, st, ls, lh)
  return existed
end
