-- Takes a lease on every key, or on none (`algorithm: concurrency`): the twin of acquire() in
-- ratelimitd/backends/lease_table.py.
-- KEYS: one sorted set of leases per descriptor (member: the lease, score: when it ends).
-- ARGV: now ('' = Redis's own clock), the lease, then per key: max_in_flight, ttl in seconds.
-- Returns per key: allowed (1 or 0), leases held after, and when denied the milliseconds until
-- the first held lease ends by its TTL.
local now = script_now(ARGV[1])
local lease = ARGV[2]
local reply = {}
local every = true
for index, key in ipairs(KEYS) do
  local most = tonumber(ARGV[1 + 2 * index])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
  local held = redis.call('ZCARD', key)
  local wait = 0
  if held >= most then
    every = false
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.ceil((tonumber(first[2]) - now) * 1000)
  end
  reply[#reply + 1] = held < most and 1 or 0
  reply[#reply + 1] = held
  reply[#reply + 1] = wait
end
if every then
  for index, key in ipairs(KEYS) do
    local ttl = tonumber(ARGV[2 + 2 * index])
    redis.call('ZADD', key, fmt(now + ttl), lease)
    reply[3 * index - 1] = redis.call('ZCARD', key)
    local keep = math.ceil(ttl * 1000)
    if redis.call('PTTL', key) < keep then redis.call('PEXPIRE', key, keep) end
  end
end
return reply
