-- Gives an amount back to the counters of one descriptor (a reservation settled below its
-- estimate): the twins of refund() in ratelimitd/algorithms/*.py. A refund only reaches the
-- window that was charged; a token bucket never fills past its burst.
-- KEYS: the counters. ARGV: now ('' = Redis's own clock), amount, when it was charged, then
-- per key: step (as hit.lua names it), limit, period, burst.
local now = script_now(ARGV[1])
local amount = tonumber(ARGV[2])
local charged_at = tonumber(ARGV[3])

for index, key in ipairs(KEYS) do
  local at = 4 + (index - 1) * 4
  local step, limit = ARGV[at], tonumber(ARGV[at + 1])
  local period, burst = period_argument(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local window, charged
  if type(period) == 'number' then
    window = now - math.fmod(now, period)
    charged = charged_at - math.fmod(charged_at, period)
  end
  if step == 'fixed_window_calendar' then
    local span = calendar_span(period)
    local index = calendar_locate(span, now)
    local stored = redis.call('HMGET', key, 'w', 'c')
    if stored[1] and tonumber(stored[1]) == index and calendar_locate(span, charged_at) == index then
      redis.call('HSET', key, 'c', math.max(tonumber(stored[2]) - amount, 0))
    end
  elseif step == 'fixed_window' then
    local stored = redis.call('HMGET', key, 'w', 'c')
    if stored[1] and tonumber(stored[1]) == window and charged == window then
      redis.call('HSET', key, 'c', math.max(tonumber(stored[2]) - amount, 0))
    end
  elseif step == 'fixed_window_first_hit' then
    local stored = redis.call('HMGET', key, 'w', 'c')
    if stored[1] then
      local start = tonumber(stored[1])
      if start <= charged_at and charged_at < start + period and now < start + period then
        redis.call('HSET', key, 'c', math.max(tonumber(stored[2]) - amount, 0))
      end
    end
  elseif step == 'sliding_window' then
    local stored = redis.call('HMGET', key, 'w', 'c', 'p')
    if stored[1] then
      local w = tonumber(stored[1])
      if w == charged and (w == window or w == window - period) then
        redis.call('HSET', key, 'c', math.max(tonumber(stored[2]) - amount, 0))
      elseif w == window and charged == window - period then
        redis.call('HSET', key, 'p', math.max(tonumber(stored[3]) - amount, 0))
      end
    end
  elseif step == 'gcra' then
    local stored = redis.call('HGET', key, 't')
    if stored and tonumber(stored) > now then
      local interval = period / limit
      redis.call('HSET', key, 't', fmt(math.max(tonumber(stored) - amount * interval, now)))
    end
  elseif step == 'token_bucket' then
    local stored = redis.call('HMGET', key, 't', 'l')
    if stored[1] then
      local rate = limit / period
      local tokens = math.min(burst, tonumber(stored[1]) + math.max(now - tonumber(stored[2]), 0) * rate)
      redis.call('HSET', key, 't', fmt(math.min(burst, tokens + amount)), 'l', fmt(now))
    end
  end
end
return 1
