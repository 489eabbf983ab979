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
  allowed, count = fixed_charge(count, limit, cost, always)
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

-- Fixed window from a key's first admitted hit (`window: first_hit`): the twin of
-- first_hit_step in ratelimitd/algorithms/fixed_window.py. State: hash {w = start, c = count}.
local function fixed_window_first_hit(key, now, limit, period, burst, cost, always)
  local stored = redis.call('HMGET', key, 'w', 'c')
  local start = nil
  local count = 0
  local live = false
  if stored[1] then
    start, count = tonumber(stored[1]), tonumber(stored[2])
    live = true
    if now >= start + period then  -- ended: what is left of a debt opens the next window
      local ends = math.floor((now - start) / period)
      count = math.max(count - ends * limit, 0)
      live = false
      if count > 0 then start = start + ends * period else start = nil end
    end
  end
  local allowed
  allowed, count = fixed_charge(count, limit, cost, always)
  if start == nil then
    if count == 0 or cost == 0 then
      return allowed, limit - count, 0, function() end
    end
    start = now
  end
  local window_end = start + period
  local admits_in, paid_in = 1, 1
  if count > limit and limit > 0 then
    admits_in = math.max(1, math.ceil((count + 1 - limit) / limit))
    paid_in = math.ceil(count / limit)
  end
  local function commit()
    if live and paid_in == 1 then
      -- the key holds this window and expires at its end: one command, not two
      redis.call('HINCRBY', key, 'c', cost)
    else
      redis.call('HSET', key, 'w', fmt(start), 'c', count)
      redis.call('PEXPIRE', key, math.max(math.ceil((start + paid_in * period - now) * 1000), 1))
    end
  end
  return allowed, math.max(limit - count, 0), window_end + (admits_in - 1) * period - now, commit
end

-- Calendar windows (`calendar: true`): the twin of calendar_step in
-- ratelimitd/algorithms/fixed_window.py. `period` is the span the service sent (prelude.lua);
-- state: hash {w = window index, c = count}.
local function fixed_window_calendar(key, now, limit, period, burst, cost, always)
  local span = calendar_span(period)
  local index, window_end = calendar_locate(span, now)
  local stored = redis.call('HMGET', key, 'w', 'c')
  local count = 0
  local same_window = false
  if stored[1] then
    local ends = index - tonumber(stored[1])
    if ends == 0 then
      same_window = true
      count = tonumber(stored[2])
    elseif ends > 0 then
      count = math.max(tonumber(stored[2]) - ends * limit, 0)
    end
  end
  local allowed
  allowed, count = fixed_charge(count, limit, cost, always)
  local admits_in, paid_in = 1, 1
  if count > limit then  -- a debt (charge always needs a limit of 1 at least)
    admits_in = math.max(1, math.ceil((count + 1 - limit) / limit))
    paid_in = math.ceil(count / limit)
  end
  local function commit()
    if same_window and paid_in == 1 then
      redis.call('HINCRBY', key, 'c', cost)
    else
      redis.call('HSET', key, 'w', index, 'c', count)
      local expires_at = calendar_kept_until(span, index + paid_in - 1)
      redis.call('PEXPIRE', key, math.max(math.ceil((expires_at - now) * 1000), 1))
    end
  end
  return allowed, math.max(limit - count, 0), calendar_end_of(span, index + admits_in - 1) - now, commit
end
