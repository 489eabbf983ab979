-- Ends a lease (`algorithm: concurrency`): the twin of release() in
-- ratelimitd/backends/lease_table.py.
-- KEYS: the lease's keys. ARGV: now ('' = Redis's own clock), the lease.
-- Returns on how many keys it was still held (one that ended by its TTL is not).
local now = script_now(ARGV[1])
local released = 0
for _, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
  released = released + redis.call('ZREM', key, ARGV[2])
end
return released
