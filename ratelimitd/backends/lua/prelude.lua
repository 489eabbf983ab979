-- Helpers shared by the algorithm scripts.
-- Numbers are stored with 17 significant digits, so they read back exactly.
local function fmt(number)
  return string.format('%.17g', number)
end
