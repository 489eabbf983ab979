-- Sliding window (weighted two-window counter): the twin of
-- ratelimitd/algorithms/sliding_window.py. State: hash {w = window start, c = current, p = previous}.
-- Under charge `always` the count may pass the limit (a debt): at each window end at most
-- `limit` of it becomes the previous count and the rest is carried.
local function sliding_periods_to_pay(current, limit)
  if limit <= 0 then return 1 end
  return math.max(math.ceil(current / limit), 1)
end

local function sliding_restored_after(now, window, period, current, previous, limit)
  if current > 0 then return window + (sliding_periods_to_pay(current, limit) + 1) * period - now end
  if previous > 0 then return window + period - now end
  return 0
end

local function sliding_window(key, now, limit, period, burst, cost, always)
  local window = now - math.fmod(now, period)
  local stored = redis.call('HMGET', key, 'w', 'c', 'p')
  local current, previous = 0, 0
  if stored[1] then
    local ends = math.floor((window - tonumber(stored[1])) / period + 0.5)
    if ends == 0 then
      current, previous = tonumber(stored[2]), tonumber(stored[3])
    elseif ends > 0 then
      local count = tonumber(stored[2])
      current = math.max(count - ends * limit, 0)
      previous = math.min(math.max(count - (ends - 1) * limit, 0), limit)
    end
  end
  local elapsed = (now - window) / period
  local estimate = previous * (1 - elapsed) + current
  local charge_anyway = always and cost > 0
  local need = math.max(cost, 1)
  if charge_anyway then need = 1 end
  local allowed = estimate + need <= limit + TOLERANCE
  if allowed or charge_anyway then
    current = current + cost
    estimate = estimate + cost
  end
  local remaining = math.max(math.floor(limit - estimate), 0)
  local reset_after
  if allowed then
    reset_after = sliding_restored_after(now, window, period, current, previous, limit)
  else
    local room = limit - need
    if room < 0 then
      reset_after = sliding_restored_after(now, window, period, current, previous, limit)
    elseif current <= room and previous > 0 then
      local fraction = 1 - (room - current) / previous
      reset_after = math.max(window + period * fraction - now, 0)
    else
      local ends = math.max(1, math.ceil((current - room) / limit))
      local rest = math.max(current - ends * limit, 0)
      local moved = math.min(math.max(current - (ends - 1) * limit, 0), limit)
      local fraction = 0
      if moved > 0 then fraction = 1 - (room - rest) / moved end
      reset_after = window + ends * period + period * math.max(fraction, 0) - now
    end
    reset_after = reset_after + RETRY_MARGIN_S
  end
  local function commit()
    redis.call('HSET', key, 'w', fmt(window), 'c', current, 'p', previous)
    redis.call('PEXPIRE', key,
      math.ceil((window + (sliding_periods_to_pay(current, limit) + 1) * period - now) * 1000))
  end
  return allowed, remaining, reset_after, commit
end
