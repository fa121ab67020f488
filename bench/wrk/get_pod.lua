-- GET one pod, rotating over the real pod ids listed in $BENCH_IDS.
local ids = {}
for line in io.lines(os.getenv("BENCH_IDS")) do ids[#ids + 1] = line end
local auth = "Bearer " .. os.getenv("BENCH_KEY")
local i = 0
request = function()
  i = i % #ids + 1
  return wrk.format("GET", "/agent/v0/pods/" .. ids[i], {Authorization = auth})
end
dofile(os.getenv("BENCH_DIR") .. "/wrk/report.lua")
