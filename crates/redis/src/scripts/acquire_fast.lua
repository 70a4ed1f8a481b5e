-- acquire_fast.lua: the fast path of acquire.lua, run before the library is even made: when
-- every key is a gcra or token_bucket limit whose state (if any) was written under the same
-- spec, it decides inline and returns; otherwise it falls through to acquire.lua, which
-- decides everything in general. Making the library's closures costs more than this whole
-- path, and gcra is what the throughput budget is measured on.
--
-- KEYS and ARGV: exactly those of acquire.lua.
--   KEYS[2i-1]  key i's guard: its definition (static) or its lease set (dynamic)
--   KEYS[2i]    key i's rate state
--   ARGV[1]     now in µs, or "" for Redis TIME; ARGV[2] expiry slack in ms; ARGV[3] n
--   ARGV[3i+1]  namespace "s"/"d"; ARGV[3i+2] units; ARGV[3i+3] dynamic spec
--
-- Returns what acquire.lua returns, for the requests it handles.

local fast_result
do
  local now
  if ARGV[1] == '' then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  else
    now = tonumber(ARGV[1])
  end
  local n = tonumber(ARGV[3])
  local function remaining(u, m, T, burst)
    local head = now + T * burst - u
    if head <= 0 then
      return 0
    end
    local q = math.floor(head / T)
    local r = head - q * T
    if r < 0 then
      q = q - 1
      r = r + T
    elseif r >= T then
      q = q + 1
      r = r - T
    end
    if r == 0 and m > 0 then
      return q - 1
    end
    return q
  end
  local function dur(us, m)
    if us < 0 then
      return '0'
    end
    return string.format('%.0f%03d', us, m)
  end
  local out, writes, ok = { 1 }, {}, true
  for i = 1, n do
    local ns, units = ARGV[3 * i + 1], tonumber(ARGV[3 * i + 2])
    local spec
    if ns == 's' then
      spec = redis.call('GET', KEYS[2 * i - 1])
    elseif redis.call('ZCOUNT', KEYS[2 * i - 1], '(' .. string.format('%.0f', now), '+inf') == 0 then
      spec = ARGV[3 * i + 3]
    end
    local a, burst, T
    if spec then
      local b, t
      a, b, t = string.match(spec, '^(%l+) %d+ %d+ (%d+) (%d+)$')
      burst, T = tonumber(b), tonumber(t)
    end
    if not ((a == 'gcra' or a == 'tb') and burst and burst >= 1 and T and T >= 1 and units <= burst) then
      ok = false
      break
    end
    local raw = redis.call('GET', KEYS[2 * i])
    local tu, tn = now, 0
    if raw then
      local s, u, m = string.match(raw, '^([^|]*)|(%d+) (%d+)$')
      if s ~= spec then
        ok = false
        break
      end
      u, m = tonumber(u), tonumber(m)
      if u > now or (u == now and m > 0) then
        tu, tn = u, m
      end
    end
    local tolerance = T * burst
    local nu = tu + T * units
    local d
    if nu < now + tolerance or (nu == now + tolerance and tn == 0) then
      d = { 1, burst, remaining(nu, tn, T, burst), '0', dur(nu - now, tn) }
      writes[i] = { spec, nu, tn }
    else
      d = { 0, burst, remaining(tu, tn, T, burst), dur(nu - tolerance - now, tn), dur(tu - now, tn) }
      out[1] = 0
    end
    for j = 1, 5 do
      out[#out + 1] = d[j]
    end
  end
  if ok then
    if out[1] == 1 then
      local slack = tonumber(ARGV[2])
      for i = 1, n do
        local w = writes[i]
        local ms = math.ceil((w[2] + (w[3] > 0 and 1 or 0) - now) / 1000) + slack
        if ms < 1 then
          ms = 1
        end
        redis.call('SET', KEYS[2 * i], string.format('%s|%.0f %.0f', w[1], w[2], w[3]), 'PX',
          string.format('%.0f', math.min(ms, 3153600000000)))
      end
    end
    fast_result = out
  end
end
if fast_result then
  return fast_result
end
