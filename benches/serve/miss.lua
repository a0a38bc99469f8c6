-- Cache misses: every request a different sentence (the server runs with --no-cache too).
dofile(os.getenv("WEDGE_LUA_DIR") .. "/report.lua")
local threads = {}
local n = 0
setup = function(thread)
  n = n + 1
  thread:set("tid", n)
end
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format(
    '{"model":"default","input":"request %d from client %d: how do I reset my password on the edge node?"}',
    counter, tid or 0)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests) report(summary, latency) end
