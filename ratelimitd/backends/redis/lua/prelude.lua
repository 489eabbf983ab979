-- Helpers shared by the algorithm scripts.
-- Numbers are stored with 17 significant digits, so they read back exactly.
-- The twin of ratelimitd.algorithms.base.TOLERANCE.
local TOLERANCE = 1e-9
-- The twin of ratelimitd.algorithms.base.RETRY_MARGIN_S.
local RETRY_MARGIN_S = 1e-6

local function fmt(number)
  return string.format('%.17g', number)
end

-- The script's time: ARGV's when a test clock sent one, else Redis's own.
local function script_now(given)
  if given ~= '' then return tonumber(given) end
  local time = redis.call('TIME')
  return tonumber(time[1]) + tonumber(time[2]) / 1000000
end

-- A fixed window's count after a hit of `cost` (the twin of fixed_window._charge): whether it
-- is admitted, and the count it leaves if committed. Under charge `always` a hit with room for
-- one unit is admitted, and any hit is charged in full.
local function fixed_charge(count, limit, cost, always)
  if always and cost > 0 then return count < limit, count + cost end
  local allowed
  if cost == 0 then allowed = count < limit else allowed = count + cost <= limit end
  if allowed then return true, count + cost end
  return false, count
end
