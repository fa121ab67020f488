-- GET the one path given in $BENCH_PATH with each of the keys in $BENCH_KEYS
-- (comma-separated) in turn: one client spreading its load over several keys.
local path = os.getenv("BENCH_PATH")
local keys = {}
for key in string.gmatch(os.getenv("BENCH_KEYS"), "[^,]+") do keys[#keys + 1] = "Bearer " .. key end
local i = 0
request = function()
  i = i % #keys + 1
  return wrk.format("GET", path, {Authorization = keys[i]})
end
dofile(os.getenv("BENCH_DIR") .. "/wrk/report.lua")
