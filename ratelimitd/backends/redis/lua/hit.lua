-- The descriptors of one call, each against all of its limits, all or nothing per descriptor.
-- KEYS: one counter per limit, descriptor after descriptor (on a Cluster, a call carries one
--   descriptor, whose keys share one hash tag).
-- ARGV: now ('' = Redis's own clock), the number of descriptors, then per descriptor: cost,
--   number of limits, then per limit: algorithm, limit, period, burst, charge (1 = always).
-- A descriptor's limits are charged all or nothing, but a limit whose charge is `always`
-- is charged whatever the others say.
-- Returns, per descriptor: allowed, then per limit: allowed, remaining, milliseconds until reset.
local now = script_now(ARGV[1])

local steps = {
  fixed_window = fixed_window,
  fixed_window_first_hit = fixed_window_first_hit,
  sliding_window = sliding_window,
  token_bucket = token_bucket,
  gcra = gcra,
}

local reply = {}
local key = 0
local arg = 3
for _ = 1, tonumber(ARGV[2]) do
  local cost = tonumber(ARGV[arg])
  local limits = tonumber(ARGV[arg + 1])
  arg = arg + 2
  local head = #reply + 1
  reply[head] = 1
  local commits = {}
  local always = {}
  for index = 1, limits do
    key = key + 1
    always[index] = ARGV[arg + 4] == '1'
    local allowed, remaining, reset_after, commit = steps[ARGV[arg]](
      KEYS[key], now, tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2]), tonumber(ARGV[arg + 3]),
      cost, always[index])
    arg = arg + 5
    if not allowed then reply[head] = 0 end
    commits[index] = commit
    reply[#reply + 1] = allowed and 1 or 0
    reply[#reply + 1] = remaining
    reply[#reply + 1] = math.ceil(reset_after * 1000)
  end
  -- committed before the next descriptor runs: a descriptor sent twice counts twice
  if cost > 0 then
    for index, commit in ipairs(commits) do
      if reply[head] == 1 or always[index] then commit() end
    end
  end
end
return reply
