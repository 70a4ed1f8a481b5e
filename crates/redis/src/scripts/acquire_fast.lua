-- acquire_fast.lua: the fast path of the acquire function, run before acquire.lua (its body's
-- second part): when every key is a gcra, token_bucket or fixed_window limit whose state (if
-- any) was written under the same spec, it decides inline and returns; otherwise it falls
-- through to acquire.lua, which decides everything in general. gcra is what the throughput
-- budget is measured on. The decisions are lib.lua's (g_decide, fw_decide), written out for one
-- spec each.
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
    return string.format(DUR, us, m)
  end
  local out, writes, ok = { 1 }, {}, true
  for i = 1, n do
    local ns, units = ARGV[3 * i + 1], tonumber(ARGV[3 * i + 2])
    local spec
    if ns == 's' then
      spec = redis.call('GET', KEYS[2 * i - 1])
    elseif redis.call('ZCOUNT', KEYS[2 * i - 1], '(' .. fmt(now), '+inf') == 0 then
      spec = ARGV[3 * i + 3]
    end
    local a, lim, x, y
    if spec then
      a, lim, x, y = string.match(spec, '^(%l+) (%d+) %d+ (%S+) (%d+)$')
      lim, y = tonumber(lim), tonumber(y)
    end
    local d
    if a == 'gcra' or a == 'tb' then
      -- x: burst, y: emission interval T (µs)
      local burst, T = tonumber(x), y
      if not (burst and burst >= 1 and T and T >= 1 and units <= burst) then
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
      if nu < now + tolerance or (nu == now + tolerance and tn == 0) then
        d = { 1, burst, remaining(nu, tn, T, burst), '0', dur(nu - now, tn) }
        writes[i] = { spec, nu, tn }
      else
        d = { 0, burst, remaining(tu, tn, T, burst), dur(nu - tolerance - now, tn), dur(tu - now, tn) }
        out[1] = 0
      end
    elseif a == 'fw' and (x == 'c' or x == 'f') then
      -- x: alignment, y: period (µs); state "<window_end> <used>"
      if not (lim and lim >= 1 and y and y >= 1 and units <= lim) then
        ok = false
        break
      end
      local raw = redis.call('GET', KEYS[2 * i])
      local e, used
      if raw then
        local s, we, u = string.match(raw, '^([^|]*)|(%d+) (%d+)$')
        if s ~= spec then
          ok = false
          break
        end
        we, u = tonumber(we), tonumber(u)
        if now < we then
          e, used = we, u
        end
      end
      if not e then
        used = 0
        if x == 'c' then
          -- The end of the clock-aligned window holding now: (⌊now / period⌋ + 1) · period.
          local q = math.floor(now / y)
          local r = now - q * y
          while r < 0 do
            q, r = q - 1, r + y
          end
          while r >= y do
            q, r = q + 1, r - y
          end
          e = (q + 1) * y
        else
          e = now + y
        end
      end
      local reset = dur(e - now, 0)
      if used + units <= lim then
        d = { 1, lim, lim - used - units, '0', reset }
        -- fresh once the window ends: the same TTL rule as gcra's with no sub-µs part
        writes[i] = { spec, e, used + units, 0 }
      else
        local left = lim - used
        if left < 0 then
          left = 0
        end
        d = { 0, lim, left, reset, reset }
        out[1] = 0
      end
    else
      ok = false
      break
    end
    out[#out + 1] = string.format(DECISION, d[1], d[2], d[3], d[4], d[5])
  end
  if ok then
    if out[1] == 1 then
      local slack = tonumber(ARGV[2])
      for i = 1, n do
        local w = writes[i]
        -- gcra: fresh after tat (rounded up past its sub-µs part); fixed_window: at its end
        local fresh = w[2]
        if w[4] == nil and w[3] > 0 then
          fresh = fresh + 1
        end
        local ms = math.ceil((fresh - now) / 1000) + slack
        if ms < 1 then
          ms = 1
        end
        redis.call('SET', KEYS[2 * i], string.format(STATE, w[1], w[2], w[3]), 'PX',
          fmt(math.min(ms, 3153600000000)))
      end
    end
    fast_result = out
  end
end
if fast_result then
  return fast_result
end
