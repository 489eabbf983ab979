-- Helpers shared by the algorithm scripts.
-- Numbers are stored with 17 significant digits, so they read back exactly.
-- The twin of ratelimitd.algorithms.base.TOLERANCE.
local TOLERANCE = 1e-9
-- The twin of ratelimitd.algorithms.base.RETRY_MARGIN_S.
local RETRY_MARGIN_S = 1e-6

local function fmt(number)
  return string.format('%.17g', number)
end
