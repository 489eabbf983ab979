-- Sliding window (weighted two-window counter): the twin of
-- ratelimitd/algorithms/sliding_window.py. State: hash {w = window start, c = current, p = previous}.
local function sliding_restored_after(now, window, period, current, previous)
  if current > 0 then return window + 2 * period - now end
  if previous > 0 then return window + period - now end
  return 0
end

local function sliding_window(key, now, limit, period, burst, cost)
  local window = now - math.fmod(now, period)
  local stored = redis.call('HMGET', key, 'w', 'c', 'p')
  local current, previous = 0, 0
  if stored[1] then
    local stored_window = tonumber(stored[1])
    if stored_window == window then
      current, previous = tonumber(stored[2]), tonumber(stored[3])
    elseif stored_window == window - period then
      previous = tonumber(stored[2])
    end
  end
  local elapsed = (now - window) / period
  local estimate = previous * (1 - elapsed) + current
  local allowed
  allowed = estimate + math.max(cost, 1) <= limit + TOLERANCE
  if allowed then
    current = current + cost
    estimate = estimate + cost
  end
  local remaining = math.max(math.floor(limit - estimate), 0)
  local reset_after
  if allowed then
    reset_after = sliding_restored_after(now, window, period, current, previous)
  else
    local room = limit - math.max(cost, 1)
    if room < 0 then
      reset_after = sliding_restored_after(now, window, period, current, previous)
    elseif current <= room and previous > 0 then
      local fraction = 1 - (room - current) / previous
      reset_after = math.max(window + period * fraction - now, 0)
    else
      local fraction = 1 - room / current
      reset_after = window + period + period * fraction - now
    end
    reset_after = reset_after + RETRY_MARGIN_S
  end
  local function commit()
    redis.call('HSET', key, 'w', fmt(window), 'c', current, 'p', previous)
    redis.call('PEXPIRE', key, math.ceil((window + 2 * period - now) * 1000))
  end
  return allowed, remaining, reset_after, commit
end
