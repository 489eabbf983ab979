-- Fixed window: the twin of ratelimitd/algorithms/fixed_window.py.
-- State: hash {w = window start, c = count}.
local function fixed_window(key, now, limit, period, burst, cost)
  local window = now - math.fmod(now, period)
  local stored = redis.call('HMGET', key, 'w', 'c')
  local count = 0
  if stored[1] and tonumber(stored[1]) == window then
    count = tonumber(stored[2])
  end
  local allowed
  if cost == 0 then allowed = count < limit else allowed = count + cost <= limit end
  if allowed then count = count + cost end
  local window_end = window + period
  local function commit()
    redis.call('HSET', key, 'w', fmt(window), 'c', count)
    redis.call('PEXPIRE', key, math.ceil((window_end - now) * 1000))
  end
  return allowed, limit - count, window_end - now, commit
end
