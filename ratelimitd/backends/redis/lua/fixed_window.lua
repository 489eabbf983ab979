-- Fixed window: the twin of ratelimitd/algorithms/fixed_window.py.
-- State: hash {w = window start, c = count}. Under charge `always` the count may pass the
-- limit (a debt), and each window end since the stored one pays off `limit` of it.
local function fixed_window(key, now, limit, period, burst, cost, always)
  local window = now - math.fmod(now, period)
  local stored = redis.call('HMGET', key, 'w', 'c')
  local count = 0
  local same_window = false
  if stored[1] then
    local ends = math.floor((window - tonumber(stored[1])) / period + 0.5)
    if ends == 0 then
      same_window = true
      count = tonumber(stored[2])
    elseif ends > 0 then
      count = math.max(tonumber(stored[2]) - ends * limit, 0)
    end
  end
  local allowed
  if always and cost > 0 then
    allowed = count < limit
    count = count + cost
  else
    if cost == 0 then allowed = count < limit else allowed = count + cost <= limit end
    if allowed then count = count + cost end
  end
  local window_end = window + period
  local admits_in, paid_in = 1, 1
  if limit > 0 then
    admits_in = math.max(1, math.ceil((count + 1 - limit) / limit))
    paid_in = math.max(1, math.ceil(count / limit))
  end
  local function commit()
    if same_window and paid_in == 1 then
      -- the key already holds this window and expires at its end: one command, not two
      redis.call('HINCRBY', key, 'c', cost)
    else
      redis.call('HSET', key, 'w', fmt(window), 'c', count)
      redis.call('PEXPIRE', key, math.ceil((window + paid_in * period - now) * 1000))
    end
  end
  return allowed, math.max(limit - count, 0), window_end + (admits_in - 1) * period - now, commit
end
