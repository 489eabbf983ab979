-- Token bucket: the twin of ratelimitd/algorithms/token_bucket.py.
-- State: hash {t = tokens, l = time of the last update}.
local function token_bucket(key, now, limit, period, burst, cost)
  local capacity = burst
  local rate = limit / period
  local stored = redis.call('HMGET', key, 't', 'l')
  local tokens = capacity
  if stored[1] then
    tokens = math.min(capacity, tonumber(stored[1]) + math.max(now - tonumber(stored[2]), 0) * rate)
  end
  local allowed = tokens + TOLERANCE >= math.max(cost, 1)
  if allowed then tokens = math.max(tokens - cost, 0) end
  local full_after = (capacity - tokens) / rate
  local reset_after
  if allowed or cost > capacity then
    reset_after = full_after
  else
    reset_after = (math.max(cost, 1) - tokens) / rate + RETRY_MARGIN_S
  end
  local function commit()
    redis.call('HSET', key, 't', fmt(tokens), 'l', fmt(now))
    redis.call('PEXPIRE', key, math.max(math.ceil(full_after * 1000), 1))
  end
  return allowed, math.floor(tokens), reset_after, commit
end
