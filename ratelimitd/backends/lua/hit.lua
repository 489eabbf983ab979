-- One descriptor's hit against all of its limits, all or nothing.
-- KEYS: one counter per limit, all sharing one hash tag.
-- ARGV: cost, now ('' = Redis's own clock), then per limit: algorithm, limit, period, burst.
-- Returns {allowed, then per limit: allowed, remaining, milliseconds until reset}.
local cost = tonumber(ARGV[1])
local now
if ARGV[2] == '' then
  local time = redis.call('TIME')
  now = tonumber(time[1]) + tonumber(time[2]) / 1000000
else
  now = tonumber(ARGV[2])
end

local steps = {
  fixed_window = fixed_window,
  sliding_window = sliding_window,
  token_bucket = token_bucket,
}

local reply = {1}
local commits = {}
for index, key in ipairs(KEYS) do
  local base = 2 + (index - 1) * 4
  local step = steps[ARGV[base + 1]]
  local allowed, remaining, reset_after, commit = step(
    key, now, tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4]), cost)
  if not allowed then reply[1] = 0 end
  commits[index] = commit
  reply[#reply + 1] = allowed and 1 or 0
  reply[#reply + 1] = remaining
  reply[#reply + 1] = math.ceil(reset_after * 1000)
end
if reply[1] == 1 and cost > 0 then
  for _, commit in ipairs(commits) do commit() end
end
return reply
