-- POST a new pod, each with its own name.
local auth = "Bearer " .. os.getenv("BENCH_KEY")
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/agent/v0/pods",
    {Authorization = auth, ["Content-Type"] = "application/json"},
    string.format('{"name": "bench-%d-%d"}', math.random(1e9), i))
end
dofile(os.getenv("BENCH_DIR") .. "/wrk/report.lua")
