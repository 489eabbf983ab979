-- The descriptors of one call, each against all of its limits, all or nothing per descriptor.
-- KEYS: one counter per limit, descriptor after descriptor (on a Cluster, a call carries one
--   descriptor, whose keys share one hash tag).
-- ARGV: now ('' = Redis's own clock), the number of descriptors, then per descriptor: cost,
--   number of limits, whether its denial denies the call (1; 0 for shadow and quota mode),
--   then per limit: algorithm, limit, period (for a calendar window, its span: prelude.lua),
--   burst, charge (1 = always).
-- The call's descriptors are charged all or nothing: when one is denied, what the others were
-- charged is rolled back (their counters as they were), but a limit whose charge is `always`
-- is charged whatever the others say.
-- Returns, per descriptor: allowed, then per limit: allowed, remaining, milliseconds until reset.
local now = script_now(ARGV[1])

local steps = {
  fixed_window = fixed_window,
  fixed_window_first_hit = fixed_window_first_hit,
  fixed_window_calendar = fixed_window_calendar,
  sliding_window = sliding_window,
  token_bucket = token_bucket,
  gcra = gcra,
}

local reply = {}
local key = 0
local arg = 3
local denied = false
-- each counter an if_fits commit touches, as it was before: restored if a descriptor is denied
-- (one descriptor alone needs none: denied, it commits nothing)
local before, touched = {}, {}
local several = tonumber(ARGV[2]) > 1
local function remember(counter)
  if several and before[counter] == nil then
    before[counter] = {redis.call('HGETALL', counter), redis.call('PTTL', counter)}
    touched[#touched + 1] = counter
  end
end
for _ = 1, tonumber(ARGV[2]) do
  local cost = tonumber(ARGV[arg])
  local limits = tonumber(ARGV[arg + 1])
  local binding = ARGV[arg + 2] == '1'
  arg = arg + 3
  local head = #reply + 1
  reply[head] = 1
  local commits = {}
  local always = {}
  local counters = {}
  for index = 1, limits do
    key = key + 1
    counters[index] = KEYS[key]
    always[index] = ARGV[arg + 4] == '1'
    local allowed, remaining, reset_after, commit = steps[ARGV[arg]](
      KEYS[key], now, tonumber(ARGV[arg + 1]), period_argument(ARGV[arg + 2]), tonumber(ARGV[arg + 3]),
      cost, always[index])
    arg = arg + 5
    if not allowed then reply[head] = 0 end
    commits[index] = commit
    reply[#reply + 1] = allowed and 1 or 0
    reply[#reply + 1] = remaining
    reply[#reply + 1] = math.ceil(reset_after * 1000)
  end
  if reply[head] == 0 and binding then denied = true end
  -- committed before the next descriptor runs: a descriptor sent twice counts twice
  if cost > 0 then
    for index, commit in ipairs(commits) do
      if reply[head] == 1 or always[index] then
        if not always[index] then remember(counters[index]) end
        commit()
      end
    end
  end
end
if denied then
  for _, counter in ipairs(touched) do
    local fields, ttl = before[counter][1], before[counter][2]
    redis.call('DEL', counter)
    if #fields > 0 then
      redis.call('HSET', counter, unpack(fields))
      if ttl > 0 then redis.call('PEXPIRE', counter, ttl) end
    end
  end
end
return reply
