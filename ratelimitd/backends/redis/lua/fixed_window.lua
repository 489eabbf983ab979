-- Fixed window: the twin of ratelimitd/algorithms/fixed_window.py.
-- State: hash {w = window start, c = count}.
local function fixed_window(key, now, limit, period, burst, cost)
  local window = now - math.fmod(now, period)
  local stored = redis.call('HMGET', key, 'w', 'c')
  local count = 0
  local same_window = stored[1] and tonumber(stored[1]) == window
  if same_window then
    count = tonumber(stored[2])
  end
  local allowed
  if cost == 0 then allowed = count < limit else allowed = count + cost <= limit end
  if allowed then count = count + cost end
  local window_end = window + period
  local function commit()
    if same_window then
      -- the key already holds this window and expires at its end: one command, not two
      redis.call('HINCRBY', key, 'c', cost)
    else
      redis.call('HSET', key, 'w', fmt(window), 'c', count)
      redis.call('PEXPIRE', key, math.ceil((window_end - now) * 1000))
    end
  end
  return allowed, limit - count, window_end - now, commit
end
