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

-- A period argument: seconds, or for a calendar window the span the service sent.
local function period_argument(text)
  return tonumber(text) or text
end

-- Calendar windows (the twins of ratelimitd.calendar_windows.Span): the service sends three
-- consecutive windows around its own clock as 'period,first,b0,b1,b2,b3' (window first + i
-- runs from b_i to b_i+1), and the script picks the one that holds Redis's time.
local function calendar_span(text)
  local parts = {}
  for part in string.gmatch(text, '[^,]+') do parts[#parts + 1] = tonumber(part) end
  return {period = parts[1], first = parts[2], bounds = {parts[3], parts[4], parts[5], parts[6]}}
end

-- The index of the window that holds `now` and its end (outside the span: the nearest).
local function calendar_locate(span, now)
  for offset = 0, 1 do
    if now < span.bounds[offset + 2] then return span.first + offset, span.bounds[offset + 2] end
  end
  return span.first + 2, span.bounds[4]
end

-- When window `index` ends (past the span, in nominal periods).
local function calendar_end_of(span, index)
  local offset = math.min(math.max(index - span.first, 0), 2)
  return span.bounds[offset + 2] + (index - span.first - offset) * span.period
end

-- No earlier than the end of window `index`: past the span, a day longer per window than the
-- nominal length (31-day months, leap years, DST).
local function calendar_kept_until(span, index)
  local offset = math.min(math.max(index - span.first, 0), 2)
  return span.bounds[offset + 2] + (index - span.first - offset) * (span.period + 86400)
end
