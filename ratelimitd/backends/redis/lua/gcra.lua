-- GCRA: the twin of ratelimitd/algorithms/gcra.py. State: hash {t = theoretical arrival time}.
local function gcra(key, now, limit, period, burst, cost, always)
  local interval = period / limit
  local capacity = burst
  local tat = now
  local stored = redis.call('HGET', key, 't')
  if stored then tat = math.max(tonumber(stored), now) end
  local charge_anyway = always and cost > 0
  local need = math.max(cost, 1)
  if charge_anyway then need = 1 end
  local allowed = (tat - now) + (need - capacity) * interval <= RETRY_MARGIN_S / 2
  if allowed or charge_anyway then tat = tat + cost * interval end
  local ahead = tat - now
  local remaining = math.max(math.floor(capacity - ahead / interval + TOLERANCE), 0)
  local reset_after
  if allowed or need > capacity then
    reset_after = math.max(ahead, 0)
  else
    reset_after = ahead + need * interval - capacity * interval + RETRY_MARGIN_S
  end
  local function commit()
    redis.call('HSET', key, 't', fmt(tat))
    redis.call('PEXPIRE', key, math.max(math.ceil((tat - now) * 1000), 1))
  end
  return allowed, remaining, reset_after, commit
end
