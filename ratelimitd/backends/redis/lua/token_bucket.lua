-- Token bucket: the twin of ratelimitd/algorithms/token_bucket.py.
-- State: hash {t = tokens, l = time of the last update}. Under charge `always` the tokens
-- may go below zero (a debt), which the refill pays off.
local function token_bucket(key, now, limit, period, burst, cost, always)
  local capacity = burst
  local rate = limit / period
  local stored = redis.call('HMGET', key, 't', 'l')
  local tokens = capacity
  if stored[1] then
    tokens = math.min(capacity, tonumber(stored[1]) + math.max(now - tonumber(stored[2]), 0) * rate)
  end
  local charge_anyway = always and cost > 0
  local need = math.max(cost, 1)
  if charge_anyway then need = 1 end
  local allowed = tokens + TOLERANCE >= need
  if charge_anyway then
    tokens = tokens - cost
  elseif allowed then
    tokens = math.max(tokens - cost, 0)
  end
  local full_after = (capacity - tokens) / rate
  local reset_after
  if allowed or need > capacity then
    reset_after = full_after
  else
    reset_after = (need - tokens) / rate + RETRY_MARGIN_S
  end
  local function commit()
    redis.call('HSET', key, 't', fmt(tokens), 'l', fmt(now))
    redis.call('PEXPIRE', key, math.max(math.ceil(full_after * 1000), 1))
  end
  return allowed, math.max(math.floor(tokens), 0), reset_after, commit
end
