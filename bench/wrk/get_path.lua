-- GET the one path given in $BENCH_PATH (a list page).
local path = os.getenv("BENCH_PATH")
local auth = "Bearer " .. os.getenv("BENCH_KEY")
request = function()
  return wrk.format("GET", path, {Authorization = auth})
end
dofile(os.getenv("BENCH_DIR") .. "/wrk/report.lua")
